"""Byte-level key-value storage for one partition: named databases, ordered scans, atomic batches.

This module owns *how* a partition's state is kept: a fixed set of named databases
(``DATABASES``), each an ordered map from ``bytes`` keys to ``bytes`` values, read with
point lookups and ordered range scans and changed only through a ``WriteBatch`` committed
as one all-or-nothing transaction. Two implementations share one contract:

* ``MemoryStore`` keeps everything in dicts (unit tests, the in-process runtime);
* ``LmdbStore`` keeps one LMDB environment per partition directory, owned exclusively by
  one process (the partition is the environment's only writer).

It must not know what the bytes mean: no events, orchestrations, key layouts or
serialization live here. The partition logic builds keys and records on top of it.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import errno
import fcntl
import os
import threading
from typing import Any, Self

import lmdb

from duraray._errors import HubConfigurationError, StorageFullError

__all__ = [
    "DATABASES",
    "MAX_KEY_SIZE",
    "LmdbStore",
    "MemoryStore",
    "PartitionStore",
    "StorageFullError",
    "StoreClosedError",
    "StoreFullError",
    "WriteBatch",
]

DATABASES: tuple[str, ...] = (
    "meta", "instances", "by_created", "history", "inbox", "timers",
    "activities", "entities", "outbox", "dedup", "live",
)  # fmt: skip

# LMDB 0.9's compile-time key limit. Both stores enforce it so that code tested against
# MemoryStore cannot build keys that LmdbStore would later reject.
MAX_KEY_SIZE = 511

_LOCK_FILE = "duraray.lock"
#: Written and deleted again in one transaction by ``LmdbStore._nudge`` (never stored).
_NUDGE_KEY = b"\x00duraray.nudge"

#: The map an LmdbStore starts with (it doubles as needed, up to ``max_map_size``).
DEFAULT_MAP_SIZE = 64 * 1024 * 1024
#: The default cap of the map (``HubConfig.max_map_size``).
DEFAULT_MAX_MAP_SIZE = 1 << 40

#: errno values of a commit that failed for lack of space. LMDB reports a short write()
#: of its dirty pages, which is how a full filesystem usually shows, as EIO ("short write,
#: filesystem full?" in mdb_page_flush); EDQUOT is a full quota.
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG})
#: Free bytes above which an EIO at commit is reported as a possibly failing disk.
_PLENTY_FREE = 1 << 30

# ("put", db, key, value) | ("delete", db, key) | ("delete_prefix", db, prefix)
Op = tuple[Any, ...]


class StoreClosedError(RuntimeError):
    """The store was used after ``close()``."""


#: The old name of the error a commit raises when it does not fit (``StorageFullError``).
StoreFullError = StorageFullError


def _out_of_space(exc: lmdb.Error) -> bool:
    """True if LMDB failed for lack of disk space (not a bug, not a corrupt file)."""
    if isinstance(exc, lmdb.DiskError):  # ENOSPC
        return True
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return code in _NO_SPACE_ERRNOS
    # Without a code (a wrapper that kept only the message): go by LMDB's strerror text.
    text = str(exc)
    return any(os.strerror(e) in text for e in _NO_SPACE_ERRNOS)


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


class _MemoryDb:
    """One ordered map: a dict for lookups plus a sorted key list for range scans.

    Appending keys in order (the common case: history, timers) is O(1) amortized; a
    random insert or delete costs a memmove of the key list, fine at ~100k keys.
    """

    __slots__ = ("data", "keys")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def set(self, key: bytes, value: bytes) -> None:
        if key not in self.data:
            bisect.insort(self.keys, key)
        self.data[key] = value

    def remove(self, key: bytes) -> None:
        if self.data.pop(key, None) is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]

    def span(self, lo: bytes, hi: bytes | None) -> tuple[int, int]:
        i = bisect.bisect_left(self.keys, lo)
        j = len(self.keys) if hi is None else bisect.bisect_left(self.keys, hi)
        return i, max(i, j)


class MemoryStore(PartitionStore):
    """A dict-backed store with the same semantics as ``LmdbStore``; nothing is persisted."""

    def __init__(self) -> None:
        super().__init__()
        self._dbs = {name: _MemoryDb() for name in DATABASES}

    @property
    def path(self) -> str | None:
        return None

    def _get(self, db: str, key: bytes) -> bytes | None:
        return self._dbs[db].data.get(key)

    def _scan(
        self, db: str, lo: bytes, hi: bytes | None, reverse: bool, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        mdb = self._dbs[db]
        i, j = mdb.span(lo, hi)
        if limit is not None:
            i, j = (max(i, j - limit), j) if reverse else (i, min(j, i + limit))
        keys = mdb.keys[i:j]
        if reverse:
            keys.reverse()
        return [(k, mdb.data[k]) for k in keys]

    def _count(self, db: str, prefix: bytes) -> int:
        i, j = self._dbs[db].span(prefix, _prefix_end(prefix))
        return j - i

    def _commit(self, ops: list[Op]) -> None:
        # Apply in place while recording how to undo each change; on any failure, replay
        # the undo log backwards. This gives the same all-or-nothing guarantee as an LMDB
        # transaction without copying the databases for every commit.
        undo: list[tuple[_MemoryDb, bytes, bytes | None]] = []
        try:
            for op in ops:
                kind, mdb = op[0], self._dbs[op[1]]
                if kind == "put":
                    undo.append((mdb, op[2], mdb.data.get(op[2])))
                    mdb.set(op[2], op[3])
                elif kind == "delete":
                    if op[2] in mdb.data:
                        undo.append((mdb, op[2], mdb.data[op[2]]))
                        mdb.remove(op[2])
                elif kind == "delete_prefix":
                    i, j = mdb.span(op[2], _prefix_end(op[2]))
                    doomed = mdb.keys[i:j]
                    undo.extend((mdb, k, mdb.data[k]) for k in doomed)
                    del mdb.keys[i:j]
                    for k in doomed:
                        del mdb.data[k]
                else:
                    raise ValueError(f"unknown write op {kind!r}")
        except BaseException:
            for mdb, key, old in reversed(undo):
                if old is None:
                    mdb.remove(key)
                else:
                    mdb.set(key, old)
            raise

    def _stats(self) -> dict[str, Any]:
        return {"backend": "memory", "entries": {n: len(d.data) for n, d in self._dbs.items()}}

    def _close(self) -> None:
        self._dbs = {}


class LmdbStore(PartitionStore):
    """One LMDB environment in one directory, owned exclusively by this object.

    ``sync=True`` fsyncs data and metadata on every commit, so a committed batch survives
    an OS crash or power loss (the caller commits one batch per group of work: a group
    commit). ``sync=False`` skips the fsync: a process crash still loses nothing (the
    writes sit in the OS page cache) and, with ``writemap=False`` on a filesystem that
    keeps write order, the database stays consistent, but an OS crash or power loss may
    undo the last commits. Use it for tests and throwaway data.

    The map starts at ``map_size`` bytes (default: 64 MiB, or ``max_map_size`` if that is
    smaller) and doubles (up to ``max_map_size``) whenever a commit does not fit; the
    failed transaction is aborted and the whole batch retried. A commit that cannot fit
    (the map is at ``max_map_size``, or the disk is full) raises ``StorageFullError``
    and writes nothing; the store stays usable, so a later commit that fits succeeds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        map_size: int | None = None,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
    ) -> None:
        super().__init__()
        if map_size is None:
            map_size = min(DEFAULT_MAP_SIZE, max_map_size)
        if map_size <= 0 or max_map_size < map_size:
            raise ValueError(f"need 0 < map_size <= max_map_size, got {map_size}, {max_map_size}")
        self._path = os.path.abspath(os.fspath(path))
        self._max_map_size = max_map_size
        os.makedirs(self._path, exist_ok=True)
        self._lock_fd = self._acquire_dir_lock()
        try:
            # writemap=False: LMDB writes dirty pages from malloc'd buffers with write(),
            # so the map stays read-only and a stray pointer write cannot corrupt the file;
            # with sync=False that also keeps the database consistent after an OS crash.
            # map_async only matters with writemap and would make flushes asynchronous
            # (not durable), so it stays off. lock=True keeps LMDB's reader table, which
            # is what makes our short read transactions safe next to the writer.
            self._env = lmdb.open(
                self._path,
                map_size=map_size,
                subdir=True,
                max_dbs=len(DATABASES),
                sync=sync,
                metasync=sync,
                writemap=False,
                map_async=False,
                lock=True,
            )
            # Named databases are opened once: handles stay valid for the env's lifetime.
            self._dbs = {name: self._env.open_db(name.encode()) for name in DATABASES}
        except BaseException:
            self._release_dir_lock()
            raise

    # -- exclusive ownership of the directory ----------------------------------------------

    def _acquire_dir_lock(self) -> int:
        # flock locks belong to the open file description, so a second LmdbStore on the
        # same directory in this process conflicts too (LMDB itself forbids opening one
        # environment twice in a process). The fd is close-on-exec, but a fork() child
        # shares it and keeps the lock alive for as long as it lives.
        lock_path = os.path.join(self._path, _LOCK_FILE)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise HubConfigurationError(
                f"partition data dir {self._path} is already open by another process "
                f"(pid {holder}); a partition's data dir has exactly one owner"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The pid is only for the error message above; the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return fd

    def _release_dir_lock(self) -> None:
        # The file is left in place: if we unlinked it, a contender that had already opened
        # the old inode could lock it while a newcomer creates and locks a new file, giving
        # the directory two owners. Truncating it just drops our stale pid.
        with contextlib.suppress(OSError):
            os.ftruncate(self._lock_fd, 0)
        os.close(self._lock_fd)  # closing the last fd on the description releases flock

    # -- primitives ------------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        return self._path

    def _get(self, db: str, key: bytes) -> bytes | None:
        with self._env.begin(db=self._dbs[db]) as txn:
            return txn.get(key)

    def _scan(
        self, db: str, lo: bytes, hi: bytes | None, reverse: bool, limit: int | None
    ) -> list[tuple[bytes, bytes]]:
        rows: list[tuple[bytes, bytes]] = []
        with self._env.begin(db=self._dbs[db]) as txn, txn.cursor() as cur:
            if reverse:
                # Position on the last key < hi (the one before the first key >= hi, or
                # the very last key if none is >= hi), then walk down while key >= lo.
                ok = cur.last() if hi is None or not cur.set_range(hi) else cur.prev()
                while ok and (limit is None or len(rows) < limit):
                    key = cur.key()
                    if key < lo:
                        break
                    rows.append((key, cur.value()))
                    ok = cur.prev()
            else:
                ok = cur.set_range(lo)  # set_range(b"") is first()
                while ok and (limit is None or len(rows) < limit):
                    key = cur.key()
                    if hi is not None and key >= hi:
                        break
                    rows.append((key, cur.value()))
                    ok = cur.next()
        return rows

    def _count(self, db: str, prefix: bytes) -> int:
        with self._env.begin(db=self._dbs[db]) as txn:
            if not prefix:
                return txn.stat(self._dbs[db])["entries"]
            n = 0
            with txn.cursor() as cur:
                ok = cur.set_range(prefix)
                while ok and cur.key().startswith(prefix):
                    n += 1
                    ok = cur.next()
            return n

    def _commit(self, ops: list[Op]) -> None:
        nudged = False
        while True:
            try:
                # The context manager commits on success and aborts on any exception, so
                # a failing op (or MapFullError) leaves nothing behind. A commit whose
                # write of dirty pages fails (ENOSPC, EIO) is aborted by LMDB itself: the
                # meta page still names the last good transaction, and pages written past
                # it are free pages, so the environment stays usable.
                with self._env.begin(write=True) as txn:
                    for op in ops:
                        self._apply(txn, op)
                return
            except lmdb.MapFullError:
                if self._grow_map():
                    continue
                if not nudged and self._nudge():
                    nudged = True
                    continue
                current = self._env.info()["map_size"]
                raise StorageFullError(
                    f"the store at {self._path} is full: its map has reached max_map_size "
                    f"({current} bytes); raise max_map_size or purge data"
                ) from None
            except lmdb.Error as exc:
                if not _out_of_space(exc):
                    raise
                raise StorageFullError(self._no_space_message(exc)) from exc

    def _apply(self, txn: lmdb.Transaction[bytes], op: Op) -> None:
        kind, dbi = op[0], self._dbs[op[1]]
        if kind == "put":
            txn.put(op[2], op[3], db=dbi)
        elif kind == "delete":
            txn.delete(op[2], db=dbi)
        elif kind == "delete_prefix":
            if not op[2]:
                txn.drop(dbi, delete=False)  # empty the db, keep its handle
                return
            with txn.cursor(dbi) as cur:
                ok = cur.set_range(op[2])
                # Cursor.delete() moves to the next record; once unpositioned, key() is
                # b"", which a non-empty prefix never matches.
                while ok and cur.key().startswith(op[2]):
                    ok = cur.delete()
        else:
            raise ValueError(f"unknown write op {kind!r}")

    def _grow_map(self) -> bool:
        """Double the map (up to max_map_size); False if it is at max_map_size already."""
        current = self._env.info()["map_size"]
        if current >= self._max_map_size:
            return False
        # Safe here: we hold the store lock, so no transaction of ours is open.
        self._env.set_mapsize(min(current * 2, self._max_map_size))
        return True

    def _nudge(self) -> bool:
        """Commit a transaction that changes nothing visible; True if it fit.

        LMDB reuses the pages a transaction freed only from the transaction after next
        (the newest snapshot stays readable), so space freed by the last commit (a purge)
        cannot serve the very next one. At max_map_size, one such commit in between makes
        it available before the batch is given up as not fitting.
        """
        meta = self._dbs["meta"]
        try:
            with self._env.begin(write=True) as txn:
                txn.put(_NUDGE_KEY, b"", db=meta)
                txn.delete(_NUDGE_KEY, db=meta)
        except lmdb.MapFullError:
            return False
        return True

    def _no_space_message(self, exc: lmdb.Error) -> str:
        try:
            fs = os.statvfs(self._path)
            free: int | None = fs.f_bavail * fs.f_frsize
        except OSError:
            free = None
        eio = not isinstance(exc, lmdb.DiskError) and getattr(exc, "code", None) in (
            errno.EIO,
            None,
        )
        if eio and free is not None and free >= _PLENTY_FREE:
            # A short write on a disk with room to spare: not a full disk.
            return (
                f"I/O error writing the store at {self._path} although {free} bytes are "
                f"free there: the disk may be failing; check it (LMDB said: {exc})"
            )
        shown = "free space unknown" if free is None else f"{free} bytes free there"
        return (
            f"no space left on device for the store at {self._path} ({shown}; LMDB said: "
            f"{exc}); free space on its disk"
        )

    def _stats(self) -> dict[str, Any]:
        info = self._env.info()
        page_size = self._env.stat()["psize"]
        with self._env.begin() as txn:
            entries = {name: txn.stat(dbi)["entries"] for name, dbi in self._dbs.items()}
        return {
            "backend": "lmdb",
            "path": self._path,
            "map_size": info["map_size"],
            "max_map_size": self._max_map_size,
            "page_size": page_size,
            "used_bytes": (info["last_pgno"] + 1) * page_size,
            "last_txnid": info["last_txnid"],
            "entries": entries,
        }

    def _close(self) -> None:
        try:
            self._env.close()
        finally:
            self._release_dir_lock()
