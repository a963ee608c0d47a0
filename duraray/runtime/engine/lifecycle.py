"""How orchestration executions end, and how they start over.

Mixed into ``PartitionCore``: completion (and the report to a parent), continue-as-new,
termination (recursive, releasing held entity locks), rewind of a failed instance (and
of its failed children), and purge. Each changes the instance record, its history and
its timers and activities within the current batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from duraray._errors import (
    FailureDetails,
    InstanceStateError,
    error_type_name,
)
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.records import InstanceRecord
from duraray.runtime.engine.routing import partition_for

Status = h.OrchestrationStatus

if TYPE_CHECKING:
    from duraray.orchestrations.executor import OrchestrationExecutor


@dataclass(slots=True)
class LiveInstance:
    """In-memory state of a non-terminal instance."""

    record: InstanceRecord
    executor: OrchestrationExecutor | None = None
    activities: set[int] = field(default_factory=set)
    timers: set[bytes] = field(default_factory=set)
    # True while new events must go to the inbox (suspended, delayed start, or waiting
    # for the inbox to be drained into an episode).
    buffering: bool = False


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


_Live = LiveInstance


class InstanceLifecycle:
    """Endings and restarts of orchestration executions (mixed into PartitionCore)."""

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
        self._drop_pending_work(live)
        if record.inbox_length:
            self._wb.delete_prefix("inbox", r.instance_prefix(iid))
            record.inbox_length = 0
        self._drop_executor(live)
        self._ready.discard(iid)
        self._touch(live)
        self._put_record(record)
        self._wb.delete("live", r.live_key(iid))
        del self._live[iid]
        self._work.pop(iid, None)

    def _drop_pending_work(self, live: _Live) -> None:
        """Forget the execution's timers and undelivered activities (it has ended)."""
        iid = live.record.instance_id
        for key in live.timers:
            if self._timers.pop(key, None) is not None:
                self._wb.delete("timers", key)
        live.timers.clear()
        for task_id in live.activities:
            self._wb.delete("activities", r.seq_key(iid, task_id))
        live.activities.clear()

    def _continue_as_new(self, live: _Live, completion: h.ContinueAsNew) -> None:
        record = live.record
        iid = record.instance_id
        executor = live.executor
        carried = executor.buffered_events() if executor and executor.save_events else []
        self._drop_pending_work(live)
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
        return list(
            dict.fromkeys(
                e.instance_id
                for e in self._history_with_batch(instance_id)
                if isinstance(e, h.SubOrchestrationInstanceCreated)
            )
        )

    def _rewind(self, instance_id: str, reason: str | None) -> None:
        record = self._get_record(instance_id)
        if record is None or record.status is not Status.FAILED:
            return
        old = self._load_history(instance_id)
        kept = _rewound_history(old)
        self._wb.delete_prefix("history", r.instance_prefix(instance_id))
        record = replace(
            record,
            status=Status.RUNNING,
            output=None,
            failure=None,
            completed_at=None,
            history_length=0,
            inbox_length=0,
        )
        # Buffer until the next batch: the rewritten history is not committed yet, and an
        # executor rebuilt in this batch would replay the old one from the store.
        live = _Live(record, buffering=True)
        self._live[instance_id] = live
        self._wb.put("live", r.live_key(instance_id), b"")
        self._ready.add(instance_id)
        self._append_history(live, kept)
        # The rewind marker goes through the inbox, not straight into the history: the
        # next batch then runs an episode even when nothing else is pending (the code
        # itself had failed), replaying the kept history against the code deployed now,
        # and the marker survives a crash like any buffered event.
        self._to_inbox(live, h.ExecutionRewound(timestamp=self._now, reason=reason))
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
        self._wb.delete("live", r.live_key(iid))
        self._wb.delete("by_created", r.created_key(codec.utc_micros(record.created_at), iid))
        self._wb.delete_prefix("history", r.instance_prefix(iid))
        self._wb.delete_prefix("inbox", r.instance_prefix(iid))
        self._wb.delete_prefix("activities", r.instance_prefix(iid))
        self._dirty.discard(iid)
        self._changed.add(iid)
