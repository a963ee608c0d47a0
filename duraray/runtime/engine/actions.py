"""What an orchestration's actions become: activity rows, timers and messages.

An episode of an orchestration yields actions as history events (``TaskScheduled``,
``TimerCreated``, ``SubOrchestrationInstanceCreated``, ``EventSent`` and the entity
actions). ``Actions.apply`` carries one out inside the batch: the activity is written to
``activities`` and dispatched once the batch commits, the timer is stored, the child's
start or the event goes through the outbox, the entity action to the entity host. A
rewind re-applies the actions its kept history still waits for the same way.
"""

from __future__ import annotations

from duraray.orchestrations import history as h
from duraray.runtime.engine import codec, spans
from duraray.runtime.engine import records as r
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.instances import LiveInstance
from duraray.runtime.engine.messages import DeliverEvent, ParentRef, StartOrchestration
from duraray.runtime.engine.outbox import Outbox
from duraray.runtime.engine.records import ActivityTask, TimerRow
from duraray.runtime.engine.timers import Timers


class Actions:
    """Carries out orchestration actions (see the module docstring)."""

    def __init__(self, index: int, outbox: Outbox, timers: Timers, entities: EntityHost) -> None:
        self._index = index
        self._outbox = outbox
        self._timers = timers
        self._entities = entities

    def add_timer(self, b: Batch, live: LiveInstance, row: TimerRow) -> None:
        """Store a timer of the instance (dropped with it if it ends first)."""
        live.timers.add(self._timers.put(b, row))

    def apply(self, b: Batch, live: LiveInstance, event: h.HistoryEvent) -> None:
        """Carry out one action of the instance's current execution."""
        record = live.record
        iid = record.instance_id
        if isinstance(event, h.TaskScheduled):
            task = ActivityTask(
                instance_id=iid,
                execution_id=record.execution_id,
                task_id=event.event_id,
                name=event.name,
                input=event.input,
                partition=self._index,
                tags=event.tags,
                attempt=event.attempt,
                trace_context=spans.carrier(record),
            )
            b.wb.put("activities", r.seq_key(iid, event.event_id), codec.encode_record(task))
            live.activities.add(event.event_id)
            b.fx.activities.append(task)
        elif isinstance(event, h.TimerCreated):
            # Its creation time is kept for its span only when the instance is traced.
            created = event.timestamp if record.trace_context is not None else None
            row = TimerRow(
                "timer", iid, record.execution_id, event.event_id, event.fire_at, None, created
            )
            self.add_timer(b, live, row)
        elif isinstance(event, h.SubOrchestrationInstanceCreated):
            parent = ParentRef(iid, record.execution_id, event.event_id)
            trace = spans.carrier(record)
            start = StartOrchestration(
                event.instance_id, event.name, event.input, event.version, parent, trace
            )
            self._outbox.send(b, start)
        elif isinstance(event, h.EventSent):
            raised = h.EventRaised(timestamp=b.now, name=event.name, input=event.input)
            self._outbox.send(b, DeliverEvent(event.instance_id, raised))
        else:
            self._entities.action(b, iid, record.execution_id, event, spans.carrier(record))
