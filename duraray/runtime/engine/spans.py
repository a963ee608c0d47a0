"""The spans of a partition's work, recorded in the batch and emitted after its commit.

Where each span comes from (README "Tracing"; duraray/runtime/tracing.py emits them):

- an execution's span (``orchestration:<name>``): its context (trace, span id, parent,
  start) is chosen when the execution starts (``execution_context``: a new instance, a
  continue-as-new, a rewind) and stored on the instance record and ``ExecutionStarted``;
  the span is recorded by the batch that ends the execution (``execution_ended``:
  completed, failed, continued as new, terminated or quarantined);
- a timer's (``timer``): by the batch that fires it, from the creation time kept on its
  row to the firing;
- an external event's (``orchestration_event:<name>``): by the batch whose episode hands
  it to the orchestration, from its arrival to then;
- an entity operation's (``entity:<name>:<operation>``): by the batch that runs it, on
  the entity's partition, as a child of the caller's span carried on the message;
- an activity's (``activity:<name>``) is not recorded here: the process that runs it
  emits it (``execute_activity``), a child of the carrier on its ``ActivityTask``.

Each piece of work is applied by exactly one committed batch (the activity row, the timer
row, the outbox's dedup and the history are the tickets), and a batch's spans are emitted
only after it commits (``PartitionCore._after_commit``): a batch that fails or does not
fit is redone by a later batch that records them again, and a replay, which rebuilds a
generator from the history without applying anything, records nothing. Spans are emitted
at most once: a crash between a commit and the emission loses that batch's spans.

Nothing is recorded for an instance without a trace context, or while no tracer provider
is set in this process (``tracing.enabled()``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from duraray._errors import FailureDetails
from duraray.entities.executor import Outcome
from duraray.entities.scheduler import OperationMessage
from duraray.orchestrations import history as h
from duraray.runtime import tracing
from duraray.runtime.engine import codec
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.records import InstanceRecord, TimerRow


def execution_context(parent: dict[str, str] | None, now: datetime) -> dict[str, str] | None:
    """The trace context of an execution starting now: a child of ``parent`` (a client's
    span, a parent orchestration's, the execution it continues), else a new trace if
    this process traces, else None."""
    root = tracing.enabled()
    if parent is None and not root:
        return None  # the common case untraced: nothing to compute
    return tracing.new_context(parent, codec.utc_micros(now), root=root)


def next_context(record: InstanceRecord, now: datetime) -> dict[str, str] | None:
    """The context of the execution that follows the record's (continue-as-new, rewind):
    a child of its span, so one instance keeps one trace."""
    return execution_context(tracing.carrier(record.trace_context), now)


def carrier(record: InstanceRecord) -> dict[str, str] | None:
    """What work the execution starts is handed: its span's carrier (None: untraced)."""
    context = record.trace_context
    return None if context is None else tracing.carrier(context)


def _base(record: InstanceRecord) -> dict[str, Any]:
    return {"duraray.instance_id": record.instance_id, "duraray.orchestration": record.name}


def _error(failure: FailureDetails | None) -> tuple[str, str, str | None] | None:
    if failure is None:
        return None
    return failure.error_type, failure.message, failure.stack_trace


def execution_ended(b: Batch, record: InstanceRecord, status: h.OrchestrationStatus) -> None:
    """The execution ended with ``status`` in this batch: its span, with its stored id."""
    context = record.trace_context
    if context is None or not tracing.enabled():
        return
    attributes = _base(record)
    attributes["duraray.execution_id"] = record.execution_id
    attributes["duraray.status"] = status.value
    if record.version is not None:
        attributes["duraray.version"] = record.version
    end = b.now_micros
    failed = status is h.OrchestrationStatus.FAILED
    b.spans.append(
        tracing.SpanRecord(
            f"orchestration:{record.name}",
            "server",
            tracing.start_us(context, end),
            end,
            own=context,
            attributes=attributes,
            error=_error(record.failure) if failed else None,
        )
    )


def timer_fired(b: Batch, record: InstanceRecord, row: TimerRow) -> None:
    """A timer of the execution fired in this batch."""
    parent = carrier(record)
    if parent is None or row.created_at is None or not tracing.enabled():
        return
    attributes = _base(record)
    attributes["duraray.timer_id"] = row.timer_id
    attributes["duraray.fire_at"] = row.fire_at.isoformat()
    start = codec.utc_micros(row.created_at)
    b.spans.append(
        tracing.SpanRecord(
            "timer", "internal", start, b.now_micros, parent=parent, attributes=attributes
        )
    )


def events_received(b: Batch, record: InstanceRecord, events: list[h.HistoryEvent]) -> None:
    """The episode of this batch hands ``events`` to the orchestration: a span for each
    external event among them."""
    parent = carrier(record)
    if parent is None or not tracing.enabled():
        return
    for event in events:
        if isinstance(event, h.EventRaised):
            attributes = _base(record)
            attributes["duraray.event"] = event.name
            b.spans.append(
                tracing.SpanRecord(
                    f"orchestration_event:{event.name}",
                    "consumer",
                    codec.utc_micros(event.timestamp),
                    b.now_micros,
                    parent=parent,
                    attributes=attributes,
                )
            )


def entity_operations(b: Batch, entity_id: Any, outcomes: list[Outcome], offset: float) -> None:
    """Operations of ``entity_id`` (an ``EntityId``) ran in this batch, one after the other,
    from ``offset`` seconds into it: a span for each whose sender was traced."""
    if not tracing.enabled():
        return
    at = b.now_micros + int(offset * 1_000_000)
    for outcome in outcomes:
        end = at + int(outcome.duration * 1_000_000)
        message = outcome.operation.reply_to
        if isinstance(message, OperationMessage) and message.trace_context is not None:
            attributes: dict[str, Any] = {
                "duraray.entity": str(entity_id),
                "duraray.operation": message.operation,
            }
            if message.caller_instance is not None:
                attributes["duraray.instance_id"] = message.caller_instance
            b.spans.append(
                tracing.SpanRecord(
                    f"entity:{entity_id.name}:{message.operation}",
                    "server",
                    at,
                    end,
                    parent=message.trace_context,
                    attributes=attributes,
                    error=_error(outcome.failure),
                )
            )
        at = end
