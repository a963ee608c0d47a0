"""Durable timers of one partition: orchestration timers, delayed starts, scheduled signals.

Each timer is a row of ``timers`` keyed by its due time, so recovery reads them in order;
in memory they sit in a heap. A timer removed before it fires (its instance ended) stays
in the heap and is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
from datetime import datetime

from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.records import TimerRow
from duraray.runtime.engine.store import PartitionStore


class Timers:
    """The timers of one partition (see the module docstring)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, bytes]] = []
        self._rows: dict[bytes, TimerRow] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> TimerRow | None:
        """The timer stored under ``key``, if it has not fired or been removed."""
        return self._rows.get(key)

    def put(self, b: Batch, row: TimerRow) -> bytes:
        """Store a timer; returns its key."""
        due = codec.utc_micros(row.fire_at)
        key = r.timer_key(due, row.instance_id, row.timer_id)
        b.wb.put("timers", key, codec.encode_record(row))
        self._rows[key] = row
        heapq.heappush(self._heap, (due, key))
        return key

    def take(self, b: Batch, key: bytes) -> TimerRow | None:
        """Take one timer out (deleted in ``b``), whether due or not; None if gone."""
        row = self._rows.pop(key, None)
        if row is not None:
            b.wb.delete("timers", key)
        return row

    def due_keys(self, now: datetime) -> list[bytes]:
        """The keys of the timers due at ``now``, earliest first (none taken)."""
        limit = codec.utc_micros(now)
        return [key for due, key in sorted(self._heap) if due <= limit and key in self._rows]

    def remove(self, b: Batch, key: bytes) -> None:
        """Forget a timer that has not fired (its instance ended)."""
        if self._rows.pop(key, None) is not None:
            b.wb.delete("timers", key)

    def pop_due(self, b: Batch) -> list[tuple[bytes, TimerRow]]:
        """Take every timer due at the batch's time, earliest first (deleted in ``b``).

        All are taken before any is handled: handling one (a TimerFired, a signal) must not
        add or remove timers due in this batch, which holds for every caller today.
        """
        now = b.now_micros
        heap = self._heap
        due: list[tuple[bytes, TimerRow]] = []
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            row = self._rows.pop(key, None)
            if row is None:
                continue  # removed when its instance finished
            b.wb.delete("timers", key)
            due.append((key, row))
        return due

    def next_due(self) -> datetime | None:
        """When the earliest timer is due, or None."""
        heap = self._heap
        while heap and heap[0][1] not in self._rows:
            heapq.heappop(heap)
        return codec.from_utc_micros(heap[0][0]) if heap else None

    def recover(
        self, store: PartitionStore, bad: list[tuple[str, bytes, BaseException]]
    ) -> list[tuple[bytes, TimerRow]]:
        """Load every stored timer; returns them (their instances take their keys).
        Rows it cannot read are skipped and listed in ``bad``."""
        loaded = []
        for key, value in store.scan("timers"):
            try:
                row = codec.decode_record(TimerRow, value)
                due = codec.utc_micros(row.fire_at)
            except Exception as exc:
                bad.append(("timers", key, exc))
                continue
            self._rows[key] = row
            heapq.heappush(self._heap, (due, key))
            loaded.append((key, row))
        return loaded
