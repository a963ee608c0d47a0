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
- a batch whose commit does not fit (full disk, or ``max_map_size``) raises
  ``StorageFullError``; ``recover_from_storage_full`` (storage_full.py) answers its
  callers and rebuilds the core from the store, so the partition goes on instead of dying.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from duraray._errors import (
    FailureDetails,
    HubConfigurationError,
    SerializationError,
    StorageFullError,
    error_type_name,
)
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.orchestrations import history as h
from duraray.orchestrations.executor import ExecutorOptions, OrchestrationExecutor
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.client_ops import (  # MUTATING_OPS, ReuseIdPolicy: re-exported
    MUTATING_OPS,  # noqa: F401
    ClientOps,
    ReuseIdPolicy,  # noqa: F401
    _Watcher,
)
from duraray.runtime.engine.codec import BY_REFERENCE
from duraray.runtime.engine.dispatch import DispatchPlan
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.lifecycle import InstanceLifecycle
from duraray.runtime.engine.lifecycle import LiveInstance as _Live
from duraray.runtime.engine.records import (
    ActivityResult,
    ActivityTask,
    ClientRequest,
    Effects,
    InstanceRecord,
    Message,
    TimerRow,
)
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.engine.storage_full import (
    StorageFullRecovery,
    copy_effects,
    storage_full_error,
)
from duraray.runtime.engine.store import PartitionStore, WriteBatch

Status = h.OrchestrationStatus

#: Rounds of same-batch delivery of a partition's messages to itself (see run_batch).
LOCAL_ROUNDS = 16
#: Where the dispatch plan's learned activity costs are kept, and how often they are saved.
COSTS_KEY = b"activity_costs"
COSTS_SAVE_INTERVAL = 5.0
log = structlog.get_logger("duraray.partition")


def version_mismatch(config: HubConfig, version: str | None) -> str | None:
    """Why an instance of ``version`` must not run on this hub, or None if it may."""
    match = config.version_match
    if match == "none" or config.version is None:
        return None
    if match == "strict" and version != config.version:
        return f"instance version {version!r} differs from the hub's version {config.version!r}"
    newer = version is not None and _version_key(version) > _version_key(config.version)
    if match == "current_or_older" and newer:
        return f"instance version {version!r} is newer than the hub's version {config.version!r}"
    return None


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions part by part, numbers numerically: 1.10 > 1.9."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in version.replace("-", ".").split(".")
    )


def utc_now() -> datetime:
    """The wall clock, in UTC: the default clock of a partition."""
    return datetime.now(UTC)


class PartitionCore(ClientOps, InstanceLifecycle, EntityHost, StorageFullRecovery):
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
        self._converter = codec.Converter(self.config.max_payload_bytes)
        self._log = log.bind(hub=hub, partition=index)

        self._intake: deque[tuple[str, Any]] = deque()
        self._live: dict[str, _Live] = {}
        self._cached: OrderedDict[str, None] = OrderedDict()  # LRU of live executors
        self._timer_heap: list[tuple[int, bytes]] = []
        self._timers: dict[bytes, TimerRow] = {}
        self._out_seq: dict[int, int] = {}
        self._outbox: dict[int, dict[int, tuple[Message, float]]] = {}
        self._dedup: dict[int, int] = {}
        self._early: dict[int, dict[int, Message]] = {}
        self._next_resend_check = 0.0
        self._ready: set[str] = set()
        self._watchers: dict[str, list[_Watcher]] = {}
        self._watch_deadline: float | None = None
        self._pending_effects = Effects()
        # Set while a batch runs and cleared by its commit: a batch that raised left memory
        # ahead of the store (live generators advanced, sequences taken), so the core must
        # not run another batch; a new core recovers from the store instead.
        self._broken = False
        # For a batch whose commit does not fit (storage_full.py): what it took from the
        # intake, the recovery effects it carried, and the back-off of held work.
        self._taken: list[tuple[str, Any]] = []
        self._carried: Effects | None = None
        self._counters_before: dict[str, float] = {}
        self._full_failures = 0  # commits that did not fit, in a row
        self._hold_until = 0.0  # monotonic time until which only client requests run
        self._held_back: list[tuple[str, Any]] = []  # intake items waiting for that time
        self.counters: dict[str, float] = {
            "batches": 0,
            "items": 0,
            "episodes": 0,
            "commit_seconds": 0.0,
            "replays": 0,
            "activities_dispatched": 0,
            "messages_sent": 0,
            "activities_completed": 0,
            "activity_seconds": 0.0,
        }

        # Per-batch state, reset by run_batch.
        self._now = clock()
        self._wb = WriteBatch()
        self._fx = Effects()
        self._work: dict[str, list[h.HistoryEvent]] = {}
        self._dirty: set[str] = set()
        self._changed: set[str] = set()
        self._replied: dict[str, Any] = {}  # request id -> reply, not yet committed
        self._next_prune = 0  # when to look for expired request replies (UTC micros)

        # Which activities run inline, in batches or alone (see dispatch.py); its learned
        # costs are kept in ``meta`` so a restart does not start from nothing.
        self.dispatch = DispatchPlan(
            registry,
            inline=self.config.inline_activities,
            inline_max_s=self.config.inline_activity_max_ms / 1000,
        )
        self._costs_saved = 0.0

        self._init_entities()
        self._check_meta()
        stored_costs = self.store.get("meta", COSTS_KEY)
        if stored_costs is not None:
            try:
                self.dispatch.restore(codec.decode(stored_costs))
            except Exception:  # only a hint: a record that cannot be read is relearned
                self._log.warning("stored activity costs unreadable; learning them anew")
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

    def submit_resend(self, destination: int) -> None:
        """Resend every unacknowledged message to ``destination`` in the next batch (its
        transport may have lost some, e.g. a connection that closed under them)."""
        self._intake.append(("resend", destination))

    def submit_activity_results(self, results: list[ActivityResult]) -> None:
        """Queue results returned by activity workers."""
        self._intake.append(("results", results))

    # == scheduling hints for the shell ===================================================

    def has_work(self) -> bool:
        """True if ``run_batch`` would do something now."""
        if self._hold_until and self.holding_back():
            return self.requests_queued()  # backing off after a commit that did not fit
        if self._held_back:
            return True
        if self._intake or self._ready or self._pending_effects:
            return True
        if self._watch_deadline is not None and self._watch_deadline <= time.monotonic():
            return True  # an expired wait to answer
        due = self.next_due()
        return due is not None and due <= self.clock()

    def next_due(self) -> datetime | None:
        """When the earliest timer is due (None if there is none, or while held work
        backs off after a commit that did not fit: the shell then polls ``has_work``)."""
        if self._hold_until and self.holding_back():
            return None
        heap = self._timer_heap
        while heap and heap[0][1] not in self._timers:
            heapq.heappop(heap)
        return codec.from_utc_micros(heap[0][0]) if heap else None

    def resend_due(self) -> bool:
        """True if some message has waited longer than the resend interval for its ack."""
        if self._hold_until and self.holding_back():
            return False
        now = time.monotonic()
        if not self._outbox or now < self._next_resend_check:
            return False
        limit = now - self.config.resend_interval
        if any(sent < limit for box in self._outbox.values() for _, sent in box.values()):
            return True
        self._next_resend_check = now + self.config.resend_interval / 4
        return False

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
        # Kept until the commit: a batch that does not fit gives these back (storage_full.py).
        self._carried = copy_effects(self._fx) if self._fx else None
        self._counters_before = dict(self.counters)
        self._taken = []
        if self._held_back and not self.holding_back():
            self._intake.extendleft(reversed(self._held_back))  # retried now, in order
            self._held_back = []
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
            self._taken.append((kind, item))
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
            elif kind == "resend":
                self._resend_all(item)
        self._fire_due_timers()
        self._process_entities()
        self._prune_request_replies()

        self._run_episodes()
        # Messages this partition sent to itself are applied in this same batch, a few
        # rounds deep: a call to a local entity, its reply and the caller's next step then
        # cost one commit instead of one per hop. They still pass through the outbox and
        # dedup (written and acknowledged in this transaction), so nothing changes for
        # recovery; what is left after the last round goes out as usual.
        for _ in range(LOCAL_ROUNDS):
            local = self._fx.messages.pop(self.index, None)
            if not local:
                break
            self.counters["local_rounds"] = self.counters.get("local_rounds", 0) + 1
            self._on_messages(self.index, local)
            upto = self._fx.acks.pop(self.index, None)
            if upto is not None:
                self._on_ack(self.index, upto)
            self._process_entities()
            self._run_episodes()

        for iid in self._dirty:
            live = self._live.get(iid)
            if live is not None:
                self._put_record(live.record)
        self._save_costs()

        if self._wb:
            started = time.perf_counter()
            try:
                self.store.commit(self._wb)
            except StorageFullError as exc:
                # Nothing was written; the shell answers the callers and rebuilds the core
                # from the store (recover_from_storage_full) instead of dying.
                raise storage_full_error(self, exc) from exc
            self._full_failures = 0
            self._hold_until = 0.0
            self.counters["commit_seconds"] += time.perf_counter() - started
        self._broken = False
        self._taken, self._carried = [], None
        self.counters["batches"] += 1
        self.counters["items"] += taken

        self._resend_overdue()
        self._notify_watchers()
        self._evict_executors()
        fx = self._fx
        self._fx = Effects()
        self.counters["activities_dispatched"] += len(fx.activities)
        fx.dispatches = self.dispatch.plan(fx.activities)
        return fx

    def _save_costs(self) -> None:
        """Store the dispatch plan's learned costs, riding on a batch that commits anyway,
        at most every few seconds."""
        if not self.dispatch.dirty or not self._wb:
            return
        now = time.monotonic()
        if now - self._costs_saved < COSTS_SAVE_INTERVAL:
            return
        self._costs_saved = now
        try:
            self._wb.put("meta", COSTS_KEY, codec.encode(self.dispatch.snapshot()))
        except Exception:  # only a hint: never let it fail the batch
            self._log.warning("activity costs not saved", exc_info=True)

    def _run_episodes(self) -> None:
        work, self._work = self._work, {}
        for iid, events in work.items():
            live = self._live.get(iid)
            if live is not None:
                self._run_episode(live, events)

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
        version = meta.get("format_version", 1)
        if version < r.FORMAT_VERSION:
            # Upgrades run once, in one transaction with the new version number.
            wb = WriteBatch()
            if version < 2:
                self._build_live_index(wb)
            if version < 3:
                self._index_request_replies(wb)
            wb.put("meta", b"format_version", codec.encode(r.FORMAT_VERSION))
            self.store.commit(wb)

    def _build_live_index(self, wb: WriteBatch) -> None:
        """Format 1 -> 2: index the non-terminal instances."""
        for key, value in self.store.scan("instances"):
            if not codec.decode_record(InstanceRecord, value).status.is_terminal:
                wb.put("live", key, b"")

    def _index_request_replies(self, wb: WriteBatch) -> None:
        """Format 2 -> 3: give every stored reply a time index entry, stamped now (when
        it was stored is unknown), so it is pruned one retention window from now."""
        now = max(0, codec.utc_micros(self.clock()))
        for key, _ in self.store.scan("dedup", prefix=b"r"):
            wb.put("dedup", r.dedup_expiry_key(now, key[1:].decode()), b"")

    def _recover(self) -> None:
        # Only the ``live`` index is read: recovery time follows the unfinished instances,
        # not every instance the partition ever ran.
        for key, _ in self.store.scan("live"):
            value = self.store.get("instances", key)
            if value is None:
                continue
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

    def _send_event(
        self, instance_id: str, event: h.HistoryEvent, execution_id: str | None
    ) -> None:
        self._send(
            partition_for(instance_id, self.partition_count),
            "event",
            instance_id,
            execution_id=execution_id,
            event=codec.encode_event(event),
        )

    def _on_messages(self, source: int, messages: list[Message]) -> None:
        last = self._dedup.get(source, 0)
        # Ray may deliver two calls from one sender out of order: messages past a gap are
        # held (in memory only; the sender's outbox still has them) until the gap fills.
        early = self._early.setdefault(source, {})
        for msg in messages:
            if msg.seq > last:
                early[msg.seq] = msg
        applied = last
        while applied + 1 in early:
            applied += 1
            self._apply_message(early.pop(applied))
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
        # The outbox is walked a few times per resend interval, not on every batch: it
        # can hold thousands of unacknowledged messages during a large fan-out.
        now = time.monotonic()
        if now < self._next_resend_check:
            return
        self._next_resend_check = now + self.config.resend_interval / 4
        limit = now - self.config.resend_interval
        for destination, box in self._outbox.items():
            overdue = sorted(seq for seq, (_, sent) in box.items() if sent < limit)
            if overdue:
                self._resend(destination, overdue)

    def _resend_all(self, destination: int) -> None:
        box = self._outbox.get(destination)
        if box:
            self._resend(destination, sorted(box))

    def _resend(self, destination: int, seqs: list[int]) -> None:
        """Send the outbox messages ``seqs`` to ``destination`` again in this batch."""
        box = self._outbox[destination]
        now = time.monotonic()
        resend = self._fx.messages.setdefault(destination, [])
        for seq in seqs:
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
        self._wb.put("live", r.live_key(instance_id), b"")
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
        mismatch = version_mismatch(self.config, record.version)
        if mismatch is not None:
            self._on_version_mismatch(live, events, mismatch)
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

    def _on_version_mismatch(self, live: _Live, events: list[h.HistoryEvent], message: str) -> None:
        """This hub's code must not run the instance: fail it, or leave it for another."""
        if self.config.version_failure == "reject":
            # Kept, unapplied, in the inbox: a hub whose version matches (after a
            # redeploy) picks the instance up when it opens the store.
            live.buffering = True
            for event in events:
                self._to_inbox(live, event)
            self._touch(live)
            return
        failure = FailureDetails(message=message, error_type="VersionMismatch", non_retriable=True)
        completion = h.ExecutionCompleted(
            timestamp=self._now, status=Status.FAILED, failure=failure
        )
        self._append_history(
            live, [h.OrchestratorStarted(timestamp=self._now), *events, completion]
        )
        self._complete(live, completion)

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
                fired = h.TimerFired(
                    timestamp=self._now, timer_id=row.timer_id, fire_at=row.fire_at
                )
                self._deliver(row.instance_id, fired, row.execution_id)

    def _on_activity_result(self, result: ActivityResult) -> None:
        if result.name in self.registry.activities:
            if result.failure is None:
                self.dispatch.observe(result.name, result.duration, result.cpu, cold=result.cold)
            else:
                # A failure says little of what a run costs (it may fail fast while a
                # dependency is down); it ends a probe all the same.
                self.dispatch.forget(result.name)
        live = self._live.get(result.instance_id)
        if (
            live is None
            or live.record.execution_id != result.execution_id
            or result.task_id not in live.activities
        ):
            return  # a duplicate, or for an execution that has ended: recorded once already
        live.activities.discard(result.task_id)
        self._wb.delete("activities", r.seq_key(result.instance_id, result.task_id))
        # Totals, so a scraper derives the mean activity run time per partition.
        self.counters["activities_completed"] += 1
        self.counters["activity_seconds"] += result.duration
        event: h.HistoryEvent
        limit = self.config.max_payload_bytes
        if result.failure is None and result.result is not None and len(result.result) > limit:
            # Workers encode with the default limit; the hub's own limit is enforced here.
            result = replace(
                result,
                result=None,
                failure=FailureDetails(
                    message=f"activity result of {len(result.result)} bytes exceeds the "
                    f"limit of {limit} bytes (max_payload_bytes); {BY_REFERENCE}",
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

    def close(self) -> None:
        """Drop live generators and close the store."""
        for live in self._live.values():
            if live.executor is not None:
                live.executor.close()
                live.executor = None
        self._cached.clear()
        self.store.close()
