"""``LmdbStore``: the storage contract on one LMDB environment per partition directory.

The directory is owned exclusively by one process (an flock'd lock file; the partition is
the environment's only writer). The map grows on demand up to ``max_map_size``; a commit
that cannot fit, for lack of map or of disk, raises ``StorageFullError`` and writes nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Any

import lmdb

from duraray._errors import HubConfigurationError, StorageFullError
from duraray.runtime.engine.store_contract import DATABASES, Op, PartitionStore

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

    def _get_many(self, db: str, keys: list[bytes]) -> list[bytes | None]:
        with self._env.begin(db=self._dbs[db]) as txn:
            get = txn.get
            return [get(key) for key in keys]

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
