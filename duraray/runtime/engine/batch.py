"""The value one batch of a partition is built in.

``PartitionCore.run_batch`` makes one ``Batch`` and hands it to every component it calls:
the clock reading all of the batch shares, the write batch committed at its end, the
effects released after that commit, the orchestration work gathered for its episodes and
the bookkeeping of which instances it touched. A component changes the batch only through
what it is handed; nothing of it outlives the commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import Effects
from duraray.runtime.engine.store import WriteBatch


@dataclass(slots=True)
class Batch:
    """One batch's reading of the clocks, its writes, its effects and its work."""

    #: the wall clock, read once: every timestamp the batch writes is this one
    now: datetime
    #: the monotonic clock, read once (resend stamps, wait deadlines, the storage-full
    #: back-off, cost saves): a batch is one instant
    mono: float
    wb: WriteBatch = field(default_factory=WriteBatch)
    fx: Effects = field(default_factory=Effects)
    #: events to run per instance in this batch's episodes (in arrival order)
    work: dict[str, list[h.HistoryEvent]] = field(default_factory=dict)
    #: instances whose record must be written before the commit
    dirty: set[str] = field(default_factory=set)
    #: instances that changed in a way a wait may observe
    changed: set[str] = field(default_factory=set)
    #: request id -> reply of requests applied in this batch, not yet committed
    replied: dict[str, Any] = field(default_factory=dict)
    #: instances whose execution ended (or continued as new) in this batch: activities of
    #: theirs still waiting for a slot are dropped once it commits (gate.py)
    ended: set[str] = field(default_factory=set)
    #: instance -> (status in the store before the batch, status the batch writes; None:
    #: no record), for the status counters (status_counts.py)
    statuses: dict[str, tuple[h.OrchestrationStatus | None, h.OrchestrationStatus | None]] = field(
        default_factory=dict
    )
    #: the status counters after this batch, if it changed them
    counts: dict[str, int] | None = None
    #: spans of the work this batch applied, emitted once it commits (spans.py)
    spans: list[Any] = field(default_factory=list)

    @property
    def now_micros(self) -> int:
        """``now`` as microseconds since the epoch."""
        return codec.utc_micros(self.now)

    def add_work(self, instance_id: str, *events: h.HistoryEvent) -> None:
        """Queue ``events`` for the instance's episode in this batch."""
        self.work.setdefault(instance_id, []).extend(events)
