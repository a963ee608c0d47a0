"""Shared fixtures of the end-to-end tests: each module's ``app`` runs in process, no Ray.

A test module defines a module-level ``app`` (a ``duraray.App`` with a name unique to the
module) and asks for one of the client fixtures below; the hub lives for one test, on a
memory store, so tests never see each other's instances.

- ``client``: the hub on a ``ManualClock(auto_advance=True)``: durable timers (retry
  delays, one-hour timers) fire as soon as the hub is idle, at no wall-clock cost;
- ``manual_client``: the hub on a ``ManualClock`` that moves only when the test advances
  ``manual_clock``, so "not yet" is observable (start_at, an event beating a timer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from duraray import Client
from duraray.testing import ManualClock, run_in_process


@pytest.fixture
def auto_clock() -> ManualClock:
    """A manual clock that skips to the next timer whenever the hub is idle."""
    return ManualClock(auto_advance=True)


@pytest.fixture
def manual_clock() -> ManualClock:
    """A manual clock that moves only when the test calls ``advance``."""
    return ManualClock()


def _module_app(request: pytest.FixtureRequest) -> Any:
    app = getattr(request.module, "app", None)
    if app is None:
        raise RuntimeError(f"{request.module.__name__} defines no module-level `app`")
    return app


@pytest.fixture
def client(request: pytest.FixtureRequest, auto_clock: ManualClock) -> Iterator[Client]:
    """The module's app, in process on a memory store, with an auto-advancing clock."""
    with run_in_process(_module_app(request), clock=auto_clock) as c:
        yield c


@pytest.fixture
def manual_client(request: pytest.FixtureRequest, manual_clock: ManualClock) -> Iterator[Client]:
    """The module's app, in process on a memory store, with a clock the test moves."""
    with run_in_process(_module_app(request), clock=manual_clock) as c:
        yield c
