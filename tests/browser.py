"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright
(`make test` installs it; Playwright's own browser download is never used)."""

import os
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import sync_playwright

from support import require

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections are refused on a closed network.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parent.parent / "docs"


@contextmanager
def chromium():
    """A headless Chromium. Without one the test skips loudly, and under CI=true fails."""
    require(missing(), "browser tests", "make test installs it: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def missing() -> str | None:
    return None if CHROMIUM.exists() else f"{CHROMIUM} is missing"


def snap(page, name: str) -> None:
    """With SCREENSHOTS=1, save the page as docs/<name>.png (the README's pictures)."""
    if os.environ.get("SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=DOCS / f"{name}.png", full_page=True)
