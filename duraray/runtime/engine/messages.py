"""What partitions say to each other, as typed records, and their stored form.

Inside the core a partition message is one of five records (``PartitionMessage``) that
the core dispatches with ``match``. On the wire and in the ``outbox`` it is a
``records.Message``: a sequence number, the sender, a kind string, the target id and a
msgpack body, the form stores written by earlier versions hold. ``to_wire`` and
``from_wire`` convert between the two; the body keys ("m", "at", ...) appear nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from duraray.entities.scheduler import (
    EntityMessage,
    LockRequest,
    OperationMessage,
    UnlockMessage,
)
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import Message

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
    message: EntityMessage = codec.unpack_record(cls, packed[1:])
    return message


@dataclass(frozen=True, slots=True)
class ParentRef:
    """The task of a parent orchestration that a child reports to."""

    instance_id: str
    execution_id: str
    task_id: int


@dataclass(frozen=True, slots=True)
class StartOrchestration:
    """Create an orchestration: a sub-orchestration (``parent`` set) or one an entity
    operation starts (no parent: a running instance with that id is kept). ``trace``:
    the carrier of the starting span when traced (the child joins its trace)."""

    instance_id: str
    name: str
    input: bytes | None = None
    version: str | None = None
    parent: ParentRef | None = None
    trace: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DeliverEvent:
    """Apply ``event`` to an instance; dropped unless ``execution_id`` (when set) is its
    current execution."""

    instance_id: str
    event: h.HistoryEvent
    execution_id: str | None = None


@dataclass(frozen=True, slots=True)
class TerminateInstance:
    """Terminate an instance (a parent's recursive termination)."""

    instance_id: str
    output: bytes | None = None
    recursive: bool = True


@dataclass(frozen=True, slots=True)
class RewindInstance:
    """Rewind a failed instance; with ``parent``, a rewound parent asks a child for its
    outcome (rewind it if it failed, else report again)."""

    instance_id: str
    reason: str | None = None
    parent: ParentRef | None = None


@dataclass(frozen=True, slots=True)
class EntityDelivery:
    """An entity message: an operation, a lock request or an unlock, due at ``at`` (a
    scheduled signal) or now."""

    entity_id: str
    message: EntityMessage
    at: datetime | None = None


#: The kind of the placeholder a sender resends for an outbox row it cannot read: no
#: partition applies it, so the receiver's sequence moves on past it.
UNREADABLE_KIND = "unreadable"


class UnknownMessageKind(ValueError):
    """A stored or received message of a kind this code does not know (a newer peer)."""


PartitionMessage = (
    StartOrchestration | DeliverEvent | TerminateInstance | RewindInstance | EntityDelivery
)


def target_of(payload: PartitionMessage) -> str:
    """The instance or entity id the message is for (it routes to that id's partition)."""
    if isinstance(payload, EntityDelivery):
        return payload.entity_id
    return payload.instance_id


def _parent(packed: Any) -> ParentRef | None:
    if packed is None:
        return None
    instance_id, execution_id, task_id = packed
    return ParentRef(instance_id, execution_id, task_id)


def to_wire(payload: PartitionMessage, seq: int, source: int) -> Message:
    """The stored and sent form of ``payload`` (the layout stores already hold)."""
    body: dict[str, Any] | None
    match payload:
        case StartOrchestration(iid, name, input, version, parent, trace):
            body = {"name": name, "input": input}
            if parent is not None:
                body.update(
                    version=version,
                    parent_instance_id=parent.instance_id,
                    parent_execution_id=parent.execution_id,
                    parent_task_id=parent.task_id,
                )
            if trace is not None:  # left out untraced: stored messages keep their shape
                body["trace"] = trace
            return Message(seq, source, "start", iid, body=body)
        case DeliverEvent(iid, event, execution_id):
            encoded = codec.encode_event(event)
            return Message(seq, source, "event", iid, execution_id=execution_id, event=encoded)
        case TerminateInstance(iid, output, recursive):
            body = {"output": output, "recursive": recursive}
            return Message(seq, source, "terminate", iid, body=body)
        case RewindInstance(iid, reason, parent):
            body = {"reason": reason}
            if parent is not None:
                body["parent"] = [parent.instance_id, parent.execution_id, parent.task_id]
            return Message(seq, source, "rewind", iid, body=body)
        case EntityDelivery(entity_id, message, at):
            body = {"m": pack_message(message)}
            if at is not None:
                body["at"] = codec.utc_micros(at)
            return Message(seq, source, "entity", entity_id, body=body)
    raise TypeError(f"not a partition message: {payload!r}")  # pragma: no cover


def from_wire(msg: Message) -> PartitionMessage:
    """The typed form of a received or stored message; ``UnknownMessageKind`` for a
    kind this code does not know."""
    body = msg.body or {}
    iid = msg.instance_id
    match msg.kind:
        case "start":
            parent_id = body.get("parent_instance_id")
            parent = (
                None
                if parent_id is None
                else ParentRef(parent_id, body["parent_execution_id"], body["parent_task_id"])
            )
            trace = body.get("trace")
            return StartOrchestration(
                iid,
                body["name"],
                body.get("input"),
                body.get("version"),
                parent,
                trace if isinstance(trace, dict) else None,
            )
        case "event":
            if msg.event is None:
                raise ValueError("an event message without its event")
            return DeliverEvent(iid, codec.decode_event(msg.event), msg.execution_id)
        case "terminate":
            return TerminateInstance(iid, body.get("output"), bool(body.get("recursive", True)))
        case "rewind":
            return RewindInstance(iid, body.get("reason"), _parent(body.get("parent")))
        case "entity":
            at = body.get("at")
            when = None if at is None else codec.from_utc_micros(at)
            return EntityDelivery(iid, unpack_message(body["m"]), when)
    raise UnknownMessageKind(f"unknown partition message kind {msg.kind!r}")
