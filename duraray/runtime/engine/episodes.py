"""Instances created, events delivered, episodes run.

``Episodes`` creates instances (a client's start, a parent's sub-orchestration, an
entity's start), delivers events to them (results of activities, timers, messages,
raised events) and, at the batch's episode step, runs each instance's replay executor
over the events it got and carries out the actions it yields. The end of an execution
is the lifecycle's part.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import datetime

from duraray._errors import FailureDetails, SerializationError, error_type_name
from duraray.config import HubConfig
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec, spans
from duraray.runtime.engine import records as r
from duraray.runtime.engine.actions import Actions
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.clock import Clock
from duraray.runtime.engine.codec import BY_REFERENCE
from duraray.runtime.engine.dispatch import DispatchPlan
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.instances import InstanceTable, LiveInstance
from duraray.runtime.engine.lifecycle import Lifecycle
from duraray.runtime.engine.messages import DeliverEvent, ParentRef, StartOrchestration
from duraray.runtime.engine.outbox import Outbox
from duraray.runtime.engine.records import ActivityResult, InstanceRecord, TimerRow
from duraray.runtime.engine.watchdog import EpisodeWatch

Status = h.OrchestrationStatus


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


class Episodes:
    """Creation, delivery and episodes of a partition's instances (see the module docstring)."""

    def __init__(
        self,
        *,
        config: HubConfig,
        table: InstanceTable,
        actions: Actions,
        lifecycle: Lifecycle,
        entities: EntityHost,
        outbox: Outbox,
        dispatch: DispatchPlan,
        activity_names: Collection[str],
        clock: Clock,
        counters: dict[str, float],
        watch: EpisodeWatch,
    ) -> None:
        self._config = config
        self._table = table
        self._actions = actions
        self._lifecycle = lifecycle
        self._entities = entities
        self._outbox = outbox
        self._dispatch = dispatch
        self._activity_names = activity_names
        self._clock = clock
        self._counters = counters
        self._watch = watch

    # -- creation ---------------------------------------------------------------------------

    def create(
        self,
        b: Batch,
        instance_id: str,
        name: str,
        input: bytes | None,
        *,
        version: str | None = None,
        tags: dict[str, str] | None = None,
        start_at: datetime | None = None,
        parent: ParentRef | None = None,
        trace: dict[str, str] | None = None,
    ) -> LiveInstance:
        """A new instance (replacing a stored terminal one), started in this batch or
        at ``start_at``; ``trace``: the carrier of the span that started it, if traced."""
        table = self._table
        old = table.get_record(instance_id)
        if old is not None:
            self._lifecycle.delete(b, old)
        now = b.now
        execution_id = self._clock.new_id()
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
            trace_context=spans.execution_context(trace, now),
        )
        if parent is not None:
            record.parent_instance_id = parent.instance_id
            record.parent_execution_id = parent.execution_id
            record.parent_task_id = parent.task_id
        live = LiveInstance(record)
        table.add(live)
        b.wb.put("by_created", r.created_key(codec.utc_micros(now), instance_id), b"")
        b.wb.put("live", r.live_key(instance_id), b"")
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
            trace_context=record.trace_context,
        )
        if start_at is not None and start_at > now:
            live.buffering = True
            table.to_inbox(b, live, started)
            row = TimerRow("start", instance_id, execution_id, 0, start_at)
            self._actions.add_timer(b, live, row)
        else:
            b.add_work(instance_id, started)
        table.touch(b, live)
        return live

    def start(self, b: Batch, start: StartOrchestration) -> None:
        """A start from a parent orchestration or an entity operation."""
        existing = self._table.get(start.instance_id)
        parent = start.parent
        if parent is None:
            # Started by an entity operation: a running instance with that id is kept.
            if existing is None:
                self.create(b, start.instance_id, start.name, start.input, trace=start.trace)
            return
        if existing is not None:
            failure = FailureDetails(
                message=f"an orchestration instance with id {start.instance_id!r} is already "
                "running",
                error_type="duraray.InstanceAlreadyExistsError",
                non_retriable=True,
            )
            event = h.SubOrchestrationInstanceFailed(
                timestamp=b.now, task_scheduled_id=parent.task_id, failure=failure
            )
            self._outbox.send(b, DeliverEvent(parent.instance_id, event, parent.execution_id))
            return
        self.create(
            b,
            start.instance_id,
            start.name,
            start.input,
            version=start.version,
            parent=parent,
            trace=start.trace,
        )

    # -- delivery ---------------------------------------------------------------------------

    def deliver(
        self, b: Batch, instance_id: str, event: h.HistoryEvent, execution_id: str | None
    ) -> None:
        """Give ``event`` to the instance: to this batch's episode, or to its inbox."""
        table = self._table
        live = table.get(instance_id)
        if live is None or (execution_id is not None and live.record.execution_id != execution_id):
            # Unknown, finished or an earlier execution: events to it are dropped (so
            # send_event never fails), but a lock granted to it must be given back.
            if isinstance(event, h.EntityLockGranted):
                self._entities.unlock_all(b, event.critical_section_id, list(event.lock_set))
            return
        relock = live.record.relock
        if (
            relock
            and isinstance(event, h.EntityLockGranted)
            and event.critical_section_id in relock
        ):
            # A lock re-acquired after a rewind: the history already has its grant.
            relock.remove(event.critical_section_id)
            live.record.relock = relock or None
            b.dirty.add(instance_id)
            if not relock:
                table.mark_ready(instance_id)
            return
        if live.buffering:
            table.to_inbox(b, live, event)
        else:
            b.add_work(instance_id, event)

    def on_timer(self, b: Batch, key: bytes, row: TimerRow) -> None:
        """An orchestration timer or a delayed start is due."""
        live = self._table.get(row.instance_id)
        if live is None or live.record.execution_id != row.execution_id:
            return
        live.timers.discard(key)
        if row.kind == "start":
            # Drained next batch, after this one commits: events raised to the pending
            # instance in this batch sit in uncommitted inbox rows.
            if live.record.status is Status.PENDING:
                self._table.mark_ready(row.instance_id)
        else:
            fired = h.TimerFired(timestamp=b.now, timer_id=row.timer_id, fire_at=row.fire_at)
            self.deliver(b, row.instance_id, fired, row.execution_id)
            spans.timer_fired(b, live.record, row)

    def on_activity_result(self, b: Batch, result: ActivityResult) -> None:
        """An activity finished: its completion or failure goes to its instance, once."""
        if result.name in self._activity_names:
            if result.failure is None:
                self._dispatch.observe(result.name, result.duration, result.cpu, cold=result.cold)
            else:
                # A failure says little of what a run costs (it may fail fast while a
                # dependency is down); it ends a probe all the same.
                self._dispatch.forget(result.name)
        live = self._table.get(result.instance_id)
        if (
            live is None
            or live.record.execution_id != result.execution_id
            or result.task_id not in live.activities
        ):
            return  # a duplicate, or for an execution that has ended: recorded once already
        live.activities.discard(result.task_id)
        b.wb.delete("activities", r.seq_key(result.instance_id, result.task_id))
        # Totals, so a scraper derives the mean activity run time per partition.
        self._counters["activities_completed"] += 1
        self._counters["activity_seconds"] += result.duration
        event: h.HistoryEvent
        limit = self._config.max_payload_bytes
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
                timestamp=b.now, task_scheduled_id=result.task_id, result=result.result
            )
        else:
            event = h.TaskFailed(
                timestamp=b.now, task_scheduled_id=result.task_id, failure=result.failure
            )
        self.deliver(b, result.instance_id, event, result.execution_id)

    # -- episodes ---------------------------------------------------------------------------

    def run_all(self, b: Batch) -> None:
        """Run an episode for every instance with work in this batch."""
        work, b.work = b.work, {}
        for iid, events in work.items():
            live = self._table.get(iid)
            if live is not None:
                self._run_episode(b, live, events)

    def _run_episode(self, b: Batch, live: LiveInstance, events: list[h.HistoryEvent]) -> None:
        table = self._table
        record = live.record
        if not record.status.is_running:
            return
        mismatch = version_mismatch(self._config, record.version)
        if mismatch is not None:
            self._on_version_mismatch(b, live, events, mismatch)
            return
        episode: list[h.HistoryEvent] = [h.OrchestratorStarted(timestamp=b.now), *events]
        # The user's code runs here (its replay too): the watchdog reports it if it blocks.
        watch = self._watch
        watch.begin(record.instance_id, record.name)
        try:
            executor = table.executor_for(live)
            executor.process(episode)
        finally:
            watch.end()
        actions = executor.take_new_events()
        table.append_history(b, live, episode + actions)
        if record.trace_context is not None:
            spans.events_received(b, record, events)
        self._counters["episodes"] += 1
        for action in actions:
            self._actions.apply(b, live, action)
        if record.status is Status.PENDING:
            record.status = Status.RUNNING
        record.custom_status = executor.custom_status
        table.touch(b, live)
        if executor.completion is not None:
            self._lifecycle.complete(b, live, executor.completion)

    def _on_version_mismatch(
        self, b: Batch, live: LiveInstance, events: list[h.HistoryEvent], message: str
    ) -> None:
        """This hub's code must not run the instance: fail it, or leave it for another."""
        table = self._table
        if self._config.version_failure == "reject":
            # Kept, unapplied, in the inbox: a hub whose version matches (after a
            # redeploy) picks the instance up when it opens the store.
            live.buffering = True
            for event in events:
                table.to_inbox(b, live, event)
            table.touch(b, live)
            return
        failure = FailureDetails(message=message, error_type="VersionMismatch", non_retriable=True)
        completion = h.ExecutionCompleted(timestamp=b.now, status=Status.FAILED, failure=failure)
        table.append_history(b, live, [h.OrchestratorStarted(timestamp=b.now), *events, completion])
        self._lifecycle.complete(b, live, completion)
