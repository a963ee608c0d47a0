"""The orchestration instances of a partition: records, histories, inboxes, executors.

``InstanceTable`` owns the in-memory state of the partition's non-terminal instances
(``LiveInstance``: the record, the replay executor while cached, the activities and
timers it waits for) and the rows that belong to one instance in the store: its record,
history and inbox. Reading a terminal instance goes to the store. The components that
change instances (episodes, lifecycle, client operations) do it through these methods,
inside the batch they are handed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from duraray._errors import InstanceNotFoundError, InstanceStateError
from duraray.orchestrations import history as h
from duraray.orchestrations.executor import ExecutorOptions, OrchestrationExecutor
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.records import ActivityTask, InstanceRecord
from duraray.runtime.engine.status_counts import STATUS_COUNTS_KEY, StatusCounts
from duraray.runtime.engine.store import PartitionStore

Status = h.OrchestrationStatus


@dataclass(slots=True)
class LiveInstance:
    """In-memory state of a non-terminal instance."""

    record: InstanceRecord
    executor: OrchestrationExecutor | None = None
    activities: set[int] = field(default_factory=set)
    timers: set[bytes] = field(default_factory=set)
    # True while new events must go to the inbox (suspended, delayed start, or waiting
    # for the inbox to be drained into an episode).
    buffering: bool = False
    #: the status its record has in the store (None: not stored yet), for the counters
    stored_status: h.OrchestrationStatus | None = None


@dataclass(frozen=True, slots=True)
class ExecutorFactory:
    """How the table builds a replay executor for an instance."""

    #: the registered orchestration functions by name
    orchestrations: dict[str, Callable[..., Any]]
    converter: codec.Converter
    name_of: Callable[[str, Any], str]
    options: ExecutorOptions

    def build(self, record: InstanceRecord) -> OrchestrationExecutor:
        """A fresh executor for ``record``'s orchestration (no history applied)."""
        return OrchestrationExecutor(
            self.orchestrations.get(record.name),
            instance_id=record.instance_id,
            converter=self.converter,
            name_of=self.name_of,
            options=self.options,
        )


class InstanceTable:
    """Live instances and their stored rows (see the module docstring)."""

    def __init__(
        self,
        store: PartitionStore,
        executors: ExecutorFactory,
        *,
        max_cached: int,
        counters: dict[str, float],
    ) -> None:
        self.store = store
        self._live: dict[str, LiveInstance] = {}
        # Instances whose inbox is drained into an episode at the start of the next batch.
        self._ready: set[str] = set()
        self._executors = executors
        self._cached: OrderedDict[str, None] = OrderedDict()  # LRU of live executors
        self._max_cached = max_cached
        self._counters = counters
        #: instances by status, kept as counters (status_counts.py; read by ``recover``,
        #: once the store is upgraded)
        self.status_counts = StatusCounts(None)

    # -- the live set -----------------------------------------------------------------------

    def get(self, instance_id: str) -> LiveInstance | None:
        """The live (non-terminal) instance, or None."""
        return self._live.get(instance_id)

    def waits_for(self, task: ActivityTask) -> bool:
        """True if the activity's instance still waits for it (it may have ended while
        the activity waited for a slot)."""
        live = self._live.get(task.instance_id)
        return (
            live is not None
            and live.record.execution_id == task.execution_id
            and task.task_id in live.activities
        )

    def add(self, live: LiveInstance) -> None:
        """A new live instance (created, rewound, or recovered)."""
        self._live[live.record.instance_id] = live

    def remove(self, instance_id: str) -> None:
        """The instance is no longer live (it ended)."""
        del self._live[instance_id]
        self._ready.discard(instance_id)

    def values(self) -> list[LiveInstance]:
        """Every live instance."""
        return list(self._live.values())

    def ids(self) -> list[str]:
        """The ids of the live instances."""
        return list(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def mark_ready(self, instance_id: str) -> None:
        """Drain the instance's inbox into an episode at the start of the next batch."""
        self._ready.add(instance_id)

    def unmark_ready(self, instance_id: str) -> None:
        """Do not drain the instance next batch (it was suspended)."""
        self._ready.discard(instance_id)

    @property
    def has_ready(self) -> bool:
        """True if some instance waits to be drained."""
        return bool(self._ready)

    def take_ready(self) -> list[str]:
        """The instances to drain now, in id order; the set is emptied."""
        ready = sorted(self._ready)
        self._ready.clear()
        return ready

    @property
    def cached_executors(self) -> int:
        """How many live instances hold a replay executor in memory."""
        return len(self._cached)

    # -- records ----------------------------------------------------------------------------

    def get_record(self, instance_id: str) -> InstanceRecord | None:
        """The instance's current record (live, else as stored), or None."""
        live = self._live.get(instance_id)
        if live is not None:
            return live.record
        data = self.store.get("instances", r.instance_key(instance_id))
        return None if data is None else codec.decode_record(InstanceRecord, data)

    def require_live(self, instance_id: str, op: str) -> LiveInstance:
        """The live instance, or the error a client gets for trying to ``op`` it."""
        live = self._live.get(instance_id)
        if live is not None:
            return live
        record = self.get_record(instance_id)
        if record is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        raise InstanceStateError(
            f"cannot {op} instance {instance_id!r}: it is {record.status.value}"
        )

    def touch(self, b: Batch, live: LiveInstance) -> None:
        """The instance changed in this batch: stamp it, save it, let waits look."""
        live.record.last_updated_at = b.now
        b.dirty.add(live.record.instance_id)
        b.changed.add(live.record.instance_id)

    def put_record(self, b: Batch, record: InstanceRecord) -> None:
        """Write ``record`` in this batch."""
        iid = record.instance_id
        b.wb.put("instances", r.instance_key(iid), codec.encode_record(record))
        # For the status counters: (status in the store before the batch, status written).
        entry = b.statuses.get(iid)
        before = self._stored_status(iid) if entry is None else entry[0]
        b.statuses[iid] = (before, record.status)

    def note_deleted(self, b: Batch, record: InstanceRecord) -> None:
        """The batch deletes ``record`` (as the store or the live set has it)."""
        iid = record.instance_id
        entry = b.statuses.get(iid)
        if entry is not None:
            before = entry[0]
        else:
            live = self._live.get(iid)
            before = live.stored_status if live is not None else record.status
        b.statuses[iid] = (before, None)

    def _stored_status(self, instance_id: str) -> h.OrchestrationStatus | None:
        live = self._live.get(instance_id)
        if live is not None:
            return live.stored_status
        data = self.store.get("instances", r.instance_key(instance_id))
        return None if data is None else codec.decode_record(InstanceRecord, data).status

    def stage_counts(self, b: Batch) -> None:
        """Before the commit: write the status counters if the batch changed them."""
        self.status_counts.stage(b, lambda key, value: b.wb.put("meta", key, value))

    def committed(self, b: Batch) -> None:
        """After the commit: counters and stored statuses as the batch left them."""
        self.status_counts.committed(b)
        for iid, (_, status) in b.statuses.items():
            live = self._live.get(iid)
            if live is not None:
                live.stored_status = status

    def write_dirty(self, b: Batch) -> None:
        """Write the record of every live instance the batch changed."""
        for iid in b.dirty:
            live = self._live.get(iid)
            if live is not None:
                self.put_record(b, live.record)

    # -- history and inbox ------------------------------------------------------------------

    def load_history(self, instance_id: str) -> list[h.HistoryEvent]:
        """The committed history of the instance's current execution."""
        prefix = r.instance_prefix(instance_id)
        return [codec.decode_event(v) for _, v in self.store.scan("history", prefix=prefix)]

    def history_with_batch(self, b: Batch, instance_id: str) -> list[h.HistoryEvent]:
        """The committed history plus the events appended to it in this batch."""
        history = self.load_history(instance_id)
        prefix = r.instance_prefix(instance_id)
        for op in b.wb.ops:
            if op[0] == "put" and op[1] == "history" and op[2].startswith(prefix):
                history.append(codec.decode_event(op[3]))
        return history

    def children_of(self, b: Batch, instance_id: str) -> list[str]:
        """Every sub-orchestration the instance's current execution started."""
        return list(
            dict.fromkeys(
                e.instance_id
                for e in self.history_with_batch(b, instance_id)
                if isinstance(e, h.SubOrchestrationInstanceCreated)
            )
        )

    def append_history(self, b: Batch, live: LiveInstance, events: list[h.HistoryEvent]) -> None:
        """Append ``events`` to the instance's history in this batch."""
        record = live.record
        iid = record.instance_id
        n = record.history_length
        put = b.wb.put
        for event in events:
            put("history", r.seq_key(iid, n), codec.encode_event(event))
            n += 1
        record.history_length = n
        b.dirty.add(iid)

    def to_inbox(self, b: Batch, live: LiveInstance, event: h.HistoryEvent) -> None:
        """Buffer ``event`` in the instance's inbox (applied when it is drained)."""
        record = live.record
        b.wb.put(
            "inbox", r.seq_key(record.instance_id, record.inbox_length), codec.encode_event(event)
        )
        record.inbox_length += 1
        b.dirty.add(record.instance_id)

    def inbox_events(self, live: LiveInstance) -> list[h.HistoryEvent]:
        """The committed inbox of the instance."""
        if not live.record.inbox_length:
            return []
        prefix = r.instance_prefix(live.record.instance_id)
        return [codec.decode_event(v) for _, v in self.store.scan("inbox", prefix=prefix)]

    def clear_inbox(self, b: Batch, live: LiveInstance) -> None:
        """Delete the instance's inbox rows in this batch."""
        if live.record.inbox_length:
            b.wb.delete_prefix("inbox", r.instance_prefix(live.record.instance_id))
            live.record.inbox_length = 0
            b.dirty.add(live.record.instance_id)

    def drain_inbox(self, b: Batch, instance_id: str) -> None:
        """Move the instance's buffered events into this batch's episode, unless it is
        suspended or waits for locks to be granted again."""
        live = self._live.get(instance_id)
        if live is None or live.record.status is Status.SUSPENDED or live.record.relock:
            return
        live.buffering = False
        if live.record.inbox_length:
            events = self.inbox_events(live)
            self.clear_inbox(b, live)
            b.add_work(instance_id, *events)

    # -- executors --------------------------------------------------------------------------

    def executor_for(self, live: LiveInstance) -> OrchestrationExecutor:
        """The instance's replay executor, rebuilt from its history if not cached."""
        if live.executor is not None:
            self._cached.move_to_end(live.record.instance_id)
            return live.executor
        record = live.record
        executor = self._executors.build(record)
        if record.history_length:
            self._counters["replays"] += 1
            executor.process(self.load_history(record.instance_id), replaying=True)
        live.executor = executor
        self._cached[record.instance_id] = None
        return executor

    def drop_executor(self, live: LiveInstance) -> None:
        """Close and forget the instance's executor."""
        if live.executor is not None:
            live.executor.close()
            live.executor = None
            self._cached.pop(live.record.instance_id, None)

    def evict_executors(self) -> None:
        """Close the least recently used executors beyond the cache bound."""
        excess = len(self._cached) - self._max_cached
        while excess > 0 and self._cached:
            iid, _ = self._cached.popitem(last=False)
            live = self._live.get(iid)
            if live is not None and live.executor is not None:
                live.executor.close()
                live.executor = None
            excess -= 1

    def close_executors(self) -> None:
        """Close every executor (their generators ran ahead of the store, or we stop)."""
        for live in self._live.values():
            if live.executor is not None:
                live.executor.close()
                live.executor = None
        self._cached.clear()

    # -- recovery ---------------------------------------------------------------------------

    def recover(self, bad: list[tuple[str, bytes, BaseException]]) -> None:
        """Load the non-terminal instances from the store; rows it cannot read are
        skipped and listed in ``bad`` (db, key, error)."""
        self.status_counts = StatusCounts(self.store.get("meta", STATUS_COUNTS_KEY))
        # Only the ``live`` index is read: recovery time follows the unfinished instances,
        # not every instance the partition ever ran.
        for key, _ in self.store.scan("live"):
            value = self.store.get("instances", key)
            if value is None:
                continue
            try:
                record = codec.decode_record(InstanceRecord, value)
            except Exception as exc:
                bad.append(("instances", key, exc))
                continue
            if record.status.is_terminal:
                continue
            live = LiveInstance(record, stored_status=record.status)
            live.buffering = record.status in (Status.SUSPENDED, Status.PENDING) or (
                record.inbox_length > 0
            )
            self._live[record.instance_id] = live
            if record.status is Status.RUNNING and record.inbox_length > 0:
                self._ready.add(record.instance_id)
