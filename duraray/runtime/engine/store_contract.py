"""The storage contract of a partition: its databases, ``WriteBatch`` and ``PartitionStore``.

``PartitionStore`` validates every call once (database names, key types and sizes, the
open/closed state) and serializes calls with one lock, so that both implementations
(store_memory.py, store_lmdb.py) fail identically and only implement the ``_``-prefixed
primitives. Writes are queued in a ``WriteBatch`` and applied by ``commit`` in one
all-or-nothing transaction.
"""

from __future__ import annotations

import abc
import threading
from typing import Any, Self

from duraray._errors import StorageFullError

DATABASES: tuple[str, ...] = (
    "meta", "instances", "by_created", "history", "inbox", "timers",
    "activities", "entities", "outbox", "dedup", "live", "parked",
)  # fmt: skip

# LMDB 0.9's compile-time key limit. Both stores enforce it so that code tested against
# MemoryStore cannot build keys that LmdbStore would later reject.
MAX_KEY_SIZE = 511

# ("put", db, key, value) | ("delete", db, key) | ("delete_prefix", db, prefix)
Op = tuple[Any, ...]


class StoreClosedError(RuntimeError):
    """The store was used after ``close()``."""


#: The old name of the error a commit raises when it does not fit (``StorageFullError``).
StoreFullError = StorageFullError


def _check_db(db: str) -> None:
    if db not in DATABASES:
        raise ValueError(f"unknown database {db!r}; expected one of {', '.join(DATABASES)}")


def _check_bytes(what: str, value: object, *, max_len: int | None = MAX_KEY_SIZE) -> None:
    # bytearray/memoryview are refused on purpose: a caller could mutate them after put()
    # and before commit(), silently changing what gets written.
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{what} is {len(value)} bytes; at most {max_len} are allowed")


def _check_key(key: object) -> None:
    _check_bytes("key", key)
    if not key:
        raise ValueError("key must not be empty")


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _bounds(prefix: bytes, start: bytes | None, stop: bytes | None) -> tuple[bytes, bytes | None]:
    """Fold prefix/start/stop into one half-open range ``[lo, hi)`` (hi None: unbounded)."""
    lo = prefix if start is None else max(prefix, start)
    hi = _prefix_end(prefix)
    if stop is not None:
        hi = stop if hi is None else min(hi, stop)
    return lo, hi


class WriteBatch:
    """Ordered list of writes committed atomically in one transaction."""

    __slots__ = ("_ops",)

    def __init__(self) -> None:
        self._ops: list[Op] = []

    def put(self, db: str, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` in ``db`` (overwriting any previous value)."""
        _check_db(db)
        _check_key(key)
        _check_bytes("value", value, max_len=None)
        self._ops.append(("put", db, key, value))

    def delete(self, db: str, key: bytes) -> None:
        """Remove ``key`` from ``db``; a missing key is not an error."""
        _check_db(db)
        _check_key(key)
        self._ops.append(("delete", db, key))

    def delete_prefix(self, db: str, prefix: bytes) -> None:
        """Remove every key of ``db`` starting with ``prefix`` (``b""`` empties the db)."""
        _check_db(db)
        _check_bytes("prefix", prefix)
        self._ops.append(("delete_prefix", db, prefix))

    @property
    def ops(self) -> tuple[Op, ...]:
        """The queued operations, in order (a snapshot: changing it changes nothing)."""
        return tuple(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __bool__(self) -> bool:
        return bool(self._ops)


class PartitionStore(abc.ABC):
    """The storage contract a partition relies on.

    Public methods validate arguments and the open/closed state here, once, so that both
    implementations fail identically; subclasses implement the ``_``-prefixed primitives.
    One lock serializes every call: the owner is a single partition, so contention is
    negligible, and it makes ``close()`` (and LMDB's map resize, which must not overlap
    any transaction) safe against a call in flight on another thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False

    # -- public API ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    @abc.abstractmethod
    def path(self) -> str | None:
        """The directory holding the data (None for in-memory stores)."""

    def get(self, db: str, key: bytes) -> bytes | None:
        """The value stored under ``key`` in ``db``, or None."""
        _check_db(db)
        _check_key(key)
        with self._lock:
            self._check_open()
            return self._get(db, key)

    def get_many(self, db: str, keys: list[bytes]) -> list[bytes | None]:
        """The values under ``keys`` in ``db`` (None where absent), read as of one
        moment: a listing reads its page's records in one go."""
        _check_db(db)
        for key in keys:
            _check_key(key)
        with self._lock:
            self._check_open()
            return self._get_many(db, keys)

    def scan(
        self,
        db: str,
        *,
        prefix: bytes = b"",
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """``(key, value)`` rows of ``db`` in byte order (descending if ``reverse``).

        Only keys starting with ``prefix`` and within ``[start, stop)`` are returned (start
        and stop are absolute keys, not relative to the prefix); at most ``limit`` rows.
        """
        _check_db(db)
        _check_bytes("prefix", prefix)
        if start is not None:
            _check_bytes("start", start)
        if stop is not None:
            _check_bytes("stop", stop)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        lo, hi = _bounds(prefix, start, stop)
        with self._lock:
            self._check_open()
            if limit == 0 or (hi is not None and lo >= hi):
                return []  # the cursor code below may then assume a non-empty range
            return self._scan(db, lo, hi, reverse, limit)

    def count(self, db: str, *, prefix: bytes = b"") -> int:
        """How many keys of ``db`` start with ``prefix``."""
        _check_db(db)
        _check_bytes("prefix", prefix)
        with self._lock:
            self._check_open()
            return self._count(db, prefix)

    def commit(self, batch: WriteBatch) -> None:
        """Apply ``batch``'s ops in order in one transaction: all of them or none."""
        with self._lock:
            self._check_open()
            if batch:
                self._commit(batch._ops)

    def stats(self) -> dict[str, Any]:
        """Numbers for observability: at least ``entries`` (keys per database)."""
        with self._lock:
            self._check_open()
            return self._stats()

    def close(self) -> None:
        """Release the store's resources; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{type(self).__name__} is closed")

    # -- implementation primitives (called with the lock held, store open) ----------------

    @abc.abstractmethod
    def _get(self, db: str, key: bytes) -> bytes | None: ...

    def _get_many(self, db: str, keys: list[bytes]) -> list[bytes | None]:
        return [self._get(db, key) for key in keys]

    @abc.abstractmethod
    def _scan(
        self, db: str, lo: bytes, hi: bytes | None, reverse: bool, limit: int | None
    ) -> list[tuple[bytes, bytes]]: ...

    @abc.abstractmethod
    def _count(self, db: str, prefix: bytes) -> int: ...

    @abc.abstractmethod
    def _commit(self, ops: list[Op]) -> None: ...

    @abc.abstractmethod
    def _stats(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _close(self) -> None: ...
