"""No single item can crash-loop a partition: isolation of a failed batch, and parked items.

When applying a batch raises (a bug, a value no check foresaw), nothing of the batch was
committed but the core's memory ran ahead of its store. Instead of dying (a Ray restart
would apply the same items again, and fail again), the shell calls
``PartitionCore.recover_from_failure``: a new core is rebuilt from the store, in process,
and applies the failed batch's work one unit per batch (``Isolation``): each instance
made runnable, each due timer, each client request, each message and each activity
result alone. A unit that fails alone once more is retried once (a transient fault, say
of the disk, passes); a unit that fails alone twice is poison, and its own batch deals
with it:

- a client request is answered with ``PartitionFailureError``; nothing of it is stored;
- orchestration work (an activity result, a due timer, a runnable instance, an event to
  an instance) fails its instance with the exception, like a failing orchestration;
- a message is parked: stored in ``parked`` with the error, counted as applied for the
  sender's (source, sequence) dedup (else every later message from that sender would wait
  behind it), and whoever awaits its effect is told: the calling orchestration's entity
  call, lock or sub-orchestration task fails;
- a scheduled entity signal that fails is parked the same way.

Should dealing with the poison fail as well, the instance is quarantined (taken out of the
live set, its record marked failed, parked); should that fail, the unit is dropped with a
log line. Rows that recovery cannot read are skipped and parked. ``ParkedItems`` lists what
was parked, for operators (``Client.get_parked_items``, ``GET /api/parked``,
``duraray parked``).
"""

from __future__ import annotations

import hashlib
import traceback
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from duraray._errors import FailureDetails, PartitionFailureError, error_type_name
from duraray.entities.scheduler import LockRequest, OperationMessage
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.instances import InstanceTable
from duraray.runtime.engine.intake import IntakeItem, Messages, Request, Results
from duraray.runtime.engine.lifecycle import Lifecycle
from duraray.runtime.engine.messages import (
    DeliverEvent,
    EntityDelivery,
    ParentRef,
    RewindInstance,
    StartOrchestration,
    from_wire,
)
from duraray.runtime.engine.outbox import Outbox
from duraray.runtime.engine.records import Message, Reply
from duraray.runtime.engine.store import PartitionStore
from duraray.runtime.engine.timers import Timers

#: Times a unit is applied alone before it counts as poison (1 retry: a transient fault
#: of the disk or of a dependency must not fail an instance).
POISON_ATTEMPTS = 2
#: Most characters of an error's traceback kept with a parked item.
MAX_DETAIL_CHARS = 4000
#: Units found poison one after another, with no unit applied in between, before the
#: failure counts as the partition's own (a broken store, a bug hitting everything): the
#: shell then restarts it rather than fail every instance one by one.
MAX_POISON_IN_A_ROW = 3

log = structlog.get_logger("duraray.partition")


@dataclass(frozen=True, slots=True)
class ReadyUnit:
    """Drain one instance's inbox into an episode."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class TimerUnit:
    """Fire one due timer."""

    key: bytes


Unit = IntakeItem | ReadyUnit | TimerUnit


def split_units(items: list[IntakeItem]) -> list[Unit]:
    """``items`` as units of one message or one activity result each."""
    units: list[Unit] = []
    for item in items:
        if isinstance(item, Messages):
            units.extend(Messages(item.source, [msg]) for msg in item.messages)
        elif isinstance(item, Results):
            units.extend(Results([result]) for result in item.results)
        else:
            units.append(item)
    return units


def failure_of(exc: BaseException, where: str) -> FailureDetails:
    """The failure an instance or a caller gets for an exception inside the partition."""
    return FailureDetails(
        message=f"{where} failed inside the partition: {type(exc).__name__}: {exc}",
        error_type=error_type_name(type(exc)),
        stack_trace="".join(traceback.format_exception(exc))[-MAX_DETAIL_CHARS:],
        non_retriable=True,
    )


@dataclass(slots=True)
class Isolation:
    """The units a rebuilt core applies one per batch, and the poison it must deal with."""

    queue: deque[Unit] = field(default_factory=deque)
    #: the unit the running batch applies (None outside isolation)
    current: Unit | None = None
    #: failed runs of ``current`` alone so far
    attempts: int = 0
    #: a unit that failed alone POISON_ATTEMPTS times, with its error, and how many
    #: times dealing with it failed too (0: not yet tried)
    poison: tuple[Unit, BaseException, int] | None = None
    #: units found poison since a unit was last applied
    poison_in_a_row: int = 0

    def applied(self) -> None:
        """A batch committed: the poison it dealt with, or the work it applied (a unit,
        or a whole batch outside isolation), is done."""
        if self.poison is not None:
            self.poison = None  # dealing with poison is no sign of health
        else:
            self.poison_in_a_row = 0
        self.current = None
        self.attempts = 0

    def after_failure(self, error: Exception) -> Isolation:
        """What the rebuilt core isolates after a batch of this one raised ``error``:
        the same unit again (retry), that unit as poison, one more try at dealing with
        the poison, or (outside isolation) nothing yet: the caller fills the queue.
        Raises ``error`` when units keep turning out poison one after another: that is
        no bad item but the partition's own failure."""
        if self.poison is not None:
            unit, first, tries = self.poison
            return Isolation(
                self.queue, poison=(unit, first, tries + 1), poison_in_a_row=self.poison_in_a_row
            )
        if self.current is None:
            return Isolation(poison_in_a_row=self.poison_in_a_row)
        attempts = self.attempts + 1
        if attempts < POISON_ATTEMPTS:
            return Isolation(
                deque([self.current, *self.queue]),
                attempts=attempts,
                poison_in_a_row=self.poison_in_a_row,
            )
        if self.poison_in_a_row + 1 >= MAX_POISON_IN_A_ROW:
            raise error
        return Isolation(
            self.queue, poison=(self.current, error, 0), poison_in_a_row=self.poison_in_a_row + 1
        )

    @property
    def active(self) -> bool:
        """True while units or poison wait: the core runs one unit per batch."""
        return bool(self.queue) or self.poison is not None


@dataclass(frozen=True, slots=True)
class ParkedItem:
    """Something the partition set aside because applying it failed."""

    #: "message", "signal", "instance", "row" (unreadable at recovery) or "request"
    kind: str
    #: the instance or entity it was for, or the row's database and key
    target: str
    #: when it was parked
    parked_at: datetime
    #: the error, one line
    error: str
    #: the traceback, shortened
    detail: str = ""
    #: the partition it was parked in
    partition: int = 0
    #: the parked message itself, encoded (to inspect or replay by hand), if any
    payload: bytes | None = None


class ParkedItems:
    """The ``parked`` rows of one partition: written in the batch that parks, counted."""

    def __init__(self, store: PartitionStore, partition: int) -> None:
        self._store = store
        self._partition = partition
        self.count = store.count("parked")

    def park(
        self,
        b: Batch,
        kind: str,
        target: str,
        exc: BaseException | str,
        *,
        payload: bytes | None = None,
        key: str | None = None,
    ) -> None:
        """Store a parked item; ``key`` (else kind and target) makes parking it twice
        one row."""
        if isinstance(exc, BaseException):
            error = f"{type(exc).__name__}: {exc}"
            detail = "".join(traceback.format_exception(exc))[-MAX_DETAIL_CHARS:]
        else:
            error, detail = exc, ""
        item = ParkedItem(
            kind, target, b.now, error[:MAX_DETAIL_CHARS], detail, self._partition, payload
        )
        row_key = _parked_key(key or f"{kind}:{target}")
        if self._store.get("parked", row_key) is None:
            self.count += 1
        b.wb.put("parked", row_key, codec.encode_record(item))

    def list(self, after: bytes | None = None, limit: int = 100) -> list[tuple[bytes, ParkedItem]]:
        """Parked items in key order after ``after``, with their keys (continuation)."""
        start = after + b"\x00" if after else None
        rows = self._store.scan("parked", start=start, limit=limit)
        out: list[tuple[bytes, ParkedItem]] = []
        for key, value in rows:
            try:
                out.append((key, codec.decode_record(ParkedItem, value)))
            except Exception:  # a parked row must never stop the listing
                out.append((key, ParkedItem("row", "parked", _EPOCH, "unreadable parked row")))
        return out


_EPOCH = codec.from_utc_micros(0)


def _parked_key(name: str) -> bytes:
    # Bounded below LMDB's key limit whatever the target's length: long names are cut
    # and kept unique by a hash of the whole.
    raw = name.encode("utf-8", "replace")
    if len(raw) <= 200:
        return raw
    return raw[:160] + b"#" + hashlib.blake2b(raw, digest_size=12).hexdigest().encode()


def row_target(db: str, key: bytes) -> str:
    """How a stored row is named in a parked item."""
    return f"{db}/{key[:64]!r}"


class PoisonHandler:
    """Deals with a unit that failed alone (see the module docstring)."""

    def __init__(
        self,
        *,
        table: InstanceTable,
        lifecycle: Lifecycle,
        outbox: Outbox,
        timers: Timers,
        parked: ParkedItems,
        counters: dict[str, float],
    ) -> None:
        self._table = table
        self._lifecycle = lifecycle
        self._outbox = outbox
        self._timers = timers
        self._parked = parked
        self._counters = counters

    def deal(self, b: Batch, unit: Unit, exc: BaseException, tries: int) -> None:
        """Answer, fail or park ``unit``; ``tries`` is how often this already failed
        (1: fall back to the fewest writes, 2 or more: drop it, log only)."""
        if tries >= 2:
            log.error("poison item dropped: dealing with it failed", unit=_describe(unit))
            return
        minimal = tries == 1
        if not minimal:
            self._counters["poison_items"] = self._counters.get("poison_items", 0) + 1
        log.error(
            "an item failed alone inside the partition; it is dealt with, the partition goes on",
            unit=_describe(unit),
            error=f"{type(exc).__name__}: {exc}",
        )
        match unit:
            case Request(req):
                error = PartitionFailureError(
                    f"operation {req.op!r} failed inside the partition: "
                    f"{type(exc).__name__}: {exc}; nothing of it was stored"
                )
                b.fx.replies.append((req.reply_to, Reply(error)))
                if not minimal:
                    target = str(req.args.get("instance_id") or req.args.get("entity_id") or "")
                    self._parked.park(b, "request", f"{req.op} {target}".strip(), exc)
            case Messages(source, [msg]):
                self._park_message(b, source, msg, exc, minimal)
            case Results([result]):
                self._fail_instance(b, result.instance_id, exc, minimal)
            case ReadyUnit(instance_id):
                self._fail_instance(b, instance_id, exc, minimal)
            case TimerUnit(key):
                row = self._timers.take(b, key)
                if row is None:
                    return
                if row.kind == "signal":
                    self._parked.park(b, "signal", row.instance_id, exc, key=f"signal:{key.hex()}")
                else:
                    self._fail_instance(b, row.instance_id, exc, minimal)
            case _:  # an ack or a resend request: nothing awaits it
                return

    def _fail_instance(self, b: Batch, instance_id: str, exc: BaseException, minimal: bool) -> None:
        live = self._table.get(instance_id)
        if live is None:
            return
        failure = failure_of(exc, "work for this orchestration")
        if minimal:
            self._lifecycle.quarantine(b, live, failure)
            self._parked.park(b, "instance", instance_id, exc)
        else:
            self._lifecycle.fail(b, live, failure)

    def _park_message(
        self, b: Batch, source: int, msg: Message, exc: BaseException, minimal: bool
    ) -> None:
        # Counted as applied first: whatever else fails, the sender's later messages
        # no longer wait behind this one.
        self._outbox.skip(b, source, msg.seq)
        if minimal:
            return
        self._parked.park(
            b,
            "message",
            msg.instance_id,
            exc,
            payload=_encoded(msg),
            key=f"message:{source}:{msg.seq}",
        )
        try:
            payload = from_wire(msg)
        except Exception:
            return  # unreadable: nobody can be told
        failure = failure_of(exc, "a message")
        notice: DeliverEvent | None = None
        event: h.HistoryEvent
        match payload:
            case EntityDelivery(_, OperationMessage() as op) if op.caller_instance is not None:
                event = h.EntityOperationFailed(
                    timestamp=b.now, task_scheduled_id=op.caller_task or 0, failure=failure
                )
                notice = DeliverEvent(op.caller_instance, event, op.caller_execution)
            case EntityDelivery(_, LockRequest() as lock):
                # The lock task fails: the orchestration sees the error where it locks.
                event = h.EntityOperationFailed(
                    timestamp=b.now, task_scheduled_id=lock.task_id, failure=failure
                )
                notice = DeliverEvent(lock.instance_id, event, lock.execution_id)
            case (
                StartOrchestration(parent=ParentRef() as parent)
                | RewindInstance(parent=ParentRef() as parent)
            ):
                event = h.SubOrchestrationInstanceFailed(
                    timestamp=b.now, task_scheduled_id=parent.task_id, failure=failure
                )
                notice = DeliverEvent(parent.instance_id, event, parent.execution_id)
            case DeliverEvent(instance_id, _, _):
                self._fail_instance(b, instance_id, exc, minimal=False)
        if notice is not None:
            self._outbox.send(b, notice)


def _encoded(msg: Message) -> bytes | None:
    try:
        return codec.encode_record(msg)
    except Exception:
        return None


def _describe(unit: Unit) -> str:
    match unit:
        case Request(req):
            return f"request {req.op}"
        case Messages(source, messages):
            return f"message {[m.kind for m in messages]} from p{source}"
        case Results(results):
            return f"activity result for {[res.instance_id for res in results]}"
        case ReadyUnit(instance_id):
            return f"runnable instance {instance_id!r}"
        case TimerUnit(key):
            return f"timer {key.hex()}"
    return type(unit).__name__
