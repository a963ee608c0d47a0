"""The orchestration history model: frozen, typed records of everything that happened.

An orchestration instance's history is an append-only list of these events; replaying it
through the executor rebuilds the orchestration's state. The class names are public:
``Client.get_orchestration_history`` returns these records.

Evolution rules (the event log outlives the code that wrote it):

- a field is only ever appended to a class, at the end, with a default; one appended
  after data was stored carries ``SPARSE`` metadata and defaults to None: the codec
  leaves it out while it is None, so a record without it keeps the bytes it was stored
  with (a trailing run of such fields only);
- a field's meaning never changes and a field is never removed or renamed;
- ``HistoryEvent`` (the base) gets no new fields, so positional encodings stay stable.

Payload fields (``input``, ``result``, ``output``) hold the msgpack-encoded bytes inside
the engine, so a payload is encoded once, at the call site, and never re-encoded; records
returned by the client carry the decoded values instead.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from duraray._errors import FailureDetails


class OrchestrationStatus(enum.Enum):
    """The runtime status of an orchestration instance."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"
    FAILED = "FAILED"
    TERMINATED = "TERMINATED"
    SUSPENDED = "SUSPENDED"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and TERMINATED: nothing will change the instance."""
        return self in _TERMINAL

    @property
    def is_running(self) -> bool:
        """True for PENDING, RUNNING and SUSPENDED: the instance may still make progress."""
        return self in _RUNNING


_TERMINAL = frozenset(
    {OrchestrationStatus.COMPLETED, OrchestrationStatus.FAILED, OrchestrationStatus.TERMINATED}
)
_RUNNING = frozenset(
    {OrchestrationStatus.PENDING, OrchestrationStatus.RUNNING, OrchestrationStatus.SUSPENDED}
)


#: Field metadata of a field appended after data was stored (see the evolution rules).
SPARSE: Mapping[str, bool] = MappingProxyType({"sparse": True})


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEvent:
    """Base of every history record: when the event was recorded (UTC)."""

    timestamp: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionStarted(HistoryEvent):
    """The first event of every execution (generation) of an instance."""

    name: str
    instance_id: str
    execution_id: str
    input: Any = None
    version: str | None = None
    tags: dict[str, str] | None = None
    parent_instance_id: str | None = None
    parent_execution_id: str | None = None
    parent_task_id: int | None = None
    scheduled_start_at: datetime | None = None
    #: the trace this execution is part of, when traced: a W3C ``traceparent`` naming the
    #: execution's own span (plus ``tracestate``, the parent span's id and the start); see
    #: duraray/runtime/tracing.py
    trace_context: dict[str, str] | None = field(default=None, metadata=SPARSE)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrchestratorStarted(HistoryEvent):
    """Opens an episode; its timestamp is the orchestration's ``current_utc_datetime``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskScheduled(HistoryEvent):
    """An activity was scheduled as task ``event_id``."""

    event_id: int
    name: str
    input: Any = None
    tags: dict[str, str] | None = None
    #: which attempt of a retried call this is (None: the first)
    attempt: int | None = field(default=None, metadata=SPARSE)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCompleted(HistoryEvent):
    """The activity scheduled as ``task_scheduled_id`` returned ``result``."""

    task_scheduled_id: int
    result: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(HistoryEvent):
    """The activity scheduled as ``task_scheduled_id`` raised."""

    task_scheduled_id: int
    failure: FailureDetails


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerCreated(HistoryEvent):
    """A durable timer ``event_id`` was created to fire at ``fire_at``.

    ``final_fire_at`` is the time the code asked for (``create_timer``): a timer longer
    than ``maximum_timer_interval`` runs as a chain of chunks, each a ``TimerCreated``
    whose ``fire_at`` is the chunk's end, all with the same ``final_fire_at``. Replay
    compares it with the time the code asks for now. None for a retry's back-off delay
    and in histories recorded before it existed (neither is compared).
    """

    event_id: int
    fire_at: datetime
    final_fire_at: datetime | None = field(default=None, metadata=SPARSE)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired(HistoryEvent):
    """The durable timer ``timer_id`` fired."""

    timer_id: int
    fire_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRaised(HistoryEvent):
    """An external event arrived (from a client or another orchestration)."""

    name: str
    input: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventSent(HistoryEvent):
    """This orchestration sent event ``name`` to ``instance_id`` (task ``event_id``)."""

    event_id: int
    instance_id: str
    name: str
    input: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubOrchestrationInstanceCreated(HistoryEvent):
    """A sub-orchestration ``instance_id`` was started as task ``event_id``."""

    event_id: int
    name: str
    instance_id: str
    input: Any = None
    version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubOrchestrationInstanceCompleted(HistoryEvent):
    """The sub-orchestration started as ``task_scheduled_id`` completed with ``result``."""

    task_scheduled_id: int
    result: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubOrchestrationInstanceFailed(HistoryEvent):
    """The sub-orchestration started as ``task_scheduled_id`` failed (or was terminated)."""

    task_scheduled_id: int
    failure: FailureDetails


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionSuspended(HistoryEvent):
    """The instance was suspended: new events wait in its inbox until it resumes."""

    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionResumed(HistoryEvent):
    """The instance was resumed."""

    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionTerminated(HistoryEvent):
    """The instance was terminated with ``output``."""

    output: Any = None
    recursive: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionRewound(HistoryEvent):
    """A failed instance was rewound: its failures were removed and it runs again."""

    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionCompleted(HistoryEvent):
    """The execution ended: COMPLETED with ``result`` or FAILED with ``failure``."""

    status: OrchestrationStatus
    result: Any = None
    failure: FailureDetails | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContinueAsNew(HistoryEvent):
    """The execution ended by continuing as new with ``input``."""

    input: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityOperationCalled(HistoryEvent):
    """This orchestration called ``operation`` on ``entity_id`` (task ``event_id``)."""

    event_id: int
    entity_id: str
    operation: str
    input: Any = None
    lock_owner: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityOperationSignaled(HistoryEvent):
    """This orchestration signalled ``operation`` on ``entity_id`` (one-way)."""

    event_id: int
    entity_id: str
    operation: str
    input: Any = None
    signal_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityOperationCompleted(HistoryEvent):
    """The entity call ``task_scheduled_id`` returned ``result``."""

    task_scheduled_id: int
    result: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityOperationFailed(HistoryEvent):
    """The entity call ``task_scheduled_id`` raised."""

    task_scheduled_id: int
    failure: FailureDetails


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityLockRequested(HistoryEvent):
    """This orchestration asked to lock ``lock_set`` (sorted) as critical section ``critical_section_id``."""

    event_id: int
    critical_section_id: str
    lock_set: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityLockGranted(HistoryEvent):
    """Every entity of the critical section's lock set is locked."""

    task_scheduled_id: int
    critical_section_id: str
    lock_set: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityUnlockSent(HistoryEvent):
    """The critical section released its locks."""

    event_id: int
    critical_section_id: str
    lock_set: list[str]


#: Every concrete event class by name: the codec's tag table. Order does not matter;
#: names are the stable identifiers written to disk.
EVENT_TYPES: dict[str, type[HistoryEvent]] = {
    cls.__name__: cls
    for cls in (
        ExecutionStarted,
        OrchestratorStarted,
        TaskScheduled,
        TaskCompleted,
        TaskFailed,
        TimerCreated,
        TimerFired,
        EventRaised,
        EventSent,
        SubOrchestrationInstanceCreated,
        SubOrchestrationInstanceCompleted,
        SubOrchestrationInstanceFailed,
        ExecutionSuspended,
        ExecutionResumed,
        ExecutionTerminated,
        ExecutionRewound,
        ExecutionCompleted,
        ContinueAsNew,
        EntityOperationCalled,
        EntityOperationSignaled,
        EntityOperationCompleted,
        EntityOperationFailed,
        EntityLockRequested,
        EntityLockGranted,
        EntityUnlockSent,
    )
}

#: The fields of event classes that carry encoded payloads.
PAYLOAD_FIELDS: frozenset[str] = frozenset({"input", "result", "output"})
