"""Where each piece of a batch's work goes: the dispatch from intake items, partition
messages and due timers to the components that apply them.

``Work`` holds no state of its own; ``PartitionCore`` hands it each item of the batch
(or, while the work of a failed batch is applied alone, each unit: see poison.py).
"""

from __future__ import annotations

from typing import assert_never

import structlog

from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.client_ops import ClientOps
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.episodes import Episodes
from duraray.runtime.engine.gate import ActivityGate
from duraray.runtime.engine.instances import InstanceTable
from duraray.runtime.engine.intake import Ack, IntakeItem, Messages, Request, Resend, Results
from duraray.runtime.engine.lifecycle import Lifecycle
from duraray.runtime.engine.messages import (
    DeliverEvent,
    EntityDelivery,
    RewindInstance,
    StartOrchestration,
    TerminateInstance,
    UnknownMessageKind,
    from_wire,
)
from duraray.runtime.engine.outbox import Outbox
from duraray.runtime.engine.poison import ReadyUnit, TimerUnit, Unit
from duraray.runtime.engine.records import Message, TimerRow
from duraray.runtime.engine.timers import Timers

log = structlog.get_logger("duraray.partition")


class Work:
    """Applies intake items, messages, timers and isolated units (see the module docstring)."""

    def __init__(
        self,
        *,
        gate: ActivityGate,
        client_ops: ClientOps,
        outbox: Outbox,
        timers: Timers,
        table: InstanceTable,
        episodes: Episodes,
        lifecycle: Lifecycle,
        entities: EntityHost,
    ) -> None:
        self._gate = gate
        self._client_ops = client_ops
        self._outbox = outbox
        self._timers = timers
        self._table = table
        self._episodes = episodes
        self._lifecycle = lifecycle
        self._entities = entities

    def item(self, b: Batch, item: IntakeItem) -> None:
        """Apply one intake item."""
        match item:
            case Request(request):
                self._client_ops.on_request(b, request)
            case Messages(source, messages):
                self._outbox.receive(b, source, messages, lambda msg: self.message(b, msg))
            case Ack(destination, upto):
                self._outbox.acknowledged(b, destination, upto)
            case Results(results):
                for result in results:
                    self._gate.finished(result)
                    self._episodes.on_activity_result(b, result)
            case Resend(destination):
                self._outbox.resend_all(b, destination)
            case _:
                assert_never(item)

    def message(self, b: Batch, msg: Message) -> None:
        """Apply one message from a partition (this one included), in sequence order."""
        try:
            payload = from_wire(msg)
        except UnknownMessageKind:
            log.warning("unknown message kind dropped", kind=msg.kind)
            return
        match payload:
            case StartOrchestration():
                self._episodes.start(b, payload)
            case DeliverEvent(instance_id, event, execution_id):
                self._episodes.deliver(b, instance_id, event, execution_id)
            case TerminateInstance(instance_id, output, recursive):
                live = self._table.get(instance_id)
                if live is not None:
                    self._lifecycle.terminate(b, live, output, recursive)
            case EntityDelivery():
                self._entities.on_message(b, payload)
            case RewindInstance(instance_id, reason, parent):
                if parent is None:
                    self._lifecycle.rewind(b, instance_id, reason)
                else:  # a rewound parent asks this child for its outcome
                    self._lifecycle.rewind_child(b, instance_id, reason, parent)
            case _:
                assert_never(payload)

    def timer(self, b: Batch, key: bytes, row: TimerRow) -> None:
        """A due timer: an orchestration's, a delayed start, or a scheduled signal."""
        if row.kind == "signal":
            self._entities.fire_signal(row)
        else:
            self._episodes.on_timer(b, key, row)

    def unit(self, b: Batch, unit: Unit) -> None:
        """Apply one unit of a failed batch's work alone."""
        match unit:
            case ReadyUnit(instance_id):
                self._table.drain_inbox(b, instance_id)
            case TimerUnit(key):
                row = self._timers.take(b, key)
                if row is not None:
                    self.timer(b, key, row)
            case _:
                self.item(b, unit)
