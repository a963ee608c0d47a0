"""How orchestration executions end, and how they start over.

``Lifecycle`` carries out completion (and the report to a parent), continue-as-new,
termination (recursive, releasing held entity locks), rewind of a failed instance (and
of its failed children), and purge. Each changes the instance record, its history and
its timers and activities within the batch it is handed.
"""

from __future__ import annotations

from dataclasses import replace

from duraray._errors import (
    FailureDetails,
    InstanceStateError,
    error_type_name,
)
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec, spans
from duraray.runtime.engine import records as r
from duraray.runtime.engine.actions import Actions
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.clock import Clock
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.instances import InstanceTable, LiveInstance
from duraray.runtime.engine.messages import (
    DeliverEvent,
    ParentRef,
    RewindInstance,
    TerminateInstance,
)
from duraray.runtime.engine.outbox import Outbox
from duraray.runtime.engine.records import InstanceRecord
from duraray.runtime.engine.timers import Timers

Status = h.OrchestrationStatus


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


class Lifecycle:
    """Endings and restarts of orchestration executions (see the module docstring)."""

    def __init__(
        self,
        *,
        table: InstanceTable,
        actions: Actions,
        outbox: Outbox,
        timers: Timers,
        entities: EntityHost,
        clock: Clock,
    ) -> None:
        self._table = table
        self._actions = actions
        self._outbox = outbox
        self._timers = timers
        self._entities = entities
        self._clock = clock

    def complete(self, b: Batch, live: LiveInstance, completion: h.HistoryEvent) -> None:
        """The execution completed, failed or continues as new."""
        if isinstance(completion, h.ContinueAsNew):
            self._continue_as_new(b, live, completion)
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
            history = self._table.history_with_batch(b, record.instance_id)
            self._entities.release_held_locks(b, history)
        self._finish(b, live)
        if record.parent_instance_id is not None and record.parent_task_id is not None:
            event: h.HistoryEvent
            if completion.status is Status.COMPLETED:
                event = h.SubOrchestrationInstanceCompleted(
                    timestamp=b.now,
                    task_scheduled_id=record.parent_task_id,
                    result=completion.result,
                )
            else:
                event = h.SubOrchestrationInstanceFailed(
                    timestamp=b.now,
                    task_scheduled_id=record.parent_task_id,
                    failure=completion.failure
                    or FailureDetails("sub-orchestration failed", "duraray.DurableError"),
                )
            self._report(b, record, event)

    def fail(self, b: Batch, live: LiveInstance, failure: FailureDetails) -> None:
        """Fail the execution from outside its code (work for it raised inside the
        partition): as if the orchestration had failed, with ``failure``."""
        self._table.drop_executor(live)  # it may be what raised; never resumed again
        completion = h.ExecutionCompleted(timestamp=b.now, status=Status.FAILED, failure=failure)
        self._table.append_history(b, live, [completion])
        self.complete(b, live, completion)

    def quarantine(self, b: Batch, live: LiveInstance, failure: FailureDetails) -> None:
        """Take the instance out with the fewest reads and writes, when failing it the
        usual way failed too: its record says FAILED, it leaves the live set, its timers
        and activities are dropped; its history is left as it is (it may be what fails)."""
        table = self._table
        record = live.record
        record.status = Status.FAILED
        record.failure = failure
        record.completed_at = b.now
        spans.execution_ended(b, record, Status.FAILED)
        self._drop_pending_work(b, live)
        table.drop_executor(live)
        b.wb.delete_prefix("inbox", r.instance_prefix(record.instance_id))
        record.inbox_length = 0
        table.put_record(b, record)
        b.wb.delete("live", r.live_key(record.instance_id))
        table.remove(record.instance_id)
        b.work.pop(record.instance_id, None)
        b.changed.add(record.instance_id)
        if record.parent_instance_id is not None and record.parent_task_id is not None:
            # The parent waits for it: it learns from the record alone (no history read).
            event = h.SubOrchestrationInstanceFailed(
                timestamp=b.now, task_scheduled_id=record.parent_task_id, failure=failure
            )
            self._report(b, record, event)
        try:  # best effort: the history may be what cannot be read
            history = table.history_with_batch(b, record.instance_id)
            self._entities.release_held_locks(b, history)
        except Exception:
            pass

    def _report(self, b: Batch, record: InstanceRecord, event: h.HistoryEvent) -> None:
        assert record.parent_instance_id is not None
        self._outbox.send(
            b, DeliverEvent(record.parent_instance_id, event, record.parent_execution_id)
        )

    def _finish(self, b: Batch, live: LiveInstance) -> None:
        """Common end of an execution: drop its timers, activities, inbox and generator."""
        table = self._table
        record = live.record
        iid = record.instance_id
        record.completed_at = b.now
        spans.execution_ended(b, record, record.status)
        self._drop_pending_work(b, live)
        table.clear_inbox(b, live)
        table.drop_executor(live)
        table.touch(b, live)
        table.put_record(b, record)
        b.wb.delete("live", r.live_key(iid))
        table.remove(iid)
        b.work.pop(iid, None)

    def _drop_pending_work(self, b: Batch, live: LiveInstance) -> None:
        """Forget the execution's timers and undelivered activities (it has ended)."""
        iid = live.record.instance_id
        b.ended.add(iid)
        for key in live.timers:
            self._timers.remove(b, key)
        live.timers.clear()
        for task_id in live.activities:
            b.wb.delete("activities", r.seq_key(iid, task_id))
        live.activities.clear()

    def _continue_as_new(self, b: Batch, live: LiveInstance, completion: h.ContinueAsNew) -> None:
        table = self._table
        record = live.record
        iid = record.instance_id
        executor = live.executor
        carried = executor.buffered_events() if executor and executor.save_events else []
        spans.execution_ended(b, record, Status.CONTINUED_AS_NEW)
        record.trace_context = spans.next_context(record, b.now)
        self._drop_pending_work(b, live)
        table.drop_executor(live)
        # The history is reset each generation; events buffered in the inbox stay there
        # and are applied to the new generation after its start.
        b.wb.delete_prefix("history", r.instance_prefix(iid))
        record.history_length = 0
        record.execution_id = self._clock.new_id()
        record.input = completion.input
        record.output = None
        record.failure = None
        record.status = Status.RUNNING
        started = h.ExecutionStarted(
            timestamp=b.now,
            name=record.name,
            instance_id=iid,
            execution_id=record.execution_id,
            input=completion.input,
            version=record.version,
            tags=record.tags,
            parent_instance_id=record.parent_instance_id,
            parent_execution_id=record.parent_execution_id,
            parent_task_id=record.parent_task_id,
            trace_context=record.trace_context,
        )
        earlier = table.inbox_events(live)
        b.wb.delete_prefix("inbox", r.instance_prefix(iid))
        record.inbox_length = 0
        live.buffering = True
        table.to_inbox(b, live, started)
        for name, data in carried:
            table.to_inbox(b, live, h.EventRaised(timestamp=b.now, name=name, input=data))
        for event in earlier:
            table.to_inbox(b, live, event)
        # Run the next generation in the next batch: its start is durable first, and an
        # orchestration that continues as new in a tight loop cannot starve the partition.
        table.mark_ready(iid)
        table.touch(b, live)

    def terminate(
        self, b: Batch, live: LiveInstance, output: bytes | None, recursive: bool
    ) -> None:
        """End the execution as TERMINATED (its children too, if ``recursive``)."""
        table = self._table
        record = live.record
        terminated = h.ExecutionTerminated(timestamp=b.now, output=output, recursive=recursive)
        table.append_history(b, live, [terminated])
        record.status = Status.TERMINATED
        record.output = output
        history = table.history_with_batch(b, record.instance_id)
        children = (
            list(
                dict.fromkeys(
                    e.instance_id
                    for e in history
                    if isinstance(e, h.SubOrchestrationInstanceCreated)
                )
            )
            if recursive
            else []
        )
        self._entities.release_held_locks(b, history)
        self._finish(b, live)
        for child in children:
            self._outbox.send(b, TerminateInstance(child, output, recursive=True))
        if record.parent_instance_id is not None and record.parent_task_id is not None:
            failure = FailureDetails(
                message=f"sub-orchestration {record.instance_id!r} was terminated",
                error_type="duraray.Terminated",
                non_retriable=True,
            )
            event = h.SubOrchestrationInstanceFailed(
                timestamp=b.now, task_scheduled_id=record.parent_task_id, failure=failure
            )
            self._report(b, record, event)

    def rewind(self, b: Batch, instance_id: str, reason: str | None) -> None:
        """Run a failed instance again from before its first failure (see _rewound_history)."""
        table = self._table
        record = table.get_record(instance_id)
        if record is None or record.status is not Status.FAILED:
            return
        old = table.load_history(instance_id)
        kept = _rewound_history(old)
        b.wb.delete_prefix("history", r.instance_prefix(instance_id))
        record = replace(
            record,
            status=Status.RUNNING,
            output=None,
            failure=None,
            completed_at=None,
            history_length=0,
            inbox_length=0,
            # a new span for the run after the rewind (the failed one was emitted)
            trace_context=spans.next_context(record, b.now),
        )
        # Buffer until the next batch: the rewritten history is not committed yet, and an
        # executor rebuilt in this batch would replay the old one from the store.
        live = LiveInstance(record, buffering=True, stored_status=Status.FAILED)
        table.add(live)
        b.wb.put("live", r.live_key(instance_id), b"")
        table.mark_ready(instance_id)
        table.append_history(b, live, kept)
        # The rewind marker goes through the inbox, not straight into the history: the
        # next batch then runs an episode even when nothing else is pending (the code
        # itself had failed), replaying the kept history against the code deployed now,
        # and the marker survives a crash like any buffered event.
        table.to_inbox(b, live, h.ExecutionRewound(timestamp=b.now, reason=reason))
        # Re-arm what the kept history still waits for: activities without results are
        # dispatched again, timers re-armed, failed children rewound in turn.
        scheduled: dict[int, h.HistoryEvent] = {}
        for event in kept:
            if isinstance(
                event, h.TaskScheduled | h.TimerCreated | h.SubOrchestrationInstanceCreated
            ):
                scheduled[event.event_id] = event
            elif isinstance(event, h.TaskCompleted | h.SubOrchestrationInstanceCompleted):
                scheduled.pop(event.task_scheduled_id, None)
            elif isinstance(event, h.TimerFired):
                scheduled.pop(event.timer_id, None)
        self._relock_sections(b, live, kept)
        for seq, event in scheduled.items():
            if isinstance(event, h.TaskScheduled | h.TimerCreated):
                self._actions.apply(b, live, event)
            elif isinstance(event, h.SubOrchestrationInstanceCreated):
                # Every child whose outcome the kept history lacks: a failed one is rewound,
                # and one that finished after this instance failed (its report was dropped)
                # reports again, so the rewound parent never waits forever.
                parent = ParentRef(instance_id, record.execution_id, seq)
                self._outbox.send(b, RewindInstance(event.instance_id, reason, parent))
        table.touch(b, live)

    def _relock_sections(self, b: Batch, live: LiveInstance, kept: list[h.HistoryEvent]) -> None:
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
            self._entities.action(b, record.instance_id, record.execution_id, event)

    def rewind_child(
        self, b: Batch, instance_id: str, reason: str | None, parent: ParentRef
    ) -> None:
        """A rewound parent asks a child for its outcome: rewind it if it failed, else re-report."""
        record = self._table.get_record(instance_id)
        if record is not None and record.status is Status.FAILED:
            self.rewind(b, instance_id, reason)  # reports to the parent when it finishes
            return
        if record is not None and not record.status.is_terminal:
            return  # still running: it reports to its parent when it finishes
        event: h.HistoryEvent
        if (
            record is not None
            and record.status is Status.COMPLETED
            and record.parent_instance_id == parent.instance_id
        ):
            event = h.SubOrchestrationInstanceCompleted(
                timestamp=b.now, task_scheduled_id=parent.task_id, result=record.output
            )
        else:
            state = record.status.value if record is not None else "gone"
            event = h.SubOrchestrationInstanceFailed(
                timestamp=b.now,
                task_scheduled_id=parent.task_id,
                failure=FailureDetails(
                    message=f"sub-orchestration {instance_id!r} cannot be rewound: it is {state}",
                    error_type=error_type_name(InstanceStateError),
                    non_retriable=True,
                ),
            )
        self._outbox.send(b, DeliverEvent(parent.instance_id, event, parent.execution_id))

    def delete(self, b: Batch, record: InstanceRecord) -> None:
        """Delete every row of a terminal (or replaced) instance."""
        iid = record.instance_id
        self._table.note_deleted(b, record)
        b.wb.delete("instances", r.instance_key(iid))
        b.wb.delete("live", r.live_key(iid))
        b.wb.delete("by_created", r.created_key(codec.utc_micros(record.created_at), iid))
        b.wb.delete_prefix("history", r.instance_prefix(iid))
        b.wb.delete_prefix("inbox", r.instance_prefix(iid))
        b.wb.delete_prefix("activities", r.instance_prefix(iid))
        b.dirty.discard(iid)
        b.changed.add(iid)
