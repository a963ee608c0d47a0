"""The entity half of a partition: entity records, their messages, locks and operations.

Mixed into ``PartitionCore`` (it shares the batch: the write batch, the effects, the
outbox and the timers), kept apart so each half stays readable. The logic itself is in
the pure ``duraray.entities`` package: ``scheduler.admit`` decides what runs now and what
waits for a lock, ``executor.execute_batch`` runs operations with per-operation rollback.
Here those decisions become store writes and messages.
"""

from __future__ import annotations

import itertools
import random
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from duraray import _limits
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
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import ClientRequest, TimerRow
from duraray.runtime.engine.routing import partition_for

if TYPE_CHECKING:
    from duraray.runtime.engine.partition import PartitionCore

_TAGS: dict[type, str] = {OperationMessage: "op", LockRequest: "lock", UnlockMessage: "unlock"}
_CLASSES: dict[str, type] = {tag: cls for cls, tag in _TAGS.items()}


def pack_message(message: EntityMessage) -> list[Any]:
    """An entity message as a plain msgpack list (for messages, queues and timers)."""
    packed = [_TAGS[type(message)], *codec.pack_record(message)]
    if isinstance(message, LockRequest) and message.passed == 0:
        # Left out at its default (decoding fills it in): requests keep the shape older
        # versions of the store and of peer partitions read.
        packed.pop()
    return packed


def unpack_message(packed: list[Any]) -> EntityMessage:
    """The inverse of ``pack_message``."""
    cls = _CLASSES[packed[0]]
    return codec.unpack_record(cls, packed[1:])  # type: ignore[no-any-return]


def entity_key(entity_id: str) -> bytes:
    """``entities`` key: the ``@name@key`` string."""
    return entity_id.encode()


class EntityHost:
    """Entity state and messaging of one partition (mixed into PartitionCore)."""

    _entities: dict[str, EntityRecord]
    _entity_inbox: dict[str, list[EntityMessage]]
    _entity_dirty: set[str]
    _entity_converter: codec.Converter

    def _init_entities(self: PartitionCore) -> None:
        self._entities = {}
        self._entity_inbox = {}
        self._entity_dirty = set()
        # Entity state, results and signal inputs obey the hub's max_payload_bytes, like
        # the payloads made by orchestrations.
        self._entity_converter = codec.Converter(self.config.max_payload_bytes)

    # -- records ----------------------------------------------------------------------------

    def _entity(self: PartitionCore, entity_id: str) -> EntityRecord:
        record = self._entities.pop(entity_id, None)
        if record is not None:
            self._entities[entity_id] = record  # most recently used last
        else:
            data = self.store.get("entities", entity_key(entity_id))
            record = EntityRecord(entity_id) if data is None else _decode_entity(data)
            self._entities[entity_id] = record
        return record

    def _peek_entity(self: PartitionCore, entity_id: str) -> EntityRecord | None:
        record = self._entities.get(entity_id)
        if record is not None:
            return record if record.exists else None
        data = self.store.get("entities", entity_key(entity_id))
        if data is None:
            return None
        # A stored row without state, lock or queue (left for clean_entity_storage) is no
        # entity, as query_entities already treats it.
        record = _decode_entity(data)
        return record if record.exists else None

    def _save_entities(self: PartitionCore) -> None:
        for entity_id in self._entity_dirty:
            record = self._entities.get(entity_id)
            if record is None:
                continue
            if record.exists:
                self._wb.put("entities", entity_key(entity_id), _encode_entity(record))
            else:
                # An entity without state, lock or waiting messages does not exist.
                self._wb.delete("entities", entity_key(entity_id))
                del self._entities[entity_id]
        self._entity_dirty = set()
        # Every cached record is saved now: drop the least recently used beyond the bound
        # (they are read back from the store when next needed).
        excess = len(self._entities) - self.config.max_cached_entities
        if excess > 0:
            for entity_id in list(itertools.islice(self._entities, excess)):
                del self._entities[entity_id]

    # -- messages in ------------------------------------------------------------------------

    def _send_entity(
        self: PartitionCore,
        entity_id: str,
        message: EntityMessage,
        signal_time: datetime | None = None,
    ) -> None:
        body: dict[str, Any] = {"m": pack_message(message)}
        if signal_time is not None:
            body["at"] = codec.utc_micros(signal_time)
        self._send(partition_for(entity_id, self.partition_count), "entity", entity_id, body=body)

    def _on_entity_message(self: PartitionCore, entity_id: str, body: dict[str, Any]) -> None:
        message = unpack_message(body["m"])
        at = body.get("at")
        if at is not None and at > codec.utc_micros(self._now):
            self._schedule_signal(entity_id, message, codec.from_utc_micros(at))
            return
        self._entity_inbox.setdefault(entity_id, []).append(message)

    def _schedule_signal(
        self: PartitionCore, entity_id: str, message: EntityMessage, when: datetime
    ) -> None:
        # Random ids keep (due time, entity, id) keys unique without a persisted counter.
        row = TimerRow(
            "signal",
            entity_id,
            "",
            random.getrandbits(31),
            when,
            body=codec.encode(pack_message(message)),
        )
        self._put_timer(row)

    def _fire_signal(self: PartitionCore, row: TimerRow) -> None:
        assert row.body is not None
        message = unpack_message(codec.decode(row.body))
        self._entity_inbox.setdefault(row.instance_id, []).append(message)

    # -- the entity step of a batch -----------------------------------------------------------

    def _process_entities(self: PartitionCore) -> None:
        inbox, self._entity_inbox = self._entity_inbox, {}
        for entity_id, messages in inbox.items():
            record = self._entity(entity_id)
            scheduled = admit(record, messages)
            for step in scheduled.lock_steps:
                self._lock_step(step)
            changed = scheduled.changed
            if scheduled.ready:
                changed = self._run_operations(record, scheduled.ready) or changed
            if changed:
                record.last_modified = self._now
                self._entity_dirty.add(entity_id)
        self._save_entities()

    def _run_operations(
        self: PartitionCore, record: EntityRecord, ready: list[OperationMessage]
    ) -> bool:
        entity_id = EntityId.from_stored(record.entity_id)
        impl = self.registry.entities.get(entity_id.name)
        result = execute_batch(
            impl,
            entity_id,
            record.state,
            [Operation(m.operation, m.input, m) for m in ready],
            converter=self._entity_converter,
            name_of=self.registry.name_of,
            new_instance_id=lambda: uuid.uuid4().hex,
            now=self._now,
        )
        record.state = result.state
        self.counters["entity_operations"] = self.counters.get("entity_operations", 0) + len(ready)
        for outcome in result.outcomes:
            message: OperationMessage = outcome.operation.reply_to
            if message.caller_instance is not None:
                event: h.HistoryEvent
                if outcome.failure is None:
                    event = h.EntityOperationCompleted(
                        timestamp=self._now,
                        task_scheduled_id=message.caller_task or 0,
                        result=outcome.result,
                    )
                else:
                    event = h.EntityOperationFailed(
                        timestamp=self._now,
                        task_scheduled_id=message.caller_task or 0,
                        failure=outcome.failure,
                    )
                self._send_event(message.caller_instance, event, message.caller_execution)
            for signal in outcome.signals:
                self._send_entity(
                    signal.entity_id,
                    OperationMessage(signal.operation, signal.input),
                    signal.signal_time,
                )
            for start in outcome.starts:
                self._send(
                    partition_for(start.instance_id, self.partition_count),
                    "start",
                    start.instance_id,
                    body={"name": start.name, "input": start.input},
                )
        return result.state_changed or any(o.failure is None for o in result.outcomes)

    def _lock_step(self: PartitionCore, request: LockRequest) -> None:
        if request.is_granted:
            granted = h.EntityLockGranted(
                timestamp=self._now,
                task_scheduled_id=request.task_id,
                critical_section_id=request.owner,
                lock_set=list(request.lock_set),
            )
            self._send_event(request.instance_id, granted, request.execution_id)
        else:
            self._send_entity(request.target, request)

    def _unlock_all(self: PartitionCore, section_id: str, lock_set: list[str]) -> None:
        for entity_id in lock_set:
            self._send_entity(entity_id, UnlockMessage(section_id))

    def _entity_action(
        self: PartitionCore, instance_id: str, execution_id: str, event: h.HistoryEvent
    ) -> bool:
        """Carry out an orchestration's entity action; False if it is not one."""
        if isinstance(event, h.EntityOperationCalled):
            self._send_entity(
                event.entity_id,
                OperationMessage(
                    event.operation,
                    event.input,
                    caller_instance=instance_id,
                    caller_execution=execution_id,
                    caller_task=event.event_id,
                    lock_owner=event.lock_owner,
                ),
            )
        elif isinstance(event, h.EntityOperationSignaled):
            self._send_entity(
                event.entity_id, OperationMessage(event.operation, event.input), event.signal_time
            )
        elif isinstance(event, h.EntityLockRequested):
            request = LockRequest(
                owner=event.critical_section_id,
                instance_id=instance_id,
                execution_id=execution_id,
                task_id=event.event_id,
                lock_set=list(event.lock_set),
            )
            self._send_entity(request.target, request)
        elif isinstance(event, h.EntityUnlockSent):
            self._unlock_all(event.critical_section_id, list(event.lock_set))
        else:
            return False
        return True

    def _release_held_locks(self: PartitionCore, history: list[h.HistoryEvent]) -> None:
        """Unlock what a history's critical sections still hold (terminate)."""
        open_sections: dict[str, list[str]] = {}
        for event in history:
            if isinstance(event, h.EntityLockRequested):
                open_sections[event.critical_section_id] = list(event.lock_set)
            elif isinstance(event, h.EntityUnlockSent):
                open_sections.pop(event.critical_section_id, None)
        for section_id, lock_set in open_sections.items():
            self._unlock_all(section_id, lock_set)

    # -- client operations ----------------------------------------------------------------------

    def _op_signal_entity(
        self: PartitionCore,
        req: ClientRequest,
        *,
        entity_id: str,
        operation: str,
        input: bytes | None = None,
        signal_time: datetime | timedelta | None = None,
    ) -> None:
        message = OperationMessage(operation, input)
        if signal_time is not None:  # a delay is from now, on this partition's clock
            signal_time = _limits.resolve_time(signal_time, self._now, "signal_time")
        if signal_time is not None and signal_time > self._now:
            self._schedule_signal(entity_id, message, signal_time)
        else:
            self._entity_inbox.setdefault(entity_id, []).append(message)

    def _op_get_entity(
        self: PartitionCore, req: ClientRequest, *, entity_id: str, include_state: bool = True
    ) -> EntityRecord | None:
        record = self._peek_entity(entity_id)
        if record is None:
            return None
        return _snapshot(record, include_state)

    def _op_query_entities(
        self: PartitionCore,
        req: ClientRequest,
        *,
        prefix: str = "@",
        after: str | None = None,
        limit: int = 100,
        include_state: bool = True,
    ) -> list[EntityRecord]:
        start = (after.encode() + b"\x00") if after else None
        out: list[EntityRecord] = []
        for key, value in self.store.scan("entities", prefix=prefix.encode(), start=start):
            record = self._entities.get(key.decode()) or _decode_entity(value)
            if record.exists:
                out.append(_snapshot(record, include_state))
                if len(out) >= limit:
                    break
        return out

    def _op_clean_entities(
        self: PartitionCore, req: ClientRequest, *, remove_empty: bool = True
    ) -> tuple[int, list[tuple[str, str, str]]]:
        """Remove empty entities; list held locks as (entity, holder instance, section)."""
        removed = 0
        locks: list[tuple[str, str, str]] = []
        for key, value in self.store.scan("entities"):
            entity_id = key.decode()
            record = self._entities.get(entity_id) or _decode_entity(value)
            if not record.exists and remove_empty:
                self._wb.delete("entities", key)
                self._entities.pop(entity_id, None)
                removed += 1
            elif record.lock_owner is not None and record.locked_by is not None:
                locks.append((entity_id, record.locked_by, record.lock_owner))
        return removed, locks

    def _op_release_entity_lock(
        self: PartitionCore, req: ClientRequest, *, entity_id: str, owner: str
    ) -> bool:
        """Release a lock whose holder is no longer running (orphaned-lock cleanup)."""
        record = self._entity(entity_id)
        if record.lock_owner != owner:
            return False
        scheduled = release(record)
        for step in scheduled.lock_steps:
            self._lock_step(step)
        if scheduled.ready:
            self._run_operations(record, scheduled.ready)
        record.last_modified = self._now
        self._entity_dirty.add(entity_id)
        return True


def _snapshot(record: EntityRecord, include_state: bool) -> EntityRecord:
    return replace(record, state=record.state if include_state else None, queue=list(record.queue))


def _encode_entity(record: EntityRecord) -> bytes:
    return codec.encode_record(replace(record, queue=[pack_message(m) for m in record.queue]))


def _decode_entity(data: bytes) -> EntityRecord:
    record = codec.decode_record(EntityRecord, data)
    record.queue = [unpack_message(m) for m in record.queue]
    return record
