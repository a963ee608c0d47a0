"""Per-entity message scheduling and the critical-section (lock) protocol.

An entity receives operations (signals and calls), lock requests and unlocks, in the
order its partition applies them. While no orchestration holds its lock, operations run
in arrival order. A lock request makes the requesting critical section the owner; from
then on only operations sent from inside that critical section run, and everything else
waits in the entity's queue until the owner unlocks. Queued operations keep their order;
a queued lock request that already holds other entities may go before fresh lock
requests ahead of it (see ``_next``).

A critical section locks its entities one at a time in sorted order: the request travels
entity to entity (each grants it by forwarding it to the next), and the last one sends
the grant back to the orchestration. Two critical sections always acquire shared
entities in the same order, so they cannot deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from duraray.entities.ids import EntityId
from duraray.orchestrations.history import SPARSE


@dataclass(frozen=True, slots=True)
class OperationMessage:
    """An operation for an entity: a signal, or a call when ``caller_instance`` is set.

    ``lock_owner`` is the critical section the sender is inside, if any;
    ``trace_context`` the carrier of the sender's span when it is traced (the
    operation's span is its child), written only when set.
    """

    operation: str
    input: bytes | None = None
    caller_instance: str | None = None
    caller_execution: str | None = None
    caller_task: int | None = None
    lock_owner: str | None = None
    trace_context: dict[str, str] | None = field(default=None, metadata=SPARSE)


@dataclass(frozen=True, slots=True)
class LockRequest:
    """A critical section asking for ``lock_set[position]`` (and then the rest)."""

    owner: str
    instance_id: str
    execution_id: str
    task_id: int
    lock_set: list[str]
    position: int = 0
    #: times it was passed over at the head of a queue (see ``_next``)
    passed: int = 0

    @property
    def target(self) -> str:
        """The entity this request is for now."""
        return self.lock_set[self.position]

    @property
    def is_granted(self) -> bool:
        """True once every entity of the set is locked (the grant goes back)."""
        return self.position >= len(self.lock_set)


@dataclass(frozen=True, slots=True)
class UnlockMessage:
    """The critical section ``owner`` releases the entity."""

    owner: str


EntityMessage = OperationMessage | LockRequest | UnlockMessage


@dataclass(slots=True)
class EntityRecord:
    """One row of ``entities``: state, lock and the messages waiting for the lock."""

    entity_id: str
    state: bytes | None = None
    locked_by: str | None = None
    lock_owner: str | None = None
    queue: list[Any] = field(default_factory=list)
    last_modified: datetime | None = None

    @property
    def exists(self) -> bool:
        """An entity exists while it has state, holds a lock or has queued messages."""
        return self.state is not None or self.locked_by is not None or bool(self.queue)


@dataclass(slots=True)
class Scheduled:
    """What to do after admitting messages: run ``ready``, pass on ``lock_steps``."""

    ready: list[OperationMessage] = field(default_factory=list)
    #: requests advanced past this entity: forward to ``target``, or grant if granted
    lock_steps: list[LockRequest] = field(default_factory=list)
    changed: bool = False


def sorted_lock_set(entity_ids: Any) -> list[str]:
    """The lock set of a critical section: ids sorted and de-duplicated."""
    ids = [EntityId.of(e) for e in entity_ids]
    if not ids:
        raise ValueError("lock_entities needs at least one entity")
    return [str(e) for e in sorted(set(ids))]


def admit(record: EntityRecord, messages: list[EntityMessage]) -> Scheduled:
    """Admit ``messages`` in order; mutates ``record``'s lock and queue."""
    out = Scheduled()
    for message in messages:
        _admit(record, message, out)
    return out


def _admit(record: EntityRecord, message: EntityMessage, out: Scheduled) -> None:
    if isinstance(message, UnlockMessage):
        if record.lock_owner == message.owner:
            record.lock_owner = None
            record.locked_by = None
            out.changed = True
            _drain(record, out)
        return  # an unlock from a section that does not hold the lock is stale
    if record.lock_owner is None:
        if isinstance(message, LockRequest):
            _acquire(record, message, out)
        else:
            out.ready.append(message)
        return
    if isinstance(message, OperationMessage) and message.lock_owner == record.lock_owner:
        out.ready.append(message)
        return
    record.queue.append(message)
    out.changed = True


def _acquire(record: EntityRecord, request: LockRequest, out: Scheduled) -> None:
    record.lock_owner = request.owner
    record.locked_by = request.instance_id
    out.changed = True
    out.lock_steps.append(replace(request, position=request.position + 1, passed=0))


def _drain(record: EntityRecord, out: Scheduled) -> None:
    while record.queue and record.lock_owner is None:
        message = record.queue.pop(_next(record.queue))
        out.changed = True
        if isinstance(message, LockRequest):
            _acquire(record, message, out)
        elif isinstance(message, OperationMessage):
            out.ready.append(message)


#: How many further-along lock requests may go before the request at the head of a queue.
MAX_PASSES = 8


def _next(queue: list[Any]) -> int:
    """Index of the queued message to admit next when the lock frees.

    Among the lock requests at the head of the queue, one that already holds locks on
    other entities (position > 0) goes first: while it waits, those entities sit locked
    and idle, so serving it first shortens every convoy behind them (with 200 accounts
    and 2,000 concurrent transfers it doubles throughput). Only lock requests are passed
    over, each from another orchestration (sections do not nest), never an operation, so
    every sender's messages still run in the order it sent them. The head is passed over
    at most ``MAX_PASSES`` times, so no request waits forever.
    """
    head = queue[0]
    if not isinstance(head, LockRequest) or head.position > 0 or head.passed >= MAX_PASSES:
        return 0
    for index, message in enumerate(queue):
        if not isinstance(message, LockRequest):
            return 0
        if message.position > 0:
            queue[0] = replace(head, passed=head.passed + 1)
            return index
    return 0


def release(record: EntityRecord) -> Scheduled:
    """Force-release the lock (orphaned lock cleanup) and run what was waiting."""
    out = Scheduled()
    if record.lock_owner is not None:
        _admit(record, UnlockMessage(record.lock_owner), out)
    return out
