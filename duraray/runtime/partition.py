"""PartitionCore: one partition's logic as a plain Python class.

A partition owns the orchestration instances whose ids hash to it, and one store. It
works in batches: ``run_batch`` drains everything that arrived (client requests, messages
from other partitions, activity results) plus the timers that are due, applies it, commits
the whole batch in ONE store transaction and only then returns the batch's effects
(replies, messages, activity dispatches) for the shell to release. Nothing is visible
outside the partition before it is durable.

The class does no I/O besides its store and never blocks: the shell (the in-process
runtime or a Ray actor) decides when to call ``run_batch`` and delivers the effects.
Intake methods only append to a deque, so any thread may call them.

Guarantees built here (DESIGN.md §5-6):

- partition-to-partition messages are written to the ``outbox`` in the batch that caused
  them, applied by the receiver in sequence order with dedup on (source, sequence), and
  deleted once acknowledged; unacknowledged messages are resent;
- activity completions are recorded once: the ``activities`` row is the ticket, and a
  result without its row (a duplicate, or for a finished instance) is ignored;
- a client request carrying a request id is applied once; a retry gets the stored reply;
- construction recovers everything: timers re-armed, pending activities re-dispatched,
  the outbox resent, and instances with buffered events made runnable.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from duraray._errors import (
    DurableError,
    FailureDetails,
    HubConfigurationError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    SerializationError,
    error_type_name,
)
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.orchestrations import history as h
from duraray.orchestrations.executor import ExecutorOptions, OrchestrationExecutor
from duraray.runtime import codec
from duraray.runtime import records as r
from duraray.runtime.entity_host import EntityHost
from duraray.runtime.records import (
    ActivityResult,
    ActivityTask,
    ClientRequest,
    Effects,
    InstanceRecord,
    Message,
    Reply,
    TimerRow,
)
from duraray.runtime.routing import partition_for
from duraray.runtime.store import PartitionStore, WriteBatch

Status = h.OrchestrationStatus
log = structlog.get_logger("duraray.partition")

#: Client operations that change state: their replies are stored for request-id dedup.
MUTATING_OPS = frozenset(
    {
        "start", "raise_event", "terminate", "suspend", "resume", "rewind", "purge", "purge_by",
        "batch", "signal_entity", "clean_entities", "release_entity_lock",
    }
)


def utc_now() -> datetime:
    """The wall clock, in UTC: the default clock of a partition."""
    return datetime.now(UTC)


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


@dataclass(slots=True)
class _Live:
    """In-memory state of a non-terminal instance."""

    record: InstanceRecord
    executor: OrchestrationExecutor | None = None
    activities: set[int] = field(default_factory=set)
    timers: set[bytes] = field(default_factory=set)
    # True while new events must go to the inbox (suspended, delayed start, or waiting
    # for the inbox to be drained into an episode).
    buffering: bool = False


@dataclass(slots=True)
class _Watcher:
    kind: str  # "start" | "completion"
    reply_to: Any
    deadline: float


class PartitionCore(EntityHost):
    """The logic of one partition over one store; see the module docstring."""

    def __init__(
        self,
        *,
        hub: str,
        index: int,
        store: PartitionStore,
        registry: Registry,
        config: HubConfig | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.hub = hub
        self.index = index
        self.config = config or HubConfig()
        self.partition_count = self.config.partitions
        self.store = store
        self.registry = registry
        self.clock = clock
        self._executor_options = ExecutorOptions(
            maximum_timer_interval=self.config.maximum_timer_interval
        )
        # Payloads made inside the hub (activity inputs, outputs, custom status, sent
        # events) obey the same max_payload_bytes as the client's.
        self._converter = _Converter(self.config.max_payload_bytes)
        self._log = log.bind(hub=hub, partition=index)

        self._intake: deque[tuple[str, Any]] = deque()
        self._live: dict[str, _Live] = {}
        self._cached: OrderedDict[str, None] = OrderedDict()  # LRU of live executors
        self._timer_heap: list[tuple[int, bytes]] = []
        self._timers: dict[bytes, TimerRow] = {}
        self._out_seq: dict[int, int] = {}
        self._outbox: dict[int, dict[int, tuple[Message, float]]] = {}
        self._dedup: dict[int, int] = {}
        self._ready: set[str] = set()
        self._watchers: dict[str, list[_Watcher]] = {}
        self._watch_deadline: float | None = None
        self._pending_effects = Effects()
        # Set while a batch runs and cleared by its commit: a batch that raised left memory
        # ahead of the store (live generators advanced, sequences taken), so the core must
        # not run another batch; a new core recovers from the store instead.
        self._broken = False
        self.counters: dict[str, float] = {
            "batches": 0, "items": 0, "episodes": 0, "commit_seconds": 0.0,
            "replays": 0, "activities_dispatched": 0, "messages_sent": 0,
        }

        # Per-batch state, reset by run_batch.
        self._now = clock()
        self._wb = WriteBatch()
        self._fx = Effects()
        self._work: dict[str, list[h.HistoryEvent]] = {}
        self._dirty: set[str] = set()
        self._changed: set[str] = set()
        self._replied: dict[str, Any] = {}  # request id -> reply, not yet committed

        self._init_entities()
        self._check_meta()
        self._recover()

    # == intake (thread-safe: deque appends) ==============================================

    def submit_request(self, request: ClientRequest) -> None:
        """Queue a client request; its reply comes out of a later batch's effects."""
        self._intake.append(("request", request))

    def submit_messages(self, source: int, messages: list[Message]) -> None:
        """Queue messages from partition ``source`` (any order; applied by sequence)."""
        self._intake.append(("messages", (source, messages)))

    def submit_ack(self, destination: int, upto: int) -> None:
        """Partition ``destination`` has applied our messages up to sequence ``upto``."""
        self._intake.append(("ack", (destination, upto)))

    def submit_activity_results(self, results: list[ActivityResult]) -> None:
        """Queue results returned by activity workers."""
        self._intake.append(("results", results))

    # == scheduling hints for the shell ===================================================

    def has_work(self) -> bool:
        """True if ``run_batch`` would do something now."""
        if self._intake or self._ready or self._pending_effects:
            return True
        if self._watch_deadline is not None and self._watch_deadline <= time.monotonic():
            return True  # an expired wait to answer
        due = self.next_due()
        return due is not None and due <= self.clock()

    def next_due(self) -> datetime | None:
        """When the earliest timer is due (None if there is none)."""
        heap = self._timer_heap
        while heap and heap[0][1] not in self._timers:
            heapq.heappop(heap)
        return codec.from_utc_micros(heap[0][0]) if heap else None

    def resend_due(self) -> bool:
        """True if some message has waited longer than the resend interval for its ack."""
        limit = time.monotonic() - self.config.resend_interval
        return any(sent < limit for box in self._outbox.values() for _, sent in box.values())

    # == the batch ========================================================================

    def run_batch(self) -> Effects:
        """Drain, apply, commit once, then return the batch's effects."""
        if self._broken:
            raise RuntimeError(
                f"partition {self.index} is unusable after a failed batch or commit: its memory "
                "is ahead of its store; open a new PartitionCore on the store to recover"
            )
        self._broken = True
        self._now = self.clock()
        self._wb = WriteBatch()
        self._fx, self._pending_effects = self._pending_effects, Effects()
        self._work = {}
        self._dirty = set()
        self._changed = set()
        self._replied = {}

        for iid in sorted(self._ready):
            self._drain_inbox(iid)
        self._ready.clear()

        taken = 0
        limit = self.config.max_batch_items
        while self._intake and taken < limit:
            kind, item = self._intake.popleft()
            taken += 1
            if kind == "request":
                self._on_request(item)
            elif kind == "messages":
                self._on_messages(*item)
            elif kind == "ack":
                self._on_ack(*item)
            elif kind == "results":
                for result in item:
                    self._on_activity_result(result)
        self._fire_due_timers()
        self._process_entities()

        # Episodes may add work for other local instances (messages to self go through
        # the outbox, so they never do): one pass suffices.
        work, self._work = self._work, {}
        for iid, events in work.items():
            live = self._live.get(iid)
            if live is not None:
                self._run_episode(live, events)

        for iid in self._dirty:
            live = self._live.get(iid)
            if live is not None:
                self._put_record(live.record)

        if self._wb:
            started = time.perf_counter()
            self.store.commit(self._wb)
            self.counters["commit_seconds"] += time.perf_counter() - started
        self._broken = False
        self.counters["batches"] += 1
        self.counters["items"] += taken

        self._resend_overdue()
        self._notify_watchers()
        self._evict_executors()
        fx = self._fx
        self._fx = Effects()
        self.counters["activities_dispatched"] += len(fx.activities)
        return fx

    # == recovery =========================================================================

    def _check_meta(self) -> None:
        meta = {k.decode(): codec.decode(v) for k, v in self.store.scan("meta")}
        if not meta:
            wb = WriteBatch()
            for key, value in (
                ("hub", self.hub),
                ("partition", self.index),
                ("partition_count", self.partition_count),
                ("format_version", r.FORMAT_VERSION),
            ):
                wb.put("meta", key.encode(), codec.encode(value))
            self.store.commit(wb)
            return
        if meta.get("partition_count") != self.partition_count:
            raise HubConfigurationError(
                f"the data of hub {self.hub!r} was created with {meta.get('partition_count')} "
                f"partitions; it cannot be opened with {self.partition_count} (changing the "
                "partition count of an existing hub is not supported)"
            )
        if meta.get("partition") != self.index or meta.get("hub") != self.hub:
            raise HubConfigurationError(
                f"store at {self.store.path!r} belongs to hub {meta.get('hub')!r} partition "
                f"{meta.get('partition')}, not {self.hub!r} partition {self.index}"
            )
        if meta.get("format_version", 0) > r.FORMAT_VERSION:
            raise HubConfigurationError(
                f"store format {meta.get('format_version')} is newer than this duraray "
                f"understands ({r.FORMAT_VERSION}); upgrade duraray"
            )

    def _recover(self) -> None:
        for _, value in self.store.scan("instances"):
            record = codec.decode_record(InstanceRecord, value)
            if record.status.is_terminal:
                continue
            live = _Live(record)
            live.buffering = record.status in (Status.SUSPENDED, Status.PENDING) or (
                record.inbox_length > 0
            )
            self._live[record.instance_id] = live
            if record.status is Status.RUNNING and record.inbox_length > 0:
                self._ready.add(record.instance_id)
        for key, value in self.store.scan("timers"):
            row = codec.decode_record(TimerRow, value)
            self._timers[key] = row
            heapq.heappush(self._timer_heap, (codec.utc_micros(row.fire_at), key))
            live = self._live.get(row.instance_id)
            if live is not None:
                live.timers.add(key)
        for iid, live in self._live.items():
            # A PENDING instance without its start timer had it fire in a committed batch
            # whose in-memory "drain next batch" was lost with the crash: start it now.
            if live.record.status is Status.PENDING and not any(
                self._timers[k].kind == "start" for k in live.timers
            ):
                self._ready.add(iid)
        for _, value in self.store.scan("activities"):
            task = codec.decode_record(ActivityTask, value)
            live = self._live.get(task.instance_id)
            if live is None or live.record.execution_id != task.execution_id:
                continue
            live.activities.add(task.task_id)
            self._pending_effects.activities.append(task)
        now = time.monotonic()
        for key, value in self.store.scan("outbox"):
            msg = codec.decode_record(Message, value)
            destination = r.read_u32(key)
            self._outbox.setdefault(destination, {})[msg.seq] = (msg, now)
            self._out_seq[destination] = max(self._out_seq.get(destination, 0), msg.seq)
            self._pending_effects.messages.setdefault(destination, []).append(msg)
        for key, value in self.store.scan("dedup", prefix=b"p"):
            self._dedup[r.read_u32(key, 1)] = codec.decode(value)
        for key, value in self.store.scan("dedup", prefix=b"s"):
            destination = r.read_u32(key, 1)
            self._out_seq[destination] = max(self._out_seq.get(destination, 0), codec.decode(value))
        if self._pending_effects:
            self._log.info(
                "partition recovered",
                instances=len(self._live),
                timers=len(self._timers),
                activities=len(self._pending_effects.activities),
                messages=sum(len(m) for m in self._pending_effects.messages.values()),
            )

    # == messaging ========================================================================

    def _send(self, destination: int, kind: str, instance_id: str, **fields: Any) -> None:
        seq = self._out_seq.get(destination, 0) + 1
        self._out_seq[destination] = seq
        msg = Message(seq=seq, source=self.index, kind=kind, instance_id=instance_id, **fields)
        self._wb.put("outbox", r.outbox_key(destination, seq), codec.encode_record(msg))
        self._wb.put("dedup", r.sent_seq_key(destination), codec.encode(seq))
        self._outbox.setdefault(destination, {})[seq] = (msg, time.monotonic())
        self._fx.messages.setdefault(destination, []).append(msg)
        self.counters["messages_sent"] += 1

    def _send_event(self, instance_id: str, event: h.HistoryEvent, execution_id: str | None) -> None:
        self._send(
            partition_for(instance_id, self.partition_count),
            "event",
            instance_id,
            execution_id=execution_id,
            event=codec.encode_event(event),
        )

    def _on_messages(self, source: int, messages: list[Message]) -> None:
        last = self._dedup.get(source, 0)
        applied = last
        for msg in sorted(messages, key=lambda m: m.seq):
            if msg.seq <= applied:
                continue  # a resend of something already applied
            if msg.seq != applied + 1:
                break  # a gap: wait for the sender to resend in order
            self._apply_message(msg)
            applied = msg.seq
        if applied != last:
            self._dedup[source] = applied
            self._wb.put("dedup", r.dedup_partition_key(source), codec.encode(applied))
        if applied:
            self._fx.acks[source] = applied

    def _on_ack(self, destination: int, upto: int) -> None:
        box = self._outbox.get(destination)
        if not box:
            return
        for seq in [s for s in box if s <= upto]:
            del box[seq]
            self._wb.delete("outbox", r.outbox_key(destination, seq))

    def _resend_overdue(self) -> None:
        limit = time.monotonic() - self.config.resend_interval
        for destination, box in self._outbox.items():
            overdue = sorted(seq for seq, (_, sent) in box.items() if sent < limit)
            if not overdue:
                continue
            now = time.monotonic()
            resend = self._fx.messages.setdefault(destination, [])
            for seq in overdue:
                msg, _ = box[seq]
                box[seq] = (msg, now)
                resend.append(msg)

    def _apply_message(self, msg: Message) -> None:
        if msg.kind == "start":
            body = dict(msg.body or {})
            self._start_child(msg.instance_id, body)
        elif msg.kind == "event":
            assert msg.event is not None
            event = codec.decode_event(msg.event)
            self._deliver(msg.instance_id, event, msg.execution_id)
        elif msg.kind == "terminate":
            live = self._live.get(msg.instance_id)
            if live is not None:
                body = msg.body or {}
                self._terminate(live, body.get("output"), bool(body.get("recursive", True)))
        elif msg.kind == "entity":
            self._on_entity_message(msg.instance_id, msg.body or {})
        elif msg.kind == "rewind":
            body = msg.body or {}
            if body.get("parent") is not None:
                self._rewind_child(msg.instance_id, body.get("reason"), body["parent"])
            else:
                self._rewind(msg.instance_id, body.get("reason"))
        else:
            self._log.warning("unknown message kind dropped", kind=msg.kind)

    # == client requests ==================================================================

    def _on_request(self, req: ClientRequest) -> None:
        if req.request_id is not None:
            if req.request_id in self._replied:  # a retry queued behind the original
                self._fx.replies.append((req.reply_to, self._replied[req.request_id]))
                return
            stored = self.store.get("dedup", r.dedup_request_key(req.request_id))
            if stored is not None:
                self._fx.replies.append((req.reply_to, _decode_reply(stored)))
                return
        handler = getattr(self, f"_op_{req.op}", None)
        try:
            if handler is None:
                raise ValueError(f"unknown client operation {req.op!r}")
            result = handler(req, **req.args)
        except (DurableError, ValueError, TypeError, LookupError) as exc:
            result = Reply(exc)
        if result is _DEFERRED:
            return
        if req.request_id is not None and req.op in MUTATING_OPS:
            self._wb.put("dedup", r.dedup_request_key(req.request_id), _encode_reply(result))
            self._replied[req.request_id] = result
        self._fx.replies.append((req.reply_to, result))

    def _get_record(self, instance_id: str) -> InstanceRecord | None:
        live = self._live.get(instance_id)
        if live is not None:
            return live.record
        data = self.store.get("instances", r.instance_key(instance_id))
        return None if data is None else codec.decode_record(InstanceRecord, data)

    def _require_live(self, instance_id: str, op: str) -> _Live:
        live = self._live.get(instance_id)
        if live is not None:
            return live
        record = self._get_record(instance_id)
        if record is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        raise InstanceStateError(
            f"cannot {op} instance {instance_id!r}: it is {record.status.value}"
        )

    def _op_start(
        self,
        req: ClientRequest,
        *,
        instance_id: str,
        name: str,
        input: bytes | None = None,
        version: str | None = None,
        tags: dict[str, str] | None = None,
        start_at: datetime | timedelta | None = None,
        reuse_policy: str | None = None,
    ) -> str:
        if isinstance(start_at, timedelta):  # a delay from now, on this partition's clock
            start_at = self._now + start_at
        policy = reuse_policy or ReuseIdPolicy.ERROR_IF_RUNNING
        if policy not in ReuseIdPolicy.ALL:
            raise ValueError(f"unknown reuse_id_policy {policy!r}")
        existing = self._get_record(instance_id)
        if existing is not None:
            running = existing.status.is_running
            if policy == ReuseIdPolicy.ERROR or (running and policy == ReuseIdPolicy.ERROR_IF_RUNNING):
                raise InstanceAlreadyExistsError(
                    f"an orchestration instance with id {instance_id!r} already exists "
                    f"({existing.status.value})"
                )
            if running and policy == ReuseIdPolicy.IGNORE_IF_RUNNING:
                return instance_id
            if running:  # TERMINATE_IF_RUNNING
                self._terminate(self._live[instance_id], None, recursive=True)
        self._create(
            instance_id, name, input, version=version, tags=tags, start_at=start_at
        )
        return instance_id

    def _op_batch(self, req: ClientRequest, *, ops: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Several operations in one request (one Ray call, one commit); results in order.

        A failing operation yields a ``Reply`` in its slot and does not stop the others.
        """
        results: list[Any] = []
        for op, args in ops:
            handler = getattr(self, f"_op_{op}", None)
            try:
                if handler is None or op in _UNBATCHABLE:
                    raise ValueError(f"operation {op!r} cannot be batched")
                results.append(handler(req, **args))
            except (DurableError, ValueError, TypeError, LookupError) as exc:
                results.append(Reply(exc))
        return results

    def _op_wait_many(
        self, req: ClientRequest, *, instance_ids: list[str], kind: str, timeout: float
    ) -> Any:
        """Reply once every instance satisfies the wait (records in the given order)."""
        group = _WaitGroup(list(instance_ids), req.reply_to, kind)
        deadline = time.monotonic() + timeout
        for iid in group.pending_ids():
            record = self._get_record(iid)
            if record is not None and _wait_satisfied(kind, record):
                group.satisfy(iid, record)
            else:
                self._add_watcher(iid, _Watcher(kind, group, deadline))
        if group.done:
            return group.results()
        return _DEFERRED

    def _op_get_state(
        self, req: ClientRequest, *, instance_id: str, fetch_payloads: bool = True
    ) -> InstanceRecord | None:
        record = self._get_record(instance_id)
        if record is None:
            return None
        if not fetch_payloads:
            return replace(record, input=None, output=None, custom_status=None)
        return replace(record)

    def _op_get_history(self, req: ClientRequest, *, instance_id: str) -> list[h.HistoryEvent]:
        if self._get_record(instance_id) is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        return self._load_history(instance_id)

    def _op_wait(
        self, req: ClientRequest, *, instance_id: str, kind: str, timeout: float
    ) -> Any:
        record = self._get_record(instance_id)
        if record is not None and _wait_satisfied(kind, record):
            return replace(record)
        self._add_watcher(instance_id, _Watcher(kind, req.reply_to, time.monotonic() + timeout))
        return _DEFERRED

    def _op_raise_event(
        self, req: ClientRequest, *, instance_id: str, name: str, data: bytes | None = None
    ) -> None:
        live = self._require_live(instance_id, "raise an event on")
        event = h.EventRaised(timestamp=self._now, name=name, input=data)
        self._deliver(live.record.instance_id, event, None)

    def _op_terminate(
        self,
        req: ClientRequest,
        *,
        instance_id: str,
        output: bytes | None = None,
        recursive: bool = True,
    ) -> bool:
        live = self._live.get(instance_id)
        if live is None:
            if self._get_record(instance_id) is None:
                raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
            return False  # terminal already: a no-op
        self._terminate(live, output, recursive)
        return True

    def _op_suspend(self, req: ClientRequest, *, instance_id: str, reason: str | None = None) -> bool:
        live = self._require_live(instance_id, "suspend")
        record = live.record
        if record.status is Status.SUSPENDED:
            return False
        self._append_history(live, [h.ExecutionSuspended(timestamp=self._now, reason=reason)])
        record.status = Status.SUSPENDED
        live.buffering = True
        self._ready.discard(instance_id)
        self._touch(live)
        return True

    def _op_resume(self, req: ClientRequest, *, instance_id: str, reason: str | None = None) -> bool:
        live = self._require_live(instance_id, "resume")
        record = live.record
        if record.status is not Status.SUSPENDED:
            return False
        self._append_history(live, [h.ExecutionResumed(timestamp=self._now, reason=reason)])
        waiting_for_start = any(
            self._timers[k].kind == "start" for k in live.timers if k in self._timers
        )
        if waiting_for_start:
            record.status = Status.PENDING
        else:
            record.status = Status.RUNNING
            # Drained next batch, after this one commits, so buffered events keep their order.
            self._ready.add(instance_id)
        self._touch(live)
        return True

    def _op_rewind(self, req: ClientRequest, *, instance_id: str, reason: str | None = None) -> None:
        record = self._get_record(instance_id)
        if record is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        if record.status is not Status.FAILED:
            raise InstanceStateError(
                f"only FAILED instances can be rewound; {instance_id!r} is {record.status.value}"
            )
        self._rewind(instance_id, reason)

    def _op_purge(self, req: ClientRequest, *, instance_id: str) -> tuple[int, list[str]]:
        record = self._get_record(instance_id)
        if record is None or not record.status.is_terminal:
            return (0, [])
        children = self._children_of(instance_id)
        self._delete_instance(record)
        return (1, children)

    def _op_purge_by(
        self,
        req: ClientRequest,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        statuses: list[str] | None = None,
    ) -> int:
        wanted = {Status(s) for s in statuses} if statuses else None
        count = 0
        for record in list(self._scan_records(created_from, created_to, None, None)):
            if not record.status.is_terminal:
                continue
            if wanted is not None and record.status not in wanted:
                continue
            self._delete_instance(record)
            count += 1
        return count

    def _op_query(
        self,
        req: ClientRequest,
        *,
        statuses: list[str] | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        prefix: str | None = None,
        after: bytes | None = None,
        limit: int = 100,
        fetch_payloads: bool = True,
    ) -> list[InstanceRecord]:
        wanted = {Status(s) for s in statuses} if statuses else None
        out: list[InstanceRecord] = []
        for record in self._scan_records(created_from, created_to, after, prefix):
            if wanted is not None and record.status not in wanted:
                continue
            if not fetch_payloads:
                record = replace(record, input=None, output=None, custom_status=None)
            out.append(record)
            if len(out) >= limit:
                break
        return out

    def _op_stats(self, req: ClientRequest) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for live in self._live.values():
            by_status[live.record.status.value] = by_status.get(live.record.status.value, 0) + 1
        return {
            "partition": self.index,
            "counters": dict(self.counters),
            "live_instances": by_status,
            "cached_executors": len(self._cached),
            "timers": len(self._timers),
            "activities_in_flight": sum(len(v.activities) for v in self._live.values()),
            "outbox": sum(len(b) for b in self._outbox.values()),
            "queue_depth": len(self._intake),
        }

    def _scan_records(
        self,
        created_from: datetime | None,
        created_to: datetime | None,
        after: bytes | None,
        prefix: str | None,
    ) -> Iterator[InstanceRecord]:
        start = r.u64(codec.utc_micros(created_from)) if created_from else None
        if after is not None and (start is None or after >= start):
            start = after + b"\x00"
        stop = r.u64(codec.utc_micros(created_to) + 1) if created_to else None
        for key, _ in self.store.scan("by_created", start=start, stop=stop):
            instance_id = key[8:].decode()
            if prefix and not instance_id.startswith(prefix):
                continue
            record = self._get_record(instance_id)
            if record is not None:
                yield record

    # == instances: creation, delivery, episodes ==========================================

    def _create(
        self,
        instance_id: str,
        name: str,
        input: bytes | None,
        *,
        version: str | None = None,
        tags: dict[str, str] | None = None,
        start_at: datetime | None = None,
        parent: tuple[str, str, int] | None = None,
    ) -> _Live:
        old = self._get_record(instance_id)
        if old is not None:
            self._delete_instance(old)
        now = self._now
        execution_id = uuid.uuid4().hex
        record = InstanceRecord(
            instance_id=instance_id,
            name=name,
            status=Status.PENDING,
            execution_id=execution_id,
            created_at=now,
            last_updated_at=now,
            input=input,
            tags=dict(tags) if tags else None,
            version=version,
            scheduled_start_at=start_at,
        )
        if parent is not None:
            record.parent_instance_id, record.parent_execution_id, record.parent_task_id = parent
        live = _Live(record)
        self._live[instance_id] = live
        self._wb.put("by_created", r.created_key(codec.utc_micros(now), instance_id), b"")
        started = h.ExecutionStarted(
            timestamp=now,
            name=name,
            instance_id=instance_id,
            execution_id=execution_id,
            input=input,
            version=version,
            tags=record.tags,
            parent_instance_id=record.parent_instance_id,
            parent_execution_id=record.parent_execution_id,
            parent_task_id=record.parent_task_id,
            scheduled_start_at=start_at,
        )
        if start_at is not None and start_at > now:
            live.buffering = True
            self._to_inbox(live, started)
            self._add_timer(live, TimerRow("start", instance_id, execution_id, 0, start_at))
        else:
            self._work.setdefault(instance_id, []).append(started)
        self._touch(live)
        return live

    def _start_child(self, instance_id: str, body: dict[str, Any]) -> None:
        existing = self._live.get(instance_id)
        if body.get("parent_instance_id") is None:
            # Started by an entity operation: a running instance with that id is kept.
            if existing is None:
                self._create(instance_id, body["name"], body.get("input"))
            return
        parent = (body["parent_instance_id"], body["parent_execution_id"], body["parent_task_id"])
        if existing is not None:
            failure = FailureDetails(
                message=f"an orchestration instance with id {instance_id!r} is already running",
                error_type="duraray.InstanceAlreadyExistsError",
                non_retriable=True,
            )
            event = h.SubOrchestrationInstanceFailed(
                timestamp=self._now, task_scheduled_id=parent[2], failure=failure
            )
            self._send_event(parent[0], event, parent[1])
            return
        self._create(
            instance_id,
            body["name"],
            body.get("input"),
            version=body.get("version"),
            parent=parent,
        )

    def _deliver(self, instance_id: str, event: h.HistoryEvent, execution_id: str | None) -> None:
        live = self._live.get(instance_id)
        stale = live is None or (
            execution_id is not None and live.record.execution_id != execution_id
        )
        if stale:
            # Unknown, finished or an earlier execution: events to it are dropped (so
            # send_event never fails), but a lock granted to it must be given back.
            if isinstance(event, h.EntityLockGranted):
                self._unlock_all(event.critical_section_id, list(event.lock_set))
            return
        assert live is not None
        relock = live.record.relock
        if (
            relock
            and isinstance(event, h.EntityLockGranted)
            and event.critical_section_id in relock
        ):
            # A lock re-acquired after a rewind: the history already has its grant.
            relock.remove(event.critical_section_id)
            live.record.relock = relock or None
            self._dirty.add(instance_id)
            if not relock:
                self._ready.add(instance_id)
            return
        if live.buffering:
            self._to_inbox(live, event)
        else:
            self._work.setdefault(instance_id, []).append(event)

    def _to_inbox(self, live: _Live, event: h.HistoryEvent) -> None:
        record = live.record
        self._wb.put(
            "inbox", r.seq_key(record.instance_id, record.inbox_length), codec.encode_event(event)
        )
        record.inbox_length += 1
        self._dirty.add(record.instance_id)

    def _drain_inbox(self, instance_id: str) -> None:
        live = self._live.get(instance_id)
        if live is None or live.record.status is Status.SUSPENDED or live.record.relock:
            return
        live.buffering = False
        record = live.record
        if record.inbox_length:
            prefix = r.instance_prefix(instance_id)
            events = [codec.decode_event(v) for _, v in self.store.scan("inbox", prefix=prefix)]
            self._wb.delete_prefix("inbox", prefix)
            record.inbox_length = 0
            self._dirty.add(instance_id)
            self._work.setdefault(instance_id, []).extend(events)

    def _executor_for(self, live: _Live) -> OrchestrationExecutor:
        if live.executor is not None:
            self._cached.move_to_end(live.record.instance_id)
            return live.executor
        record = live.record
        executor = OrchestrationExecutor(
            self.registry.orchestrations.get(record.name),
            instance_id=record.instance_id,
            converter=self._converter,
            name_of=self.registry.name_of,
            options=self._executor_options,
        )
        if record.history_length:
            self.counters["replays"] += 1
            executor.process(self._load_history(record.instance_id), replaying=True)
        live.executor = executor
        self._cached[record.instance_id] = None
        return executor

    def _load_history(self, instance_id: str) -> list[h.HistoryEvent]:
        prefix = r.instance_prefix(instance_id)
        return [codec.decode_event(v) for _, v in self.store.scan("history", prefix=prefix)]

    def _append_history(self, live: _Live, events: list[h.HistoryEvent]) -> None:
        record = live.record
        iid = record.instance_id
        n = record.history_length
        put = self._wb.put
        for event in events:
            put("history", r.seq_key(iid, n), codec.encode_event(event))
            n += 1
        record.history_length = n
        self._dirty.add(iid)

    def _run_episode(self, live: _Live, events: list[h.HistoryEvent]) -> None:
        record = live.record
        if not record.status.is_running:
            return
        executor = self._executor_for(live)
        episode: list[h.HistoryEvent] = [h.OrchestratorStarted(timestamp=self._now), *events]
        executor.process(episode)
        actions = executor.take_new_events()
        self._append_history(live, episode + actions)
        self.counters["episodes"] += 1
        for action in actions:
            self._apply_action(live, action)
        if record.status is Status.PENDING:
            record.status = Status.RUNNING
        record.custom_status = executor.custom_status
        self._touch(live)
        if executor.completion is not None:
            self._complete(live, executor.completion)

    def _apply_action(self, live: _Live, event: h.HistoryEvent) -> None:
        record = live.record
        iid = record.instance_id
        if isinstance(event, h.TaskScheduled):
            task = ActivityTask(
                instance_id=iid,
                execution_id=record.execution_id,
                task_id=event.event_id,
                name=event.name,
                input=event.input,
                partition=self.index,
                tags=event.tags,
            )
            self._wb.put("activities", r.seq_key(iid, event.event_id), codec.encode_record(task))
            live.activities.add(event.event_id)
            self._fx.activities.append(task)
        elif isinstance(event, h.TimerCreated):
            self._add_timer(
                live, TimerRow("timer", iid, record.execution_id, event.event_id, event.fire_at)
            )
        elif isinstance(event, h.SubOrchestrationInstanceCreated):
            self._send(
                partition_for(event.instance_id, self.partition_count),
                "start",
                event.instance_id,
                body={
                    "name": event.name,
                    "input": event.input,
                    "version": event.version,
                    "parent_instance_id": iid,
                    "parent_execution_id": record.execution_id,
                    "parent_task_id": event.event_id,
                },
            )
        elif isinstance(event, h.EventSent):
            raised = h.EventRaised(timestamp=self._now, name=event.name, input=event.input)
            self._send_event(event.instance_id, raised, None)
        else:
            self._entity_action(iid, record.execution_id, event)

    def _put_timer(self, row: TimerRow) -> bytes:
        key = r.timer_key(codec.utc_micros(row.fire_at), row.instance_id, row.timer_id)
        self._wb.put("timers", key, codec.encode_record(row))
        self._timers[key] = row
        heapq.heappush(self._timer_heap, (codec.utc_micros(row.fire_at), key))
        return key

    def _add_timer(self, live: _Live, row: TimerRow) -> None:
        live.timers.add(self._put_timer(row))

    def _fire_due_timers(self) -> None:
        now_micros = codec.utc_micros(self._now)
        heap = self._timer_heap
        while heap and heap[0][0] <= now_micros:
            _, key = heapq.heappop(heap)
            row = self._timers.pop(key, None)
            if row is None:
                continue  # removed when its instance finished
            self._wb.delete("timers", key)
            if row.kind == "signal":
                self._fire_signal(row)
                continue
            live = self._live.get(row.instance_id)
            if live is None or live.record.execution_id != row.execution_id:
                continue
            live.timers.discard(key)
            if row.kind == "start":
                # Drained next batch, after this one commits: events raised to the pending
                # instance in this batch sit in uncommitted inbox rows.
                if live.record.status is Status.PENDING:
                    self._ready.add(row.instance_id)
            else:
                fired = h.TimerFired(timestamp=self._now, timer_id=row.timer_id, fire_at=row.fire_at)
                self._deliver(row.instance_id, fired, row.execution_id)

    def _on_activity_result(self, result: ActivityResult) -> None:
        live = self._live.get(result.instance_id)
        if (
            live is None
            or live.record.execution_id != result.execution_id
            or result.task_id not in live.activities
        ):
            return  # a duplicate, or for an execution that has ended: recorded once already
        live.activities.discard(result.task_id)
        self._wb.delete("activities", r.seq_key(result.instance_id, result.task_id))
        event: h.HistoryEvent
        limit = self.config.max_payload_bytes
        if result.failure is None and result.result is not None and len(result.result) > limit:
            # Workers encode with the default limit; the hub's own limit is enforced here.
            result = replace(
                result,
                result=None,
                failure=FailureDetails(
                    message=f"activity result of {len(result.result)} bytes exceeds the "
                    f"limit of {limit} bytes",
                    error_type=error_type_name(SerializationError),
                    non_retriable=True,
                ),
            )
        if result.failure is None:
            event = h.TaskCompleted(
                timestamp=self._now, task_scheduled_id=result.task_id, result=result.result
            )
        else:
            event = h.TaskFailed(
                timestamp=self._now, task_scheduled_id=result.task_id, failure=result.failure
            )
        self._deliver(result.instance_id, event, result.execution_id)

    # == endings ==========================================================================

    def _complete(self, live: _Live, completion: h.HistoryEvent) -> None:
        if isinstance(completion, h.ContinueAsNew):
            self._continue_as_new(live, completion)
            return
        assert isinstance(completion, h.ExecutionCompleted)
        record = live.record
        record.status = completion.status
        record.output = completion.result
        record.failure = completion.failure
        if completion.status is Status.FAILED:
            # The executor releases the sections it knows of; a failure in replay (changed
            # code) may not know them all, so release whatever the history still holds.
            # An unlock for a lock already released is ignored by the entity.
            self._release_held_locks(self._history_with_batch(record.instance_id))
        self._finish(live)
        if record.parent_instance_id is not None and record.parent_task_id is not None:
            event: h.HistoryEvent
            if completion.status is Status.COMPLETED:
                event = h.SubOrchestrationInstanceCompleted(
                    timestamp=self._now,
                    task_scheduled_id=record.parent_task_id,
                    result=completion.result,
                )
            else:
                event = h.SubOrchestrationInstanceFailed(
                    timestamp=self._now,
                    task_scheduled_id=record.parent_task_id,
                    failure=completion.failure
                    or FailureDetails("sub-orchestration failed", "duraray.DurableError"),
                )
            self._send_event(record.parent_instance_id, event, record.parent_execution_id)

    def _finish(self, live: _Live) -> None:
        """Common end of an execution: drop its timers, activities, inbox and generator."""
        record = live.record
        iid = record.instance_id
        record.completed_at = self._now
        for key in live.timers:
            if self._timers.pop(key, None) is not None:
                self._wb.delete("timers", key)
        live.timers.clear()
        for task_id in live.activities:
            self._wb.delete("activities", r.seq_key(iid, task_id))
        live.activities.clear()
        if record.inbox_length:
            self._wb.delete_prefix("inbox", r.instance_prefix(iid))
            record.inbox_length = 0
        self._drop_executor(live)
        self._ready.discard(iid)
        self._touch(live)
        self._put_record(record)
        del self._live[iid]
        self._work.pop(iid, None)

    def _continue_as_new(self, live: _Live, completion: h.ContinueAsNew) -> None:
        record = live.record
        iid = record.instance_id
        executor = live.executor
        carried = executor.buffered_events() if executor and executor.save_events else []
        for key in live.timers:
            if self._timers.pop(key, None) is not None:
                self._wb.delete("timers", key)
        live.timers.clear()
        for task_id in live.activities:
            self._wb.delete("activities", r.seq_key(iid, task_id))
        live.activities.clear()
        self._drop_executor(live)
        # The history is reset each generation; events buffered in the inbox stay there
        # and are applied to the new generation after its start.
        self._wb.delete_prefix("history", r.instance_prefix(iid))
        record.history_length = 0
        record.execution_id = uuid.uuid4().hex
        record.input = completion.input
        record.output = None
        record.failure = None
        record.status = Status.RUNNING
        started = h.ExecutionStarted(
            timestamp=self._now,
            name=record.name,
            instance_id=iid,
            execution_id=record.execution_id,
            input=completion.input,
            version=record.version,
            tags=record.tags,
            parent_instance_id=record.parent_instance_id,
            parent_execution_id=record.parent_execution_id,
            parent_task_id=record.parent_task_id,
        )
        earlier = self._inbox_events(live)
        self._wb.delete_prefix("inbox", r.instance_prefix(iid))
        record.inbox_length = 0
        live.buffering = True
        self._to_inbox(live, started)
        for name, data in carried:
            self._to_inbox(live, h.EventRaised(timestamp=self._now, name=name, input=data))
        for event in earlier:
            self._to_inbox(live, event)
        # Run the next generation in the next batch: its start is durable first, and an
        # orchestration that continues as new in a tight loop cannot starve the partition.
        self._ready.add(iid)
        self._touch(live)

    def _inbox_events(self, live: _Live) -> list[h.HistoryEvent]:
        if not live.record.inbox_length:
            return []
        prefix = r.instance_prefix(live.record.instance_id)
        return [codec.decode_event(v) for _, v in self.store.scan("inbox", prefix=prefix)]

    def _terminate(self, live: _Live, output: bytes | None, recursive: bool) -> None:
        record = live.record
        self._append_history(
            live, [h.ExecutionTerminated(timestamp=self._now, output=output, recursive=recursive)]
        )
        record.status = Status.TERMINATED
        record.output = output
        history = self._history_with_batch(record.instance_id)
        children = (
            list(dict.fromkeys(
                e.instance_id for e in history if isinstance(e, h.SubOrchestrationInstanceCreated)
            ))
            if recursive
            else []
        )
        self._release_held_locks(history)
        self._finish(live)
        for child in children:
            self._send(
                partition_for(child, self.partition_count),
                "terminate",
                child,
                body={"output": output, "recursive": True},
            )
        if record.parent_instance_id is not None and record.parent_task_id is not None:
            failure = FailureDetails(
                message=f"sub-orchestration {record.instance_id!r} was terminated",
                error_type="duraray.Terminated",
                non_retriable=True,
            )
            event = h.SubOrchestrationInstanceFailed(
                timestamp=self._now, task_scheduled_id=record.parent_task_id, failure=failure
            )
            self._send_event(record.parent_instance_id, event, record.parent_execution_id)

    def _history_with_batch(self, instance_id: str) -> list[h.HistoryEvent]:
        """The committed history plus the events appended to it in this batch."""
        history = self._load_history(instance_id)
        prefix = r.instance_prefix(instance_id)
        for op in self._wb.ops:
            if op[0] == "put" and op[1] == "history" and op[2].startswith(prefix):
                history.append(codec.decode_event(op[3]))
        return history

    def _children_of(self, instance_id: str) -> list[str]:
        """Every sub-orchestration the instance's current execution started."""
        return list(dict.fromkeys(
            e.instance_id
            for e in self._history_with_batch(instance_id)
            if isinstance(e, h.SubOrchestrationInstanceCreated)
        ))

    def _rewind(self, instance_id: str, reason: str | None) -> None:
        record = self._get_record(instance_id)
        if record is None or record.status is not Status.FAILED:
            return
        old = self._load_history(instance_id)
        kept = _rewound_history(old)
        kept.append(h.ExecutionRewound(timestamp=self._now, reason=reason))
        self._wb.delete_prefix("history", r.instance_prefix(instance_id))
        record = replace(
            record,
            status=Status.RUNNING,
            output=None,
            failure=None,
            completed_at=None,
            history_length=0,
        )
        # Buffer until the next batch: the rewritten history is not committed yet, and an
        # executor rebuilt in this batch would replay the old one from the store.
        live = _Live(record, buffering=True)
        self._live[instance_id] = live
        self._ready.add(instance_id)
        self._append_history(live, kept)
        # Re-arm what the kept history still waits for: activities without results are
        # dispatched again, timers re-armed, failed children rewound in turn.
        scheduled: dict[int, h.HistoryEvent] = {}
        for event in kept:
            if isinstance(event, h.TaskScheduled | h.TimerCreated | h.SubOrchestrationInstanceCreated):
                scheduled[event.event_id] = event
            elif isinstance(event, h.TaskCompleted | h.SubOrchestrationInstanceCompleted):
                scheduled.pop(event.task_scheduled_id, None)
            elif isinstance(event, h.TimerFired):
                scheduled.pop(event.timer_id, None)
        self._relock_sections(live, kept)
        for seq, event in scheduled.items():
            if isinstance(event, h.TaskScheduled | h.TimerCreated):
                self._apply_action(live, event)
            elif isinstance(event, h.SubOrchestrationInstanceCreated):
                # Every child whose outcome the kept history lacks: a failed one is rewound,
                # and one that finished after this instance failed (its report was dropped)
                # reports again, so the rewound parent never waits forever.
                self._send(
                    partition_for(event.instance_id, self.partition_count),
                    "rewind",
                    event.instance_id,
                    body={"reason": reason, "parent": [instance_id, record.execution_id, seq]},
                )
        self._touch(live)

    def _relock_sections(self, live: _Live, kept: list[h.HistoryEvent]) -> None:
        """Re-acquire the locks of critical sections the rewound history is still inside.

        The failure released them, so each open section asks for its locks again. A
        section the kept history already saw granted must not run before the new grant
        arrives: the instance stays buffered until then (``record.relock``).
        """
        requested: dict[str, h.EntityLockRequested] = {}
        granted: set[str] = set()
        for event in kept:
            if isinstance(event, h.EntityLockRequested):
                requested[event.critical_section_id] = event
            elif isinstance(event, h.EntityLockGranted):
                granted.add(event.critical_section_id)
            elif isinstance(event, h.EntityUnlockSent):
                requested.pop(event.critical_section_id, None)
        record = live.record
        relock = [cs for cs in requested if cs in granted]
        record.relock = relock or None
        for event in requested.values():
            self._entity_action(record.instance_id, record.execution_id, event)

    def _rewind_child(self, instance_id: str, reason: str | None, parent: list[Any]) -> None:
        """A rewound parent asks a child for its outcome: rewind it if it failed, else re-report."""
        parent_id, parent_execution_id, task_id = parent
        record = self._get_record(instance_id)
        if record is not None and record.status is Status.FAILED:
            self._rewind(instance_id, reason)  # reports to the parent when it finishes
            return
        if record is not None and not record.status.is_terminal:
            return  # still running: it reports to its parent when it finishes
        event: h.HistoryEvent
        if (
            record is not None
            and record.status is Status.COMPLETED
            and record.parent_instance_id == parent_id
        ):
            event = h.SubOrchestrationInstanceCompleted(
                timestamp=self._now, task_scheduled_id=task_id, result=record.output
            )
        else:
            state = record.status.value if record is not None else "gone"
            event = h.SubOrchestrationInstanceFailed(
                timestamp=self._now,
                task_scheduled_id=task_id,
                failure=FailureDetails(
                    message=f"sub-orchestration {instance_id!r} cannot be rewound: it is {state}",
                    error_type=error_type_name(InstanceStateError),
                    non_retriable=True,
                ),
            )
        self._send_event(parent_id, event, parent_execution_id)

    def _delete_instance(self, record: InstanceRecord) -> None:
        iid = record.instance_id
        self._wb.delete("instances", r.instance_key(iid))
        self._wb.delete("by_created", r.created_key(codec.utc_micros(record.created_at), iid))
        self._wb.delete_prefix("history", r.instance_prefix(iid))
        self._wb.delete_prefix("inbox", r.instance_prefix(iid))
        self._wb.delete_prefix("activities", r.instance_prefix(iid))
        self._dirty.discard(iid)
        self._changed.add(iid)

    # == bookkeeping ======================================================================

    def _touch(self, live: _Live) -> None:
        live.record.last_updated_at = self._now
        self._dirty.add(live.record.instance_id)
        self._changed.add(live.record.instance_id)

    def _put_record(self, record: InstanceRecord) -> None:
        self._wb.put("instances", r.instance_key(record.instance_id), codec.encode_record(record))

    def _drop_executor(self, live: _Live) -> None:
        if live.executor is not None:
            live.executor.close()
            live.executor = None
            self._cached.pop(live.record.instance_id, None)

    def _evict_executors(self) -> None:
        excess = len(self._cached) - self.config.max_cached_orchestrations
        while excess > 0 and self._cached:
            iid, _ = self._cached.popitem(last=False)
            live = self._live.get(iid)
            if live is not None and live.executor is not None:
                live.executor.close()
                live.executor = None
            excess -= 1

    def _notify_watchers(self) -> None:
        if not self._watchers:
            return
        now = time.monotonic()
        for iid in list(self._watchers):
            watchers = self._watchers[iid]
            record = self._get_record(iid) if iid in self._changed else None
            keep = []
            for watcher in watchers:
                if record is not None and _wait_satisfied(watcher.kind, record):
                    group = watcher.reply_to
                    if isinstance(group, _WaitGroup):
                        group.satisfy(iid, replace(record))
                        if group.done:
                            self._fx.replies.append((group.reply_to, group.results()))
                        continue
                    self._fx.replies.append((watcher.reply_to, replace(record)))
                elif watcher.deadline > now:
                    keep.append(watcher)
                else:
                    # Expired: answer it, so no caller (or Ray call) waits forever.
                    self._expire(iid, watcher)
            if keep:
                self._watchers[iid] = keep
            else:
                del self._watchers[iid]
        self._watch_deadline = min(
            (w.deadline for ws in self._watchers.values() for w in ws), default=None
        )

    def _add_watcher(self, instance_id: str, watcher: _Watcher) -> None:
        self._watchers.setdefault(instance_id, []).append(watcher)
        if self._watch_deadline is None or watcher.deadline < self._watch_deadline:
            self._watch_deadline = watcher.deadline

    def _expire(self, instance_id: str, watcher: _Watcher) -> None:
        target = watcher.reply_to
        if isinstance(target, _WaitGroup):
            if target.expired:
                return
            target.expired = True
            pending = len(target.pending_ids())
            target = target.reply_to
            message = f"{pending} awaited instances did not reach the awaited state in time"
        else:
            message = f"instance {instance_id!r} did not reach the awaited state in time"
        self._fx.replies.append((target, Reply(TimeoutError(message))))

    def close(self) -> None:
        """Drop live generators and close the store."""
        for live in self._live.values():
            if live.executor is not None:
                live.executor.close()
                live.executor = None
        self._cached.clear()
        self.store.close()


_DEFERRED: Any = object()
_UNBATCHABLE = frozenset({"batch", "wait", "wait_many"})


class _WaitGroup:
    """A ``wait_many`` request: replies when its last instance is satisfied."""

    def __init__(self, instance_ids: list[str], reply_to: Any, kind: str) -> None:
        self.order = instance_ids
        self.reply_to = reply_to
        self.kind = kind
        self.records: dict[str, InstanceRecord] = {}
        self.expired = False

    def pending_ids(self) -> list[str]:
        return [i for i in dict.fromkeys(self.order) if i not in self.records]

    def satisfy(self, instance_id: str, record: InstanceRecord) -> None:
        self.records[instance_id] = record

    @property
    def done(self) -> bool:
        return len(self.records) == len(set(self.order))

    def results(self) -> list[InstanceRecord]:
        return [self.records[i] for i in self.order]


class _Converter:
    """The codec as the executor's payload converter, with the hub's payload size limit."""

    def __init__(self, max_size: int = codec.DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.max_size = max_size

    def encode(self, value: Any) -> bytes:
        return codec.encode(value, max_size=self.max_size)

    decode = staticmethod(codec.decode)


_CONVERTER = _Converter()


def _wait_satisfied(kind: str, record: InstanceRecord) -> bool:
    if kind == "start":
        return record.status is not Status.PENDING
    return record.status.is_terminal


def _rewound_history(old: list[h.HistoryEvent]) -> list[h.HistoryEvent]:
    """The history with its failures removed, as it stood before the first failure.

    Completions of work scheduled before the first failure are kept even if they arrived
    later (fan-out results are not recomputed); anything the code scheduled after the first
    failure is dropped, since the code will take another path once the failed work succeeds.
    """
    first_failure = next(
        (
            i
            for i, e in enumerate(old)
            if isinstance(e, h.TaskFailed | h.SubOrchestrationInstanceFailed)
        ),
        None,
    )
    if first_failure is None:
        return [e for e in old if not isinstance(e, h.ExecutionCompleted)]
    kept: list[h.HistoryEvent] = []
    scheduled_before: set[int] = set()
    for i, event in enumerate(old):
        if isinstance(
            event, h.TaskFailed | h.SubOrchestrationInstanceFailed | h.ExecutionCompleted
        ):
            continue
        if i < first_failure:
            if isinstance(
                event,
                h.TaskScheduled | h.TimerCreated | h.SubOrchestrationInstanceCreated | h.EventSent,
            ):
                scheduled_before.add(event.event_id)
            kept.append(event)
            continue
        if isinstance(event, h.TaskCompleted | h.SubOrchestrationInstanceCompleted):
            if event.task_scheduled_id in scheduled_before:
                kept.append(event)
        elif isinstance(event, h.TimerFired):
            if event.timer_id in scheduled_before:
                kept.append(event)
        elif isinstance(event, h.EventRaised | h.OrchestratorStarted):
            kept.append(event)
    return kept


def _encode_reply(result: Any) -> bytes:
    if isinstance(result, list) and any(isinstance(item, Reply) for item in result):
        return codec.encode({"batch": [codec.decode(_encode_reply(item)) for item in result]})
    if isinstance(result, Reply):
        return codec.encode({"error": type(result.error).__name__, "message": str(result.error)})
    if isinstance(result, InstanceRecord):
        return codec.encode({"ok": None})
    return codec.encode({"ok": result})


_REPLY_ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        InstanceAlreadyExistsError,
        InstanceNotFoundError,
        InstanceStateError,
        ValueError,
        TypeError,
        DurableError,
    )
}


def _decode_reply(data: bytes) -> Any:
    stored = codec.decode(data)
    if "batch" in stored:
        return [_decode_reply(codec.encode(item)) for item in stored["batch"]]
    if "error" in stored:
        cls = _REPLY_ERRORS.get(stored["error"], DurableError)
        return Reply(cls(stored["message"]))
    value = stored["ok"]
    return tuple(value) if isinstance(value, list) else value
