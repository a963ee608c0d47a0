"""The records a partition stores and exchanges, and the byte layout of its store keys.

Everything here is plain data: rows of the LMDB databases of DESIGN.md §4, the messages
partitions send each other, the work items a partition accepts and the effects a batch
releases. Records are encoded positionally by ``codec.pack_record`` and follow the same
evolution rule as history events: fields are only appended, with defaults.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from datetime import datetime
from operator import attrgetter
from typing import Any

from duraray._errors import FailureDetails
from duraray.orchestrations.history import SPARSE, OrchestrationStatus

#: Bumped when the on-disk layout changes; stored in ``meta``. 2 added the ``live`` index
#: (the ids of non-terminal instances), built once when a version-1 store is opened. 3
#: added the time index of stored client-request replies (``dedup_expiry_key``); replies
#: of an older store are indexed at the time it is first opened. 4 added the counters of
#: instances by status (``meta`` ``status_counts``), counted once when an older store opens.
FORMAT_VERSION = 4

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
SEP = b"\x00"


# -- keys ----------------------------------------------------------------------------------
# Big-endian integers keep byte order equal to numeric order, so range scans over keys
# serve "by time" and "by sequence" queries directly.


def u32(n: int) -> bytes:
    """A 4-byte big-endian key part."""
    return _U32.pack(n)


def u64(n: int) -> bytes:
    """An 8-byte big-endian key part."""
    return _U64.pack(n)


def read_u64(b: bytes, offset: int = 0) -> int:
    """Read an 8-byte big-endian integer at ``offset``."""
    return int(_U64.unpack_from(b, offset)[0])


def read_u32(b: bytes, offset: int = 0) -> int:
    """Read a 4-byte big-endian integer at ``offset``."""
    return int(_U32.unpack_from(b, offset)[0])


def instance_key(instance_id: str) -> bytes:
    """``instances`` key: the UTF-8 instance id."""
    return instance_id.encode()


def live_key(instance_id: str) -> bytes:
    """``live`` key: the id of an instance that is not terminal (recovery reads only these)."""
    return instance_id.encode()


def instance_prefix(instance_id: str) -> bytes:
    """Prefix of an instance's rows in ``history``, ``inbox`` and ``activities``."""
    return instance_id.encode() + SEP


def seq_key(instance_id: str, seq: int) -> bytes:
    """``history``/``inbox``/``activities`` key: instance id, NUL, 4-byte sequence."""
    return instance_id.encode() + SEP + _U32.pack(seq)


def created_key(created_micros: int, instance_id: str) -> bytes:
    """``by_created`` key: 8-byte creation time, then the instance id."""
    return _U64.pack(created_micros) + instance_id.encode()


def timer_key(due_micros: int, instance_id: str, timer_id: int) -> bytes:
    """``timers`` key: 8-byte due time, instance id, NUL, 4-byte timer id."""
    return _U64.pack(due_micros) + instance_id.encode() + SEP + _U32.pack(timer_id)


def outbox_key(destination: int, seq: int) -> bytes:
    """``outbox`` key: 4-byte destination partition, 8-byte message sequence."""
    return _U32.pack(destination) + _U64.pack(seq)


def dedup_partition_key(source: int) -> bytes:
    """``dedup`` key of the highest sequence applied from partition ``source``."""
    return b"p" + _U32.pack(source)


def dedup_request_key(request_id: str) -> bytes:
    """``dedup`` key of a client request's stored reply."""
    return b"r" + request_id.encode()


def dedup_expiry_key(stored_micros: int, request_id: str) -> bytes:
    """``dedup`` key indexing a stored reply by when it was stored (oldest first), so
    replies past the retention window are found without reading the others."""
    return b"t" + _U64.pack(stored_micros) + request_id.encode()


def dedup_expiry_bound(stored_micros: int) -> bytes:
    """The first ``dedup_expiry_key`` of replies stored at ``stored_micros`` or later."""
    return b"t" + _U64.pack(stored_micros)


def sent_seq_key(destination: int) -> bytes:
    """``dedup`` key of the highest sequence this partition gave a message to ``destination``.

    Kept apart from the outbox because acknowledged messages are deleted from it: a
    restarted sender must continue the sequence, or the receiver drops its new messages as
    duplicates.
    """
    return b"s" + _U32.pack(destination)


# -- rows ----------------------------------------------------------------------------------


@dataclass(slots=True)
class InstanceRecord:
    """One row of ``instances``: an orchestration instance's current state."""

    instance_id: str
    name: str
    status: OrchestrationStatus
    execution_id: str
    created_at: datetime
    last_updated_at: datetime
    input: bytes | None = None
    output: bytes | None = None
    custom_status: bytes | None = None
    failure: FailureDetails | None = None
    tags: dict[str, str] | None = None
    version: str | None = None
    parent_instance_id: str | None = None
    parent_execution_id: str | None = None
    parent_task_id: int | None = None
    completed_at: datetime | None = None
    scheduled_start_at: datetime | None = None
    history_length: int = 0
    inbox_length: int = 0
    #: critical sections of a rewound instance waiting to be granted again
    relock: list[str] | None = None
    #: the trace context of the current execution (its span's ids, parent and start),
    #: when traced (duraray/runtime/tracing.py); written only when set
    trace_context: dict[str, str] | None = field(default=None, metadata=SPARSE)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled as the constructor and its fields (listings carry thousands between
        # processes): a slots dataclass's default pickling is several times slower.
        return (InstanceRecord, _INSTANCE_FIELDS(self))


_INSTANCE_FIELDS = attrgetter(*(f.name for f in fields(InstanceRecord)))


@dataclass(frozen=True, slots=True)
class TimerRow:
    """One row of ``timers``.

    ``kind`` is "timer" (a TimerFired for an orchestration), "start" (a delayed start) or
    "signal" (a scheduled entity operation: ``instance_id`` is the entity id and ``body``
    the encoded message).
    """

    kind: str
    instance_id: str
    execution_id: str
    timer_id: int
    fire_at: datetime
    body: bytes | None = None
    #: when the timer was created, kept for its span when the instance is traced
    created_at: datetime | None = field(default=None, metadata=SPARSE)


@dataclass(frozen=True, slots=True)
class ActivityTask:
    """An activity to execute: a row of ``activities`` and the unit of dispatch."""

    instance_id: str
    execution_id: str
    task_id: int
    name: str
    input: bytes | None
    partition: int
    tags: dict[str, str] | None = None
    #: which attempt of a retried call (None: the first); written only when set
    attempt: int | None = field(default=None, metadata=SPARSE)
    #: the carrier of the execution's span (the activity's span is its child), when traced
    trace_context: dict[str, str] | None = field(default=None, metadata=SPARSE)


@dataclass(frozen=True, slots=True)
class ActivityResult:
    """What an activity worker returns: ``failure`` is None on success."""

    instance_id: str
    execution_id: str
    task_id: int
    result: bytes | None = None
    failure: FailureDetails | None = None
    #: seconds the activity ran (lets a partition learn which activities are cheap)
    duration: float = 0.0
    #: CPU seconds its thread used: far below ``duration`` for an activity that waits
    cpu: float = 0.0
    #: the activity's name (lets the dispatch plan learn its cost); "" from older workers
    name: str = ""
    #: its first run in that process: start-up costs included, not its typical cost
    cold: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """A message between partitions, delivered exactly once and in order per sender.

    ``kind`` is one of: "start" (create an orchestration: ``body`` holds the
    ExecutionStarted fields), "event" (apply ``event`` — an encoded history event — to
    ``instance_id`` if its execution matches), "terminate", "rewind".
    """

    seq: int
    source: int
    kind: str
    instance_id: str
    execution_id: str | None = None
    event: bytes | None = None
    body: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ParkedItem:
    """Work a partition set aside because applying it failed, on its own, twice.

    A partition applies the work of a batch that raised one item at a time; an item that
    fails alone again is poison (see ``Client.get_parked_items``). ``kind`` says what was
    set aside: ``"message"`` (an entity operation, an event, a sub-orchestration start...
    sent through a partition's outbox; whoever awaited it was told it failed), ``"signal"`` (a
    scheduled entity signal), ``"instance"`` (an orchestration that could not even be
    failed, quarantined), ``"row"`` (a stored row the partition could not read when it
    opened) or ``"request"`` (a client request, which was answered with
    ``PartitionFailureError``). ``target`` names the instance or entity it was for (or the
    row's database and key), ``error`` the exception in one line and ``detail`` its
    traceback, shortened. ``payload`` is the parked message as the engine encoded it (to
    inspect or replay by hand), None for other kinds.
    """

    kind: str
    target: str
    parked_at: datetime
    error: str
    detail: str = ""
    #: the partition that parked it
    partition: int = 0
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class BlockingReport:
    """An orchestrator episode that ran longer than ``blocking_episode_warning_s``.

    Orchestrator code runs on its partition's batch thread: while one episode (one run of
    an instance's code, its replay included) blocks, every instance of the partition
    waits. The partition's watchdog reports such an episode once, while it still runs,
    and keeps the latest report of each instance in memory (see
    ``Client.get_blocking_report``). ``seconds`` is how long the episode had run when it
    was reported (at ``reported_at``, the partition's clock), ``stack`` the code's stack
    then (innermost call last; duraray's own frames left out) and ``finished_after`` the
    episode's whole run time once it ended (None while it still runs, or if the partition
    was rebuilt meanwhile).
    """

    instance_id: str
    name: str
    partition: int
    reported_at: datetime
    seconds: float
    stack: str
    finished_after: float | None = None


# -- work in, effects out ------------------------------------------------------------------


@dataclass(slots=True)
class ClientRequest:
    """A client operation; ``reply_to`` is the shell's handle for the answer."""

    op: str
    args: dict[str, Any]
    reply_to: Any = None
    request_id: str | None = None


@dataclass(slots=True)
class Effects:
    """What one committed batch releases, in order: replies, messages, activities."""

    replies: list[tuple[Any, Any]] = field(default_factory=list)
    messages: dict[int, list[Message]] = field(default_factory=dict)
    acks: dict[int, int] = field(default_factory=dict)
    activities: list[ActivityTask] = field(default_factory=list)
    #: how the activities go out, as the dispatch plan decided (``dispatch.Dispatch``);
    #: a host that runs every activity alike (the in-process runtime) may use ``activities``
    dispatches: list[Any] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.replies or self.messages or self.acks or self.activities or self.dispatches
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """A failed client request's answer: the shell raises ``error`` at the caller."""

    error: BaseException


class ReuseIdPolicy:
    """What ``schedule_new_orchestration`` does when the instance id already exists.

    - ``ERROR_IF_RUNNING`` (default): replace a terminal instance, reject a running one;
    - ``ERROR``: reject any existing instance;
    - ``IGNORE_IF_RUNNING``: keep a running instance and return its id; replace a terminal one;
    - ``TERMINATE_IF_RUNNING``: terminate a running instance and start anew.
    """

    ERROR_IF_RUNNING = "error_if_running"
    ERROR = "error"
    IGNORE_IF_RUNNING = "ignore_if_running"
    TERMINATE_IF_RUNNING = "terminate_if_running"
    ALL = frozenset({ERROR_IF_RUNNING, ERROR, IGNORE_IF_RUNNING, TERMINATE_IF_RUNNING})
