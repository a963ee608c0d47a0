"""What the dashboard's browser tests share: serving an app on a loopback port, and Chromium.

Chromium comes from Debian (``scripts/ensure-browser.sh``, run by ``make test``); a
missing browser fails the tests rather than skipping them, so a CI machine without it
cannot pass quietly. Imported by name (``tests/http`` is on ``sys.path`` for its tests).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
#: Flags for Chromium on our machines (closed network, root, no GPU); see the env notes.
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
#: Milliseconds any one wait on the page may take.
WAIT_MS = 15_000
#: Where the README's screenshots live.
DOCS = Path(__file__).resolve().parents[2] / "docs"


@contextlib.contextmanager
def serve(asgi_app: object) -> Iterator[str]:
    """Serve ``asgi_app`` on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race for it
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        asgi_app, log_level="warning", lifespan="off", ws="none", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start serving the dashboard within 10 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def chromium(profile: Path, **options: Any) -> Iterator[BrowserContext]:
    """Debian's Chromium with the profile directory ``profile``; fails if it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests need Debian's chromium package. "
            "Run `bash scripts/ensure-browser.sh` (make test does) or `apt-get install -y chromium`."
        )
    with sync_playwright() as pw:
        # Playwright passes the profile as --user-data-dir itself (and refuses the flag).
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1360, "height": 900},
            timezone_id="UTC",
            locale="en-US",
            **options,
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


def console_error(msg: Any, errors: list[str]) -> None:
    """Record a console error; Chromium's "Failed to load resource" lines are not ours.

    Chromium logs every non-2xx response; those the page handles itself (the token
    prompt, error notices), so only other errors count.
    """
    if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
        errors.append(f"console error: {msg.text}")


@contextlib.contextmanager
def watched_page(context: BrowserContext) -> Iterator[Any]:
    """A new tab; fails the test on any uncaught script error or console error."""
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    tab.on("console", lambda msg: console_error(msg, errors))
    yield tab
    tab.close()
    assert [] == errors
