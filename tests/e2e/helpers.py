"""Helpers of the end-to-end tests: the wait bound, a thread-safe call counter, bounded polling."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

import pytest

#: Seconds any single wait of an end-to-end test may take before it counts as a failure.
TIMEOUT = 10.0

T = TypeVar("T")


class CallCounter:
    """Counts executions per key from any thread (activities run in a thread pool)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[Hashable] = collections.Counter()

    def hit(self, key: Hashable = None) -> int:
        """Count one execution under ``key``; returns the count including this one."""
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def __getitem__(self, key: Hashable) -> int:
        with self._lock:
            return self._counts[key]

    def snapshot(self) -> dict[Hashable, int]:
        """A copy of every count so far."""
        with self._lock:
            return dict(self._counts)


def poll(probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float = TIMEOUT) -> T:
    """Call ``probe`` until ``done(result)``; fail the test after ``timeout`` seconds.

    For conditions the client cannot wait on directly (a custom status, a child instance
    appearing); the interval is short, the bound is what matters.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s; last value: {value!r}")
        time.sleep(0.005)
