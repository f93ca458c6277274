"""docs/flow.md, the page of how a request flows: every file it names exists, and every
function it names is defined in a file of its row, so a rename cannot leave it behind."""

import re

from conftest import ROOT

PAGE = ROOT / "docs/flow.md"


def defined(name: str, files: list[str]) -> bool:
    """`name` (a function, a class, `Class.method` or `module.function`) is defined in one of `files`."""
    owner, _, last = name.rpartition(".")
    if owner and (ROOT / f"{owner}.py").exists():
        files = [f"{owner}.py"]
    pattern = re.compile(rf"^\s*(?:def|class) {re.escape(last)}\b", re.MULTILINE)
    return any(pattern.search((ROOT / file).read_text()) for file in files)


def test_every_file_and_function_the_flow_page_names_exists():
    rows = [line for line in PAGE.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    checked = 0
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if cells[1] == "file":  # a table's header
            continue
        files = re.findall(r"`([\w/]+\.py)`", cells[1])
        assert files and all((ROOT / file).exists() for file in files), row
        for name in re.findall(r"`([A-Za-z_][\w.]*)`", cells[2]):
            assert defined(name, files), f"{name} is not defined in {files}: {row}"
            checked += 1
    assert checked >= 40


def test_the_readme_links_the_flow_page():
    assert "](docs/flow.md)" in (ROOT / "README.md").read_text()
