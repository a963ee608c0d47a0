"""One bad item does not take its partition down: isolation of a failed batch, and parked items.

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

A read that raises changed nothing and is answered in place, with no rebuild. Should
dealing with the poison fail as well, an instance is quarantined (its record marked
failed, its parent told, taken out of the live set, parked) and a message only counted as
applied; should that fail too, the unit is dropped with a log line (a request is still
answered). Rows that recovery cannot read are skipped and parked (an unreadable outbox row
goes out as a placeholder, so its receiver's sequence moves on). Several distinct poison
targets with no real work applied in between, or batches failing with no work to blame,
are no bad item but the partition's own failure: ``recover_from_failure`` raises, and the
shell gives up on the core as before (a Ray actor restarts; the in-process engine stops).
``ParkedItems`` lists what was parked, for operators (``Client.get_parked_items``,
``GET /api/parked``, ``duraray parked``).
"""

from __future__ import annotations

import hashlib
import traceback
from collections import deque
from dataclasses import dataclass, field

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
from duraray.runtime.engine.records import Message, ParkedItem, Reply
from duraray.runtime.engine.store import PartitionStore
from duraray.runtime.engine.timers import Timers

#: Times a unit is applied alone before it counts as poison (1 retry: a transient fault
#: of the disk or of a dependency must not fail an instance).
POISON_ATTEMPTS = 2
#: Most characters of an error's traceback kept with a parked item.
MAX_DETAIL_CHARS = 4000
#: Instances, entities or requests found poison with no real work applied in between,
#: before the failure counts as the partition's own (a broken store, a bug hitting
#: everything): ``recover_from_failure`` raises it again and the shell gives up on the
#: core (a Ray partition actor restarts; the in-process engine stops) rather than fail
#: every instance one by one. Several poison items for one target count once.
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


def target_of_unit(unit: Unit) -> str:
    """What a unit is for: an instance, an entity, a request's target, or a timer."""
    match unit:
        case Request(req):
            return str(req.args.get("instance_id") or req.args.get("entity_id") or req.op)
        case Messages(_, [msg, *_]):
            return msg.instance_id
        case Results([result, *_]):
            return result.instance_id
        case ReadyUnit(instance_id):
            return instance_id
        case TimerUnit(key):
            return key.hex()
    return type(unit).__name__


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


def _trace(exc: BaseException) -> str:
    """The traceback of ``exc``, its last MAX_DETAIL_CHARS characters."""
    return "".join(traceback.format_exception(exc))[-MAX_DETAIL_CHARS:]


def failure_of(exc: BaseException, where: str) -> FailureDetails:
    """The failure an instance or a caller gets for an exception inside the partition."""
    return FailureDetails(
        message=f"{where} failed inside the partition: {type(exc).__name__}: {exc}",
        error_type=error_type_name(type(exc)),
        stack_trace=_trace(exc),
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
    #: what the units found poison since real work was last applied were for
    poison_targets: set[str] = field(default_factory=set)
    #: batches that failed with no unit to blame since real work was last applied
    failures_without_progress: int = 0

    def applied(self, progress: bool) -> None:
        """A batch committed: the poison it dealt with, or the unit it applied, is done.
        ``progress``: it applied real work (not only poison, acks or resend requests),
        a sign the partition itself is healthy."""
        if progress:
            self.poison_targets = set()
            self.failures_without_progress = 0
        self.poison = None
        self.current = None
        self.attempts = 0

    def after_failure(self, error: Exception) -> Isolation:
        """What the rebuilt core isolates after a batch of this one raised ``error``:
        the same unit again (retry), that unit as poison, one more try at dealing with
        the poison, or (outside isolation) nothing yet: the caller fills the queue.
        Raises ``error`` when units keep turning out poison one after another: that is
        no bad item but the partition's own failure."""
        targets = set(self.poison_targets)
        failures = self.failures_without_progress
        if self.poison is not None:
            unit, first, tries = self.poison
            return Isolation(self.queue, None, 0, (unit, first, tries + 1), targets, failures)
        if self.current is None:
            # A whole batch failed: the caller isolates its work, and counts the failure
            # as the partition's own when there was no work to blame.
            return Isolation(poison_targets=targets, failures_without_progress=failures)
        attempts = self.attempts + 1
        if attempts < POISON_ATTEMPTS:
            queue = deque([self.current, *self.queue])
            return Isolation(queue, None, attempts, None, targets, failures)
        targets.add(target_of_unit(self.current))
        if len(targets) >= MAX_POISON_IN_A_ROW:
            raise error
        return Isolation(self.queue, None, 0, (self.current, error, 0), targets, failures)

    @property
    def active(self) -> bool:
        """True while units or poison wait: the core runs one unit per batch."""
        return bool(self.queue) or self.poison is not None


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
            detail = _trace(exc)
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
                unreadable = "unreadable parked row"
                out.append(
                    (key, ParkedItem("row", "parked", _EPOCH, unreadable, "", self._partition))
                )
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
        (1: fall back to the fewest writes; 2 or more: drop it with a log line, though a
        request is still answered)."""
        if isinstance(unit, Request):  # answered whatever else fails: it needs no commit
            req = unit.request
            error = PartitionFailureError(
                f"operation {req.op!r} failed inside the partition: "
                f"{type(exc).__name__}: {exc}; nothing of it was stored"
            )
            b.fx.replies.append((req.reply_to, Reply(error)))
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
                if not minimal:
                    target = str(req.args.get("instance_id") or req.args.get("entity_id") or "")
                    self._parked.park(b, "request", f"{req.op} {target}".strip(), exc)
            case Messages(source, [msg]):
                self._park_message(b, source, msg, exc, minimal)
            case Results([result]):
                self._fail_instance(b, result.instance_id, exc, minimal, result.execution_id)
            case ReadyUnit(instance_id):
                self._fail_instance(b, instance_id, exc, minimal)
            case TimerUnit(key):
                row = self._timers.take(b, key)
                if row is None:
                    return
                if row.kind == "signal":
                    self._parked.park(b, "signal", row.instance_id, exc, key=f"signal:{key.hex()}")
                else:
                    self._fail_instance(b, row.instance_id, exc, minimal, row.execution_id)
            case _:  # an ack or a resend request: nothing awaits it
                return

    def _fail_instance(
        self,
        b: Batch,
        instance_id: str,
        exc: BaseException,
        minimal: bool,
        execution_id: str | None = None,
    ) -> None:
        live = self._table.get(instance_id)
        if live is None or execution_id not in (None, live.record.execution_id):
            return  # gone, or the work was for an execution that has ended
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
        # no longer wait behind this one. One that is not next in sequence was applied
        # already (a duplicate) or waits for its turn: it is no poison.
        if not self._outbox.skip(b, source, msg.seq) or minimal:
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
            case DeliverEvent(instance_id, _, execution_id):
                self._fail_instance(b, instance_id, exc, False, execution_id)
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
