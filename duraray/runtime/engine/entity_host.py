"""The entities of a partition: their records, messages, locks and operations.

``EntityHost`` owns the entity records cached in memory and the entity messages of the
current batch. The logic itself is in the pure ``duraray.entities`` package:
``scheduler.admit`` decides what runs now and what waits for a lock,
``executor.execute_batch`` runs operations with per-operation rollback. Here those
decisions become store writes and messages (through the outbox) and scheduled signals
(through the timers), inside the batch the host is handed.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta

from duraray import _limits
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.entities.executor import Operation, execute_batch
from duraray.entities.ids import EntityId
from duraray.entities.scheduler import (
    EntityMessage,
    EntityRecord,
    LockRequest,
    OperationMessage,
    UnlockMessage,
    admit,
    release,
)
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec, spans
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.clock import Clock
from duraray.runtime.engine.messages import (
    DeliverEvent,
    EntityDelivery,
    StartOrchestration,
    pack_message,
    unpack_message,
)
from duraray.runtime.engine.outbox import Outbox
from duraray.runtime.engine.records import TimerRow
from duraray.runtime.engine.store import PartitionStore
from duraray.runtime.engine.timers import Timers

__all__ = ["EntityHost", "entity_key", "pack_message", "unpack_message"]


def entity_key(entity_id: str) -> bytes:
    """``entities`` key: the ``@name@key`` string."""
    return entity_id.encode()


class EntityHost:
    """Entity state and messaging of one partition (see the module docstring)."""

    def __init__(
        self,
        *,
        store: PartitionStore,
        registry: Registry,
        config: HubConfig,
        outbox: Outbox,
        timers: Timers,
        clock: Clock,
        counters: dict[str, float],
    ) -> None:
        self._store = store
        self._registry = registry
        self._max_cached = config.max_cached_entities
        self._outbox = outbox
        self._timers = timers
        self._clock = clock
        self._counters = counters
        self._entities: dict[str, EntityRecord] = {}
        self._inbox: dict[str, list[EntityMessage]] = {}
        self._dirty: set[str] = set()
        self._gone: set[str] = set()  # deleted in this batch: dropped after its commit
        # Entity state, results and signal inputs obey the hub's max_payload_bytes, like
        # the payloads made by orchestrations.
        self._converter = codec.Converter(config.max_payload_bytes)

    # -- records ----------------------------------------------------------------------------

    def _entity(self, entity_id: str) -> EntityRecord:
        record = self._entities.pop(entity_id, None)
        if record is not None:
            self._entities[entity_id] = record  # most recently used last
        else:
            data = self._store.get("entities", entity_key(entity_id))
            record = EntityRecord(entity_id) if data is None else _decode_entity(data)
            self._entities[entity_id] = record
        return record

    def _peek_entity(self, entity_id: str) -> EntityRecord | None:
        record = self._entities.get(entity_id)
        if record is not None:
            return record if record.exists else None
        data = self._store.get("entities", entity_key(entity_id))
        if data is None:
            return None
        # A stored row without state, lock or queue (left for clean_entity_storage) is no
        # entity, as query_entities already treats it.
        record = _decode_entity(data)
        return record if record.exists else None

    def _save_entities(self, b: Batch) -> None:
        for entity_id in self._dirty:
            record = self._entities.get(entity_id)
            if record is None:
                continue
            if record.exists:
                b.wb.put("entities", entity_key(entity_id), _encode_entity(record))
                self._gone.discard(entity_id)
            else:
                # An entity without state, lock or waiting messages does not exist.
                b.wb.delete("entities", entity_key(entity_id))
                self._gone.add(entity_id)
        self._dirty = set()

    def trim_cache(self) -> None:
        """After the batch's commit: forget the entities it deleted, and the least
        recently used beyond the bound (read back from the store when next needed).

        Not before the commit: a later local round of the same batch would read the row
        as the store still holds it, without this batch's changes (a released lock would
        come back, an update would be lost).
        """
        for entity_id in self._gone:
            record = self._entities.get(entity_id)
            if record is not None and not record.exists:
                del self._entities[entity_id]
        self._gone = set()
        excess = len(self._entities) - self._max_cached
        if excess > 0:
            for entity_id in list(itertools.islice(self._entities, excess)):
                del self._entities[entity_id]

    # -- messages in ------------------------------------------------------------------------

    def send(
        self,
        b: Batch,
        entity_id: str,
        message: EntityMessage,
        signal_time: datetime | None = None,
    ) -> None:
        """Send ``message`` to an entity (on any partition), due at ``signal_time``."""
        self._outbox.send(b, EntityDelivery(entity_id, message, signal_time))

    def on_message(self, b: Batch, delivery: EntityDelivery) -> None:
        """An entity message arrived: queue it for this batch, or schedule it."""
        if delivery.at is not None and delivery.at > b.now:
            self._schedule_signal(b, delivery.entity_id, delivery.message, delivery.at)
            return
        self._inbox.setdefault(delivery.entity_id, []).append(delivery.message)

    def _schedule_signal(
        self, b: Batch, entity_id: str, message: EntityMessage, when: datetime
    ) -> None:
        # Random ids keep (due time, entity, id) keys unique without a persisted counter.
        row = TimerRow(
            "signal",
            entity_id,
            "",
            self._clock.random_bits(31),
            when,
            body=codec.encode(pack_message(message)),
        )
        self._timers.put(b, row)

    def fire_signal(self, row: TimerRow) -> None:
        """A scheduled signal is due: queue its operation for this batch."""
        assert row.body is not None
        message = unpack_message(codec.decode(row.body))
        self._inbox.setdefault(row.instance_id, []).append(message)

    # -- the entity step of a batch -----------------------------------------------------------

    def process(self, b: Batch) -> None:
        """Run what the queued messages admit, then save the changed entities."""
        inbox, self._inbox = self._inbox, {}
        for entity_id, messages in inbox.items():
            record = self._entity(entity_id)
            scheduled = admit(record, messages)
            for step in scheduled.lock_steps:
                self._lock_step(b, step)
            changed = scheduled.changed
            if scheduled.ready:
                changed = self._run_operations(b, record, scheduled.ready) or changed
            if changed:
                record.last_modified = b.now
                self._dirty.add(entity_id)
        self._save_entities(b)

    def _run_operations(
        self, b: Batch, record: EntityRecord, ready: list[OperationMessage]
    ) -> bool:
        entity_id = EntityId.from_stored(record.entity_id)
        impl = self._registry.entities.get(entity_id.name)
        traced = any(m.trace_context is not None for m in ready)
        # Where in the batch they start, for their spans (the batch's clock is read once).
        offset = self._clock.monotonic() - b.mono if traced else 0.0
        result = execute_batch(
            impl,
            entity_id,
            record.state,
            [Operation(m.operation, m.input, m) for m in ready],
            converter=self._converter,
            name_of=self._registry.name_of,
            new_instance_id=self._clock.new_id,
            now=b.now,
        )
        record.state = result.state
        self._counters["entity_operations"] = self._counters.get("entity_operations", 0) + len(
            ready
        )
        if traced:
            spans.entity_operations(b, entity_id, result.outcomes, offset)
        for outcome in result.outcomes:
            message: OperationMessage = outcome.operation.reply_to
            if message.caller_instance is not None:
                event: h.HistoryEvent
                if outcome.failure is None:
                    event = h.EntityOperationCompleted(
                        timestamp=b.now,
                        task_scheduled_id=message.caller_task or 0,
                        result=outcome.result,
                    )
                else:
                    event = h.EntityOperationFailed(
                        timestamp=b.now,
                        task_scheduled_id=message.caller_task or 0,
                        failure=outcome.failure,
                    )
                self._outbox.send(
                    b, DeliverEvent(message.caller_instance, event, message.caller_execution)
                )
            # What an operation sends joins the trace of whoever sent the operation.
            trace = message.trace_context
            for signal in outcome.signals:
                self.send(
                    b,
                    signal.entity_id,
                    OperationMessage(signal.operation, signal.input, trace_context=trace),
                    signal.signal_time,
                )
            for start in outcome.starts:
                self._outbox.send(
                    b, StartOrchestration(start.instance_id, start.name, start.input, trace=trace)
                )
        return result.state_changed or any(o.failure is None for o in result.outcomes)

    def _lock_step(self, b: Batch, request: LockRequest) -> None:
        if request.is_granted:
            granted = h.EntityLockGranted(
                timestamp=b.now,
                task_scheduled_id=request.task_id,
                critical_section_id=request.owner,
                lock_set=list(request.lock_set),
            )
            self._outbox.send(b, DeliverEvent(request.instance_id, granted, request.execution_id))
        else:
            self.send(b, request.target, request)

    def unlock_all(self, b: Batch, section_id: str, lock_set: list[str]) -> None:
        """Release the locks of a critical section."""
        for entity_id in lock_set:
            self.send(b, entity_id, UnlockMessage(section_id))

    def action(
        self,
        b: Batch,
        instance_id: str,
        execution_id: str,
        event: h.HistoryEvent,
        trace: dict[str, str] | None = None,
    ) -> bool:
        """Carry out an orchestration's entity action; False if it is not one. ``trace``:
        the carrier of the orchestration's span, handed to the operations it sends."""
        if isinstance(event, h.EntityOperationCalled):
            self.send(
                b,
                event.entity_id,
                OperationMessage(
                    event.operation,
                    event.input,
                    caller_instance=instance_id,
                    caller_execution=execution_id,
                    caller_task=event.event_id,
                    lock_owner=event.lock_owner,
                    trace_context=trace,
                ),
            )
        elif isinstance(event, h.EntityOperationSignaled):
            self.send(
                b,
                event.entity_id,
                OperationMessage(event.operation, event.input, trace_context=trace),
                event.signal_time,
            )
        elif isinstance(event, h.EntityLockRequested):
            request = LockRequest(
                owner=event.critical_section_id,
                instance_id=instance_id,
                execution_id=execution_id,
                task_id=event.event_id,
                lock_set=list(event.lock_set),
            )
            self.send(b, request.target, request)
        elif isinstance(event, h.EntityUnlockSent):
            self.unlock_all(b, event.critical_section_id, list(event.lock_set))
        else:
            return False
        return True

    def release_held_locks(self, b: Batch, history: list[h.HistoryEvent]) -> None:
        """Unlock what a history's critical sections still hold (terminate, failure)."""
        open_sections: dict[str, list[str]] = {}
        for event in history:
            if isinstance(event, h.EntityLockRequested):
                open_sections[event.critical_section_id] = list(event.lock_set)
            elif isinstance(event, h.EntityUnlockSent):
                open_sections.pop(event.critical_section_id, None)
        for section_id, lock_set in open_sections.items():
            self.unlock_all(b, section_id, lock_set)

    # -- client operations ----------------------------------------------------------------------

    def signal(
        self,
        b: Batch,
        *,
        entity_id: str,
        operation: str,
        input: bytes | None = None,
        signal_time: datetime | timedelta | None = None,
        trace: dict[str, str] | None = None,
    ) -> None:
        """Client ``signal_entity``: queue an operation, now or at ``signal_time``
        (``trace``: the carrier of the client's span, if traced)."""
        message = OperationMessage(operation, input, trace_context=trace)
        if signal_time is not None:  # a delay is from now, on this partition's clock
            signal_time = _limits.resolve_time(signal_time, b.now, "signal_time")
        if signal_time is not None and signal_time > b.now:
            self._schedule_signal(b, entity_id, message, signal_time)
        else:
            self._inbox.setdefault(entity_id, []).append(message)

    def get(self, *, entity_id: str, include_state: bool = True) -> EntityRecord | None:
        """Client ``get_entity``: a snapshot of the entity, or None if it does not exist."""
        record = self._peek_entity(entity_id)
        if record is None:
            return None
        return _snapshot(record, include_state)

    def query(
        self,
        *,
        prefix: str = "@",
        after: str | None = None,
        limit: int = 100,
        include_state: bool = True,
    ) -> list[EntityRecord]:
        """Client ``query_entities``: existing entities by id, after ``after``."""
        start = (after.encode() + b"\x00") if after else None
        out: list[EntityRecord] = []
        for key, value in self._store.scan("entities", prefix=prefix.encode(), start=start):
            record = self._entities.get(key.decode()) or _decode_entity(value)
            if record.exists:
                out.append(_snapshot(record, include_state))
                if len(out) >= limit:
                    break
        return out

    def clean(
        self, b: Batch, *, remove_empty: bool = True
    ) -> tuple[int, list[tuple[str, str, str]]]:
        """Remove empty entities; list held locks as (entity, holder instance, section)."""
        removed = 0
        locks: list[tuple[str, str, str]] = []
        for key, value in self._store.scan("entities"):
            entity_id = key.decode()
            record = self._entities.get(entity_id) or _decode_entity(value)
            if not record.exists and remove_empty:
                b.wb.delete("entities", key)
                self._entities.pop(entity_id, None)
                removed += 1
            elif record.lock_owner is not None and record.locked_by is not None:
                locks.append((entity_id, record.locked_by, record.lock_owner))
        return removed, locks

    def release_lock(self, b: Batch, *, entity_id: str, owner: str) -> bool:
        """Release a lock whose holder is no longer running (orphaned-lock cleanup)."""
        record = self._entity(entity_id)
        if record.lock_owner != owner:
            return False
        scheduled = release(record)
        for step in scheduled.lock_steps:
            self._lock_step(b, step)
        if scheduled.ready:
            self._run_operations(b, record, scheduled.ready)
        record.last_modified = b.now
        self._dirty.add(entity_id)
        return True


def _snapshot(record: EntityRecord, include_state: bool) -> EntityRecord:
    return replace(record, state=record.state if include_state else None, queue=list(record.queue))


def _encode_entity(record: EntityRecord) -> bytes:
    return codec.encode_record(replace(record, queue=[pack_message(m) for m in record.queue]))


def _decode_entity(data: bytes) -> EntityRecord:
    record = codec.decode_record(EntityRecord, data)
    record.queue = [unpack_message(m) for m in record.queue]
    return record
