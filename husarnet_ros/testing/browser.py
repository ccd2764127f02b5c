"""Debian's Chromium, headless, driven through playwright's sync API, for the Dashboard's web UI tests.

playwright never downloads a browser here: it is pointed at /usr/bin/chromium (``executable_path``). Each
launch gets a fresh, temporary user-data directory (playwright makes one per ``launch`` and removes it on
close; ``--user-data-dir`` may not be passed to ``launch``). The flags keep Chromium from reaching Google's
hosts by itself (component updates, sync, field trials, QUIC probes): this machine's network refuses them, and
a test must send traffic only to loopback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Error, Page, sync_playwright

CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",  # the sandbox needs user namespaces or a setuid helper, and tests often run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LAUNCH_TIMEOUT_MS = 60_000
ACTION_TIMEOUT_MS = 15_000  # every wait of a page (clicks, navigation, expectations) is bounded by this


class BrowserUnavailableError(RuntimeError):
    """Chromium is missing or does not start; the message says what to install or what it printed."""


@contextlib.contextmanager
def launch_chromium(executable: Path = CHROMIUM_PATH) -> Iterator[Browser]:
    """A headless Chromium for the duration of the block; the browser and playwright's driver close after."""
    if not executable.is_file():
        raise BrowserUnavailableError(
            f"{executable} not found: install Debian's chromium package (scripts/test.sh does it)"
        )
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=list(CHROMIUM_ARGS),
                timeout=LAUNCH_TIMEOUT_MS,
            )
        except Error as exc:
            raise BrowserUnavailableError(
                f"{executable} did not start under playwright: {exc.message}"
            ) from None
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(browser: Browser) -> Iterator[Page]:
    """A page in a new browser context (its own cookies and storage), closed with its context afterwards."""
    context = browser.new_context()
    try:
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
        yield context.new_page()
    finally:
        context.close()
