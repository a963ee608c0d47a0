"""Fixtures of the HTTP API tests: an in-process hub and a synchronous in-process HTTP client.

Requests go through ``httpx.ASGITransport`` straight into the Starlette app (no socket,
no server), on an event loop that lives in a background thread for the whole test (an
anyio blocking portal, as Starlette's TestClient does), so tests stay synchronous and can
mix HTTP calls with the Python client's bounded waits.

- ``client``: the test module's ``app`` on a memory store with ``ManualClock(auto_advance=True)``;
- ``http``: the API of that hub, no token;
- ``make_http(app, base_url=...)``: a synchronous HTTP client for any ASGI app (e.g. with a
  token; ``base_url`` sets the ``Host`` it addresses);
- ``poll(probe, done)``: call ``probe`` until ``done(result)``, failing after a bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, TypeVar

import anyio.from_thread
import httpx
import pytest

from duraray import Client
from duraray.runtime.http import create_app
from duraray.testing import ManualClock, run_in_process

#: Seconds any single wait of these tests may take before it counts as a failure.
TIMEOUT = 10.0
BASE_URL = "http://testserver"

T = TypeVar("T")


class SyncHttp:
    """``get``/``post``/``delete``/``request`` over an ASGI app, answered synchronously."""

    def __init__(
        self, portal: anyio.from_thread.BlockingPortal, app: Any, base_url: str = BASE_URL
    ) -> None:
        self._portal = portal
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=base_url, timeout=TIMEOUT
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request and return the complete response."""
        return self._portal.call(lambda: self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET ``url``."""
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """POST ``url``."""
        return self.request("POST", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        """DELETE ``url``."""
        return self.request("DELETE", url, **kwargs)

    def aclose(self) -> None:
        """Close the underlying client."""
        self._portal.call(self._client.aclose)


@pytest.fixture
def make_http() -> Iterator[Callable[[Any], SyncHttp]]:
    """A factory of synchronous in-process HTTP clients, closed at the end of the test."""
    with ExitStack() as stack:
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal())

        def make(app: Any, base_url: str = BASE_URL) -> SyncHttp:
            http = SyncHttp(portal, app, base_url)
            stack.callback(http.aclose)
            return http

        yield make


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    """The test module's ``app`` in process, on a memory store and an auto-advancing clock."""
    app = getattr(request.module, "app", None)
    if app is None:
        raise RuntimeError(f"{request.module.__name__} defines no module-level `app`")
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as c:
        yield c


@pytest.fixture
def http(client: Client, make_http: Callable[[Any], SyncHttp]) -> SyncHttp:
    """The HTTP API of ``client``'s hub, without a token."""
    return make_http(create_app(client))


def poll_until(probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float = TIMEOUT) -> T:
    """Call ``probe`` until ``done(result)``; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s; last value: {value!r}")
        time.sleep(0.005)


@pytest.fixture
def poll() -> Callable[..., Any]:
    """``poll(probe, done)``: the bounded polling helper, as a fixture."""
    return poll_until
