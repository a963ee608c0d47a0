"""The one source of time and randomness of a partition core.

Everything the core reads that is not in its store or its intake comes from here: the
wall clock (timestamps in histories, timers, delays), the monotonic clock (resend
intervals, wait deadlines, back-offs) and fresh ids (execution ids, ids of instances that
entities start, keys of scheduled signals). A test or a simulation passes its own
``Clock`` and every component of the core sees the same one, so one seed reproduces a
whole run; production uses ``SystemClock``.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


class Clock:
    """Wall time, monotonic time and random ids (see the module docstring).

    The default reads the system. ``wall`` replaces the wall clock alone (a test clock);
    ``seed`` makes ids reproducible; a subclass may replace any method.
    """

    def __init__(self, wall: Callable[[], datetime] = utc_now, *, seed: int | None = None) -> None:
        self._wall = wall
        # Without a seed, ids are uuid4 (from the OS) and random bits come from the
        # process's generator: two processes recovering the same store must never mint
        # the same execution id. A seeded clock (tests, simulations) mints plain 128-bit
        # hex ids, not valid UUID4s.
        self._random: random.Random | None = None if seed is None else random.Random(seed)

    def now(self) -> datetime:
        """The wall clock (timezone-aware, UTC)."""
        return self._wall()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals and deadlines only)."""
        return time.monotonic()

    def new_id(self) -> str:
        """A fresh 32-hex-digit id (execution ids, ids of instances entities start)."""
        if self._random is None:
            return uuid.uuid4().hex
        return f"{self._random.getrandbits(128):032x}"

    def random_bits(self, bits: int) -> int:
        """A random non-negative integer below ``2 ** bits``."""
        if self._random is None:
            return random.getrandbits(bits)
        return self._random.getrandbits(bits)


#: What a core accepts as its clock: a ``Clock``, or a wall-clock function alone.
ClockLike = Clock | Callable[[], datetime]


def as_clock(value: ClockLike | None) -> Clock:
    """``value`` as a ``Clock`` (a bare function becomes its wall clock)."""
    if value is None:
        return Clock()
    if isinstance(value, Clock):
        return value
    return Clock(value)
