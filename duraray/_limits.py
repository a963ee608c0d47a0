"""The limits on values duraray stores or computes with, checked where they enter.

A value a partition cannot store or compute with must be refused before anything is
stored: raised at a client call (so nothing is written), or inside orchestration or
entity code (so it fails that orchestration or operation like any other exception). A
value that slipped through would fail every batch that touches it, and a partition that
fails its batch restarts and fails again. Every layer checks with the functions below,
so the client, the contexts and the engine agree on one rule.

- **Times** lie between 1970-01-01 UTC and ``MAX_TIME``: the store keys times as unsigned
  64-bit microseconds since the epoch (so nothing earlier), and Python's ``datetime`` ends
  in year 9999, which binds first; ``MAX_TIME`` keeps ``MAX_DURATION`` of headroom so an
  allowed time plus an allowed duration is always representable. Naive datetimes are UTC.
- **Durations** (delays, retry intervals) are at most ``MAX_DURATION`` either way;
  **timeouts** (seconds) are finite, not negative and at most ``MAX_DURATION``.
- **Names** (orchestration, activity, entity, event and operation names) are non-empty
  and at most ``MAX_NAME_BYTES`` of UTF-8; **texts** (tag keys and values together,
  versions, reasons) at most ``MAX_TEXT_BYTES``; **ids** (instance ids, ``@name@key``
  entity ids) at most ``MAX_INSTANCE_ID_BYTES`` / ``MAX_ENTITY_ID_BYTES``: the longest
  store key built from one (a timer key: 8-byte time + id + NUL + 4-byte timer id) stays
  within LMDB's ``MAX_STORE_KEY_BYTES``.
- **Page sizes** are integers from 1 to ``MAX_PAGE_SIZE``.

Sizes are UTF-8 bytes, not characters: keys and the payload limit count bytes.
This module imports nothing from the rest of the package: every layer may use it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

#: LMDB's compile-time key limit (``store.MAX_KEY_SIZE``; a test keeps the two equal).
MAX_STORE_KEY_BYTES = 511
#: Bytes a store key adds around an id at most (``records.timer_key``: u64 + NUL + u32).
KEY_OVERHEAD_BYTES = 8 + 1 + 4

#: The longest delay, interval or timeout: a century.
MAX_DURATION = timedelta(days=36525)
#: The longest timeout in seconds (also below ``threading.TIMEOUT_MAX``).
MAX_TIMEOUT_SECONDS = MAX_DURATION.total_seconds()

_KEY_MAX_MICROS = 2**64 - 1  # times are u64 microsecond key parts (records.u64)
_DATETIME_MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - EPOCH) // _ONE_US
#: The earliest time stored or computed with: the epoch (keys are unsigned).
MIN_TIME = EPOCH
#: The latest time stored or computed with (9899-12-30, whole days), see the module docstring.
MAX_TIME = EPOCH + timedelta(
    days=(min(_KEY_MAX_MICROS, _DATETIME_MAX_MICROS) - MAX_DURATION // _ONE_US) // 86_400_000_000
)

MAX_NAME_BYTES = 256
MAX_TEXT_BYTES = 64 * 1024
MAX_INSTANCE_ID_BYTES = 256
MAX_ENTITY_ID_BYTES = 256
MAX_PAGE_SIZE = 10_000


def utf8_size(text: str, what: str = "text") -> int:
    """The length of ``text`` in UTF-8 bytes; ValueError if it has no UTF-8 form (a lone
    surrogate), since store keys and history records are UTF-8."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not valid Unicode text ({exc.reason})") from None


def check_time(value: Any, what: str) -> datetime:
    """``value`` as a UTC datetime if it lies in [``MIN_TIME``, ``MAX_TIME``]; a naive
    datetime is taken to be UTC. Raises TypeError or ValueError."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    aware = value if value.utcoffset() is not None else value.replace(tzinfo=UTC)
    # Subtracting aware datetimes cannot overflow where astimezone() near year 1 could.
    if not MIN_TIME <= aware <= MAX_TIME:
        raise ValueError(
            f"{what} {value.isoformat()} is out of range: times must lie between "
            f"{MIN_TIME.isoformat()} and {MAX_TIME.isoformat()}"
        )
    return aware.astimezone(UTC)


def check_duration(value: Any, what: str) -> timedelta:
    """``value`` if it is a timedelta of at most ``MAX_DURATION`` either way."""
    if not isinstance(value, timedelta):
        raise TypeError(f"{what} must be a timedelta, got {type(value).__name__}")
    if not -MAX_DURATION <= value <= MAX_DURATION:
        raise ValueError(f"{what} {value} is out of range: at most {MAX_DURATION.days} days")
    return value


def check_seconds(value: Any, what: str) -> timedelta:
    """A duration given as a timedelta or a finite number of seconds, as a timedelta."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > MAX_TIMEOUT_SECONDS:
            raise ValueError(
                f"{what} {value!r} is out of range: a finite number of seconds, at most "
                f"{MAX_TIMEOUT_SECONDS:.0f}"
            )
        return timedelta(seconds=value)
    if isinstance(value, timedelta):
        return check_duration(value, what)
    raise TypeError(f"{what} must be a timedelta or a number of seconds, got {value!r}")


def resolve_time(value: Any, now: datetime | None, what: str) -> datetime:
    """A point in time given as a datetime, or as a timedelta from ``now``, checked."""
    if isinstance(value, timedelta):
        delay = check_duration(value, what)
        if now is None:
            raise ValueError(f"a relative {what} needs the current time")
        try:
            due = now + delay
        except OverflowError:  # a clock near the end of time: still a ValueError
            raise ValueError(f"{what} {value} from {now.isoformat()} is out of range") from None
        return check_time(due, what)
    if isinstance(value, datetime):
        return check_time(value, what)
    raise TypeError(f"{what} must be a datetime or a timedelta, got {type(value).__name__}")


def check_timeout(value: Any, what: str = "timeout") -> float:
    """``value`` as float seconds if it is a finite, non-negative number of at most
    ``MAX_TIMEOUT_SECONDS`` (NaN and infinity are refused: no deadline could be kept)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float
        seconds = math.inf
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_TIMEOUT_SECONDS):
        raise ValueError(
            f"{what} {value!r} is out of range: a finite number of seconds from 0 to "
            f"{MAX_TIMEOUT_SECONDS:.0f}"
        )
    return seconds


def check_page_size(value: Any, what: str = "page_size") -> int:
    """``value`` if it is an int from 1 to ``MAX_PAGE_SIZE``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise ValueError(f"{what} must be between 1 and {MAX_PAGE_SIZE}, got {value}")
    return value


def check_size(value: str, what: str, limit: int) -> str:
    """``value`` if its UTF-8 form exists and takes at most ``limit`` bytes."""
    size = utf8_size(value, what)
    if size > limit:
        raise ValueError(f"{what} is {size} bytes of UTF-8; the limit is {limit} bytes")
    return value


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a non-empty string of at most ``MAX_NAME_BYTES`` UTF-8 bytes.

    Anything else is a ValueError (a missing name, None, is a bad value of a name)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return check_size(value, what, MAX_NAME_BYTES)


def check_text(value: Any, what: str) -> str | None:
    """``value`` if it is None or a string of at most ``MAX_TEXT_BYTES`` UTF-8 bytes."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    return check_size(value, what, MAX_TEXT_BYTES)


def check_tags(value: Any, what: str = "tags") -> dict[str, str] | None:
    """``value`` if it is None or a dict of str to str whose keys and values together
    take at most ``MAX_TEXT_BYTES`` UTF-8 bytes."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{what} must be a dict of str to str")
    total = sum(utf8_size(k, what) + utf8_size(v, what) for k, v in value.items())
    if total > MAX_TEXT_BYTES:
        raise ValueError(
            f"{what} take {total} bytes of UTF-8 (keys and values); the limit is "
            f"{MAX_TEXT_BYTES} bytes"
        )
    return value


__all__ = [
    "EPOCH",
    "KEY_OVERHEAD_BYTES",
    "MAX_DURATION",
    "MAX_ENTITY_ID_BYTES",
    "MAX_INSTANCE_ID_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_STORE_KEY_BYTES",
    "MAX_TEXT_BYTES",
    "MAX_TIME",
    "MAX_TIMEOUT_SECONDS",
    "MIN_TIME",
    "check_duration",
    "check_name",
    "check_page_size",
    "check_seconds",
    "check_size",
    "check_tags",
    "check_text",
    "check_time",
    "check_timeout",
    "resolve_time",
    "utf8_size",
]
