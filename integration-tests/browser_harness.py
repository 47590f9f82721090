"""Debian's Chromium driven by Playwright (never a downloaded browser), for the tests of pages:
the chat example (test_chat_browser.py) and the JavaScript client (test_js_client_browser.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from system_harness import GatewayProcess

from wsq_devkit import ManagedProcess

try:
    from playwright.sync_api import Browser, expect, sync_playwright

    HAVE_PLAYWRIGHT = True
except ImportError:  # the browser tests skip themselves (or fail, in CI)
    HAVE_PLAYWRIGHT = False

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium() -> Iterator[Browser]:
    """The body of a module-scoped ``browser`` fixture: one Chromium for the module's tests.
    Skips when Chromium or Playwright is missing, except under CI=true, where it fails."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium); no browser is ever downloaded"
    elif not HAVE_PLAYWRIGHT:
        missing = "the playwright package is not installed"
    if missing is not None:
        if os.environ.get("CI"):  # .ci/run installs both: in CI a missing browser is a failure
            pytest.fail(missing)
        pytest.skip(missing)
    expect.set_options(timeout=15_000)  # a loaded 2-core CI machine is slow to start pages
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def start_again(gateway: GatewayProcess, processes: list[ManagedProcess]) -> GatewayProcess:
    """Start a stopped gateway again, on the same port with the same settings."""
    old = gateway.process
    new = ManagedProcess(f"{old.name}-restarted", old.argv, old.env)
    processes.append(new.start())
    restarted = GatewayProcess(new, gateway.port, gateway.node_id, gateway.path)
    restarted.wait_ready()
    return restarted
