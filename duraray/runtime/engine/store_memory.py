"""``MemoryStore``: the storage contract kept in dicts, persisting nothing.

For unit tests and the in-process runtime. It has the same semantics as ``LmdbStore``
(ordered scans, the key size limit, all-or-nothing commits), so code tested against it
behaves the same on LMDB.
"""

from __future__ import annotations

import bisect
from typing import Any

from duraray.runtime.engine.store_contract import DATABASES, Op, PartitionStore, _prefix_end


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
