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
  callers and rebuilds the core from the store, so the partition goes on instead of dying;
- a batch that raises anything else is answered by ``recover_from_failure`` (poison.py):
  a core rebuilt from the store applies its work one item at a time and sets aside the
  item that fails alone, so one bad item cannot crash-loop the partition.

The core is composed of components that each own their state (components.py and
docs/ARCHITECTURE.md): the outbox (the exactly-once channel), the timers, the instance
table, the entity host, the actions, the lifecycle, the episodes, the client operations,
the parked waits, the parked items and the poison handler, plus the dispatch plan and
the episode watch (watchdog.py). ``run_batch`` makes one ``Batch`` value and hands it to
them through ``Work``; no component reads another's fields. Time and ids come from one
injected ``Clock``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from duraray._errors import StorageFullError
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.runtime import tracing
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.client_ops import MUTATING_OPS
from duraray.runtime.engine.clock import Clock, ClockLike, as_clock, utc_now
from duraray.runtime.engine.components import compose
from duraray.runtime.engine.costs import COSTS_KEY
from duraray.runtime.engine.dispatch import DispatchPlan
from duraray.runtime.engine.episodes import version_mismatch
from duraray.runtime.engine.gate import ActivityGate
from duraray.runtime.engine.intake import Ack, IntakeItem, Messages, Request, Resend, Results
from duraray.runtime.engine.lanes import ResultLane
from duraray.runtime.engine.migrations import open_store
from duraray.runtime.engine.poison import (
    MAX_POISON_IN_A_ROW,
    Isolation,
    ReadyUnit,
    TimerUnit,
    Unit,
    row_target,
    split_units,
)
from duraray.runtime.engine.records import (
    ActivityResult,
    ClientRequest,
    Effects,
    Message,
    Reply,
    ReuseIdPolicy,
)
from duraray.runtime.engine.recovery import recover
from duraray.runtime.engine.storage_full import (
    HoldBack,
    abandon_callers,
    answer_without_commit,
    copy_effects,
    split_taken,
    storage_full_error,
)
from duraray.runtime.engine.store import PartitionStore

# Re-exported: imported from here by the shells and by earlier code.
__all__ = [
    "COSTS_KEY",
    "MUTATING_OPS",
    "PartitionCore",
    "ReuseIdPolicy",
    "utc_now",
    "version_mismatch",
]

#: Rounds of same-batch delivery of a partition's messages to itself (see run_batch).
LOCAL_ROUNDS = 16
log = structlog.get_logger("duraray.partition")


#: Intake items that are no sign of a healthy partition when they commit (poison.py).
_TRIVIAL = (Ack, Resend)


def _progress(taken: list[IntakeItem]) -> bool:
    """True if a committed batch applied real work (not only acks and resend requests)."""
    return any(not isinstance(item, _TRIVIAL) for item in taken)


class PartitionCore:
    """The logic of one partition over one store; see the module docstring."""

    def __init__(
        self,
        *,
        hub: str,
        index: int,
        store: PartitionStore,
        registry: Registry,
        config: HubConfig | None = None,
        clock: ClockLike | None = None,
        dispatch: DispatchPlan | None = None,
        intake: deque[IntakeItem] | None = None,
        gate: ActivityGate | None = None,
        lane: ResultLane | None = None,
    ) -> None:
        """Open the partition over ``store`` and recover what it holds.

        ``clock`` is the source of time and ids (a bare function is the wall clock).
        ``dispatch``, ``intake``, ``gate`` and ``lane`` are taken over from an earlier core of the same
        partition (``recover_from_failure``, ``recover_from_storage_full``); a new core
        has its own.
        """
        self.hub = hub
        self.index = index
        self.config = config or HubConfig()
        self.partition_count = self.config.partitions
        self.store = store
        self.registry = registry
        self.clock: Clock = as_clock(clock)
        self._log = log.bind(hub=hub, partition=index)
        cfg = self.config

        self._intake: deque[IntakeItem] = intake if intake is not None else deque()
        #: Results held back for a fair share of each batch (lanes.py).
        self.lane = lane if lane is not None else ResultLane()
        #: The host's own figures for ``stats`` (the Ray shell: shared workers started).
        self.host_stats: Callable[[], dict[str, Any]] | None = None
        self._pending_effects = Effects()
        self._bad_rows: list[tuple[str, bytes, BaseException]] = []  # parked next batch
        # Set while a batch runs and cleared by its commit: a batch that raised left memory
        # ahead of the store (live generators advanced, sequences taken), so the core must
        # not run another batch; a new core recovers from the store instead.
        self._broken = False
        # For a batch whose commit does not fit (storage_full.py): what it took from the
        # intake, the recovery effects it carried, the counters before it, the back-off.
        self._taken: list[IntakeItem] = []
        self._carried: Effects | None = None
        self._counters_before: dict[str, float] = {}
        self.hold = HoldBack()
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
        # One unit per batch while the work of a failed batch is applied alone (poison.py).
        self.isolation = Isolation()
        # The components, each over its own state (components.py); see the module
        # docstring. They share the counters dict: it is changed in place, never replaced.
        c = compose(
            hub=hub,
            index=index,
            store=store,
            registry=registry,
            config=cfg,
            clock=self.clock,
            counters=self.counters,
            dispatch=dispatch,
            gate=gate,
            stats=self.stats,
        )
        self.dispatch = c.dispatch
        self.gate = c.gate
        self.costs = c.costs
        self.outbox = c.outbox
        self.timers = c.timers
        self.waits = c.waits
        self.instances = c.instances
        self.entities = c.entities
        self.lifecycle = c.lifecycle
        self.episodes = c.episodes
        self.parked = c.parked
        self.poison = c.poison
        self.client_ops = c.client_ops
        self.work = c.work
        self.watch = c.watch

        open_store(store, hub=hub, index=index, partitions=self.partition_count, clock=self.clock)
        if dispatch is None:
            self.costs.restore()
        self._recover()

    # == intake (thread-safe: deque appends) ==============================================

    def submit_request(self, request: ClientRequest) -> None:
        """Queue a client request; its reply comes out of a later batch's effects."""
        self._intake.append(Request(request))

    def submit_messages(self, source: int, messages: list[Message]) -> None:
        """Queue messages from partition ``source`` (any order; applied by sequence)."""
        self._intake.append(Messages(source, messages))

    def submit_ack(self, destination: int, upto: int) -> None:
        """Partition ``destination`` has applied our messages up to sequence ``upto``."""
        self._intake.append(Ack(destination, upto))

    def submit_resend(self, destination: int) -> None:
        """Resend every unacknowledged message to ``destination`` in the next batch (its
        transport may have lost some, e.g. a connection that closed under them)."""
        self._intake.append(Resend(destination))

    def submit_activity_results(self, results: list[ActivityResult]) -> None:
        """Queue results returned by activity workers."""
        self._intake.append(Results(results))

    # == scheduling hints for the shell ===================================================

    def has_work(self) -> bool:
        """True if ``run_batch`` would do something now."""
        if self.holding_back():
            return self.requests_queued()  # backing off after a commit that did not fit
        if self.hold.held or self.isolation.active or self._bad_rows:
            return True
        if self._intake or self.lane or self.instances.has_ready or self._pending_effects:
            return True
        deadline = self.waits.deadline
        if deadline is not None and deadline <= self.clock.monotonic():
            return True  # an expired wait to answer
        due = self.timers.next_due()
        return due is not None and due <= self.clock.now()

    def next_due(self) -> datetime | None:
        """When the earliest timer is due (None if there is none, or while held work
        backs off after a commit that did not fit: the shell then polls ``has_work``)."""
        if self.holding_back():
            return None
        return self.timers.next_due()

    def resend_due(self) -> bool:
        """True if some message has waited longer than the resend interval for its ack."""
        if self.holding_back():
            return False
        return self.outbox.resend_due(self.clock.monotonic())

    def holding_back(self) -> bool:
        """True while held work waits for its retry after a commit that did not fit."""
        return bool(self.hold.until) and self.hold.holding(self.clock.monotonic())

    def requests_queued(self) -> bool:
        """True if a client request waits in the intake (any thread may be appending)."""
        # list() copies the deque without running Python code in between, so a thread
        # appending meanwhile cannot break the iteration.
        return any(isinstance(item, Request) for item in list(self._intake))

    # == the batch ========================================================================

    def run_batch(self) -> Effects:
        """Drain, apply, commit once, then return the batch's effects."""
        if self._broken:
            raise RuntimeError(
                f"partition {self.index} is unusable after a failed batch or commit: its memory "
                "is ahead of its store; open a new PartitionCore on the store to recover"
            )
        self._broken = True
        b = Batch(now=self.clock.now(), mono=self.clock.monotonic())
        b.fx, self._pending_effects = self._pending_effects, Effects()
        # Kept until the commit: a batch that does not fit gives these back (storage_full.py).
        self._carried = copy_effects(b.fx) if b.fx else None
        self._counters_before = dict(self.counters)
        self._taken = []
        if self.hold.held and not self.hold.holding(b.mono):
            self._intake.extendleft(reversed(self.hold.held))  # retried now, in order
            self.hold.held = []
        if self._bad_rows:
            self._park_bad_rows(b)

        taken = 0
        isolated = self.isolation.active
        progress = False  # whether this batch applies real work (see Isolation.applied)
        if isolated:
            taken = self._run_isolated(b)
            current = self.isolation.current
            progress = current is not None and not isinstance(current, _TRIVIAL)
        else:
            for iid in self.instances.take_ready():
                progress = True
                self.instances.drain_inbox(b, iid)
            taken = self.lane.drain(
                b, self._intake, self.work.item, self._taken, self.config.max_batch_items
            )
            for key, row in self.timers.pop_due(b):
                progress = True
                self.work.timer(b, key, row)
            progress = progress or _progress(self._taken)
        self.entities.process(b)
        self.client_ops.prune_request_replies(b)

        self.episodes.run_all(b)
        # Messages this partition sent to itself are applied in this same batch, a few
        # rounds deep: a call to a local entity, its reply and the caller's next step then
        # cost one commit instead of one per hop. They still pass through the outbox and
        # dedup (written and acknowledged in this transaction), so nothing changes for
        # recovery; what is left after the last round goes out as usual. Not while work is
        # applied alone: a message to itself is then a unit of its own (it comes back
        # through the intake), so a poison one is not blamed on the unit that sent it.
        for _ in range(0 if isolated else LOCAL_ROUNDS):
            local = b.fx.messages.pop(self.index, None)
            if not local:
                break
            self.counters["local_rounds"] = self.counters.get("local_rounds", 0) + 1
            self.outbox.receive(b, self.index, local, lambda msg: self.work.message(b, msg))
            upto = b.fx.acks.pop(self.index, None)
            if upto is not None:
                self.outbox.acknowledged(b, self.index, upto)
            self.entities.process(b)
            self.episodes.run_all(b)

        self.instances.write_dirty(b)
        self.instances.stage_counts(b)
        self.costs.save(b)

        if b.wb:
            # A metric only, so the process clock: it never steers the core.
            started = time.perf_counter()
            try:
                self.store.commit(b.wb)
            except StorageFullError as exc:
                # Nothing was written; the shell answers the callers and rebuilds the core
                # from the store (recover_from_storage_full) instead of dying.
                raise storage_full_error(self.hub, self.index, exc) from exc
            self.hold.committed()
            self.counters["commit_seconds"] += time.perf_counter() - started
            self.instances.committed(b)
        self._broken = False
        self.isolation.applied(progress)
        self._taken, self._carried = [], None
        self.counters["batches"] += 1
        self.counters["items"] += taken
        return self._after_commit(b)

    def _after_commit(self, b: Batch) -> Effects:
        """The committed batch's effects, made ready to release. Nothing here may raise:
        the batch is durable, and its effects must go out whatever fails now."""
        for step in (
            lambda: self.outbox.resend_overdue(b),
            lambda: self.waits.notify(b, self.instances.get_record),
            self.instances.evict_executors,
            self.entities.trim_cache,
            lambda: tracing.emit(b.spans),  # after the commit: once (engine/spans.py)
        ):
            try:
                step()
            except Exception:
                self._log.exception("a step after the commit failed; the batch stands")
        fx = b.fx
        try:  # at most max_activities_in_flight out at once (gate.py)
            for iid in b.ended:  # what ended instances still had waiting never runs
                live = self.instances.get(iid)
                self.gate.forget(iid, live.record.execution_id if live else None)
            fx.activities = self.gate.admit(fx.activities, self.instances.waits_for)
        except Exception:
            # Their rows are stored: a restart of the partition sends them again.
            self._log.exception("activity gate failed; its activities wait for a restart")
            fx.activities = []
        self.counters["activities_dispatched"] += len(fx.activities)
        try:
            fx.dispatches = self.dispatch.plan(fx.activities)
        except Exception:
            # Their rows are stored: they go out with the next batch's plan, and give
            # back the slots the gate gave them meanwhile.
            self._log.exception("activity dispatch plan failed; retried next batch")
            self.gate.give_back(fx.activities)
            self._pending_effects.activities.extend(fx.activities)
            fx.activities = []
        return fx

    def _run_isolated(self, b: Batch) -> int:
        """Apply one unit of a failed batch's work, or deal with a poison unit."""
        iso = self.isolation
        if iso.poison is not None:
            unit, exc, tries = iso.poison
            self.poison.deal(b, unit, exc, tries)
            return 1
        unit = iso.queue.popleft()
        iso.current = unit
        if not isinstance(unit, ReadyUnit | TimerUnit):
            self._taken.append(unit)
        self.work.unit(b, unit)
        return 1

    def stats(self) -> dict[str, Any]:
        """What the partition holds and has done (the ``stats`` client operation)."""
        live = self.instances.values()
        by_status: dict[str, int] = {}
        for instance in live:
            status = instance.record.status.value
            by_status[status] = by_status.get(status, 0) + 1
        return {
            "partition": self.index,
            "counters": {**self.counters, "blocking_episodes": self.watch.count},
            "live_instances": by_status,
            "cached_executors": self.instances.cached_executors,
            "timers": len(self.timers),
            "activities_in_flight": sum(len(v.activities) for v in live),
            # Activities of unknown cost waiting for a probe of their kind (dispatch.py).
            "activities_held": self.dispatch.held,
            # Activities beyond max_activities_in_flight, waiting for a slot (gate.py).
            "activities_waiting": self.gate.waiting,
            "outbox": len(self.outbox),
            "queue_depth": len(self._intake),
            "results_held": len(self.lane),
            # Items set aside because applying them failed (poison.py).
            "parked": self.parked.count,
            **(self.host_stats() if self.host_stats is not None else {}),
        }

    # == recovery =========================================================================

    def _recover(self) -> None:
        found = recover(
            self.store,
            self.instances,
            self.timers,
            self.outbox,
            mono=self.clock.monotonic(),
            pending=self._pending_effects,
        )
        self._bad_rows = found.bad_rows
        for db, key, exc in found.bad_rows:
            self._log.error("unreadable row skipped", db=db, key=key[:64], error=repr(exc))
        if self._pending_effects:
            self._log.info(
                "partition recovered",
                instances=len(self.instances),
                timers=len(self.timers),
                activities=len(self._pending_effects.activities),
                messages=found.resent,
            )

    def _park_bad_rows(self, b: Batch) -> None:
        for db, key, exc in self._bad_rows:
            self.parked.park(b, "row", row_target(db, key), exc, key=f"row:{db}:{key.hex()}")
        self._bad_rows = []

    # == a batch that did not fit (storage_full.py) =========================================

    def _successor(self) -> PartitionCore:
        """A new core over the same store, recovered from it, taking over what this one
        holds in memory only (this core must not be used again)."""
        # Live generators ran ahead of the store: close them (as an eviction would).
        self.instances.close_executors()
        # Learned activity costs and the activities held for a probe stay (memory only,
        # and what they hold was released by committed batches); the costs are saved
        # again. One intake serves both cores: a thread still holding this core (an
        # activity delivering its result) appends to the queue the new core drains.
        self.dispatch.dirty = True
        core = type(self)(
            hub=self.hub,
            index=self.index,
            store=self.store,
            registry=self.registry,
            config=self.config,
            clock=self.clock,
            dispatch=self.dispatch,
            intake=self._intake,
            gate=self.gate,
            lane=self.lane,
        )
        core._pending_effects = self._carried if self._carried is not None else Effects()
        core.counters.clear()  # as they were before the failed batch (the dict is shared)
        core.counters.update(self._counters_before or self.counters)
        core.costs.saved_at = self.costs.saved_at
        core.client_ops.next_prune = self.client_ops.next_prune
        core.watch.adopt(self.watch)
        core.host_stats = self.host_stats
        return core

    def _move_waits(self, core: PartitionCore, requests: list[ClientRequest]) -> None:
        # Waits of earlier batches move over; those of the failed batch's requests are
        # registered again when the new core answers their requests.
        again = {id(req.reply_to) for req in requests}
        for iid, watcher in self.waits.items():
            if id(watcher.caller) not in again:
                core.waits.add(iid, watcher)

    def recover_from_failure(self, error: Exception) -> tuple[PartitionCore, Effects]:
        """After ``run_batch`` raised ``error`` (anything but ``StorageFullError``): a new
        core rebuilt from the store that applies the failed batch's work one unit per
        batch, and deals with a unit that fails alone (poison.py). Returns it and the
        effects to release now (none). Raises ``error`` again when failures no longer
        look like one bad item (several poison units in a row): the shell then restarts
        the partition, as it would have before."""
        iso = self.isolation
        isolation = iso.after_failure(error)  # raises it again if it looks systemic
        log_fields: dict[str, Any] = {"error": f"{type(error).__name__}: {error}"}
        core = self._successor()
        core.counters["rebuilds"] = core.counters.get("rebuilds", 0) + 1
        core.hold = HoldBack(self.hold.failures, self.hold.until, list(self.hold.held))
        if iso.poison is None and iso.current is None:
            # A batch of many items failed: its work is applied again, one unit per batch:
            # the runnable instances, the due timers, then what it took from the intake.
            units: list[Unit] = [ReadyUnit(i) for i in core.instances.take_ready()]
            units += [TimerUnit(k) for k in core.timers.due_keys(core.clock.now())]
            units += split_units(self._taken)
            isolation.queue = deque(units)
            log_fields["units"] = len(units)
            if not units:
                # Nothing to blame: the batch's own steps failed. A few such in a row are
                # the partition's failure, not an item's.
                isolation.failures_without_progress += 1
                if isolation.failures_without_progress >= MAX_POISON_IN_A_ROW:
                    raise error
        core.isolation = isolation
        self._move_waits(core, [i.request for i in self._taken if isinstance(i, Request)])
        core._log.error(
            "partition batch failed; rebuilt from the store, applying its work one item at a time",
            exc_info=error,
            **log_fields,
        )
        return core, Effects()

    def recover_from_storage_full(self, error: StorageFullError) -> tuple[PartitionCore, Effects]:
        """After ``run_batch`` raised ``error``: a new core over the same store, recovered
        from it, taking over this core's intake, and the effects to release now (the
        answers to the failed batch's client requests). This core must not be used again.
        See storage_full.py for what happens to each item of the failed batch."""
        core = self._successor()
        core.counters["storage_full"] = core.counters.get("storage_full", 0) + 1
        # Isolated work goes on after the back-off; the unit being applied is among the
        # items taken (requests answered, the rest held back) unless it was no intake item.
        iso = self.isolation
        core.isolation = Isolation(
            iso.queue,
            poison=iso.poison,
            poison_targets=set(iso.poison_targets),
            failures_without_progress=iso.failures_without_progress,
        )
        if iso.current is not None and not self._taken:
            core.isolation.queue.appendleft(iso.current)
            core.isolation.attempts = iso.attempts
        delay = core.hold.failed_again(self.hold, self.clock.monotonic())
        requests, give_back = split_taken(self._taken)
        core.hold.held = self.hold.held + give_back  # oldest first

        self._move_waits(core, requests)

        b = Batch(now=core.clock.now(), mono=core.clock.monotonic())
        fx = answer_without_commit(core.client_ops, core.store, b, requests, str(error))
        if b.wb:  # a read never writes; if one did, it is not committed
            core._log.warning("writes of a read dropped", ops=len(b.wb))
        core._log.warning(
            "partition could not commit: storage full; recovered from the store",
            error=str(error),
            refused_requests=sum(isinstance(res, Reply) for _, res in fx.replies),
            given_back=len(give_back),
            retry_in_s=delay,
        )
        return core, fx

    def abandon_callers(self) -> list[Any]:
        """The callers this core holds and will now never answer, because its shell cannot
        go on: those of the batch that failed, of the queued requests and of the waits.
        Queued requests are taken out of the intake."""
        failed: list[IntakeItem] = list(self._taken) if self._broken else []
        # Requests of a failed batch still waiting to be applied alone (poison.py).
        iso = self.isolation
        failed += [unit for unit in iso.queue if isinstance(unit, Request)]
        if iso.poison is not None and isinstance(iso.poison[0], Request):
            failed.append(iso.poison[0])
        return abandon_callers(failed, self._intake, self.waits)

    def close(self) -> None:
        """Drop live generators and close the store."""
        self.watch.close()
        self.instances.close_executors()
        self.store.close()
