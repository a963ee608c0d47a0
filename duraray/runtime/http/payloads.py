"""The JSON shapes of the HTTP API: instance status, history events, entities, parked
items, blocking reports, the outcomes of bulk events, management URLs.

Pure functions from the client's records to JSON-ready dicts; no Starlette, no I/O, so the
shapes can be tested (and reused by the CLI) without a server. ``api.py`` documents them.

Payload values (inputs, outputs, event data, entity state) may hold any type the codec
carries; ``to_json`` maps the ones JSON lacks: bytes to base64 text, datetimes to ISO 8601,
timedeltas to seconds, UUIDs and Decimals to text, tuples and sets to lists, non-finite
floats to ``"NaN"``/``"Infinity"``/``"-Infinity"`` (JSON has no such numbers).

Rendering never fails on a stored value: the codec refuses payloads nested over 100 levels
or with ints over 4096 bits, but records stored before those limits may hold them. A part
nested deeper than ``RENDER_DEPTH`` levels or an int JSON text cannot carry becomes a
``"<unrenderable: ...>"`` string, a payload that could not be decoded its
``"<undecodable payload: ...>"`` marker, and the status, event or entity payload names the
field in ``payloadErrors`` (present only then).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from duraray._errors import InstanceNotFoundError, InstanceStateError
from duraray.orchestrations.history import HistoryEvent, OrchestrationStatus
from duraray.runtime.client.sync import (
    BlockingReport,
    EntityMetadata,
    OrchestrationState,
    ParkedItem,
)
from duraray.runtime.engine.codec import MAX_DEPTH, UndecodablePayload

#: OrchestrationStatus -> the Durable Functions ``runtimeStatus`` spelling.
DF_STATUS: dict[OrchestrationStatus, str] = {
    OrchestrationStatus.PENDING: "Pending",
    OrchestrationStatus.RUNNING: "Running",
    OrchestrationStatus.COMPLETED: "Completed",
    OrchestrationStatus.CONTINUED_AS_NEW: "ContinuedAsNew",
    OrchestrationStatus.FAILED: "Failed",
    OrchestrationStatus.TERMINATED: "Terminated",
    OrchestrationStatus.SUSPENDED: "Suspended",
}

#: OrchestrationState.payload_errors names -> the status payload's keys.
_DF_PAYLOAD_KEYS = {"input": "input", "output": "output", "custom_status": "customStatus"}

_BY_FOLDED_NAME: dict[str, OrchestrationStatus] = {
    **{df.lower(): status for status, df in DF_STATUS.items()},
    **{status.value.replace("_", "").lower(): status for status in OrchestrationStatus},
}


def parse_status(text: str) -> OrchestrationStatus:
    """``Running``, ``running``, ``RUNNING``, ``ContinuedAsNew`` or ``CONTINUED_AS_NEW``."""
    status = _BY_FOLDED_NAME.get(text.strip().replace("_", "").lower())
    if status is None:
        known = ", ".join(DF_STATUS.values())
        raise ValueError(f"unknown runtimeStatus {text!r}; expected one of {known}")
    return status


def iso(value: datetime | None) -> str | None:
    """An engine timestamp as ISO 8601 in UTC with a ``Z`` suffix (None stays None)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


#: The deepest nesting rendered; deeper parts (stored before the codec's MAX_DEPTH) become
#: a marker. Twice the codec's limit: records (a failure's inner chain) add levels.
RENDER_DEPTH = 2 * MAX_DEPTH

#: The widest int written as a JSON number: Python refuses to turn an int of over 4,300
#: digits into text (14,000 bits are at most 4,215 digits).
RENDER_INT_BITS = 14_000


def to_json(value: Any) -> Any:
    """``value`` (a decoded payload or engine record) as plain JSON types; never raises."""
    return render(value)[0]


def render(value: Any) -> tuple[Any, str | None]:
    """``(to_json(value), None)``, or with the reason a part of it had to be replaced."""
    if isinstance(value, UndecodablePayload):
        return str(value), value.error
    problems: list[str] = []
    try:
        return _json(value, RENDER_DEPTH, problems), (problems[0] if problems else None)
    except RecursionError:  # rendered from deep in the stack: say so rather than fail
        reason = "nests too deeply to render"
        return f"<unrenderable: {reason}>", reason


def _json(value: Any, depth: int, problems: list[str]) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if value.bit_length() <= RENDER_INT_BITS:
            return value
        return _unrenderable(f"an int of {value.bit_length()} bits", problems)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict | list | tuple | set | frozenset) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        if depth <= 0:
            return _unrenderable(f"nests deeper than {RENDER_DEPTH} levels", problems)
        depth -= 1
        if isinstance(value, dict):
            return {_key(k, depth, problems): _json(v, depth, problems) for k, v in value.items()}
        if not isinstance(value, list | tuple | set | frozenset):  # a dataclass
            return {
                f.name: _json(getattr(value, f.name), depth, problems)
                for f in dataclasses.fields(value)
            }
        return [_json(v, depth, problems) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime | date | time):
        return value.isoformat()  # a payload keeps its own offset (or lack of one)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return _json(value.value, depth, problems)
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, UndecodablePayload):
        problems.append(value.error)
    return str(value)


def _unrenderable(reason: str, problems: list[str]) -> str:
    problems.append(reason)
    return f"<unrenderable: {reason}>"


def _key(key: Any, depth: int, problems: list[str]) -> str:
    # JSON object keys are text: 1 -> "1", None -> "null", (1, 2) -> "[1,2]".
    if isinstance(key, str):
        return key
    converted = _json(key, depth, problems)
    if isinstance(converted, str):
        return converted
    return json.dumps(converted, separators=(",", ":"))


def _render_into(errors: dict[str, str], name: str, value: Any) -> Any:
    rendered, error = render(value)
    if error is not None:
        errors.setdefault(name, error)
    return rendered


def failure_json(state: OrchestrationState) -> dict[str, Any] | None:
    """The durabletask-style ``failureDetails`` of a failed instance (None otherwise)."""
    details = state.failure_details
    if details is None:
        return None
    out: dict[str, Any] = {}
    current: dict[str, Any] = out
    while details is not None:
        current.update(
            errorType=details.error_type,
            errorMessage=details.message,
            stackTrace=details.stack_trace,
            isNonRetriable=details.non_retriable,
        )
        details = details.inner
        if details is not None:
            current["innerFailure"] = current = {}
    return out


def status_json(
    state: OrchestrationState,
    *,
    show_input: bool = True,
    history: list[HistoryEvent] | None = None,
) -> dict[str, Any]:
    """The Durable Functions instance status payload (plus duraray's extra keys)."""
    output = state.output
    if output is None and state.runtime_status is OrchestrationStatus.FAILED:
        # Durable Functions reports a failed instance's error message as its output.
        output = state.failure_details.message if state.failure_details else None
    # A payload that cannot be decoded is named even when not shown (showInput=false).
    errors = {_DF_PAYLOAD_KEYS[name]: why for name, why in state.payload_errors.items()}
    payload: dict[str, Any] = {
        "name": state.name,
        "instanceId": state.instance_id,
        "runtimeStatus": DF_STATUS[state.runtime_status],
        "input": _render_into(errors, "input", state.input) if show_input else None,
        "customStatus": _render_into(errors, "customStatus", state.custom_status),
        "output": _render_into(errors, "output", output),
        "createdTime": iso(state.created_at),
        "lastUpdatedTime": iso(state.last_updated_at),
        "completedTime": iso(state.completed_at),
        "scheduledStartTime": iso(state.scheduled_start_at),
        "failureDetails": failure_json(state),
        "version": state.version,
        "tags": state.tags,
        "parentInstanceId": state.parent_instance_id,
    }
    if errors:
        payload["payloadErrors"] = errors
    if history is not None:
        payload["historyEvents"] = [event_json(e) for e in history]
    return payload


def event_json(event: HistoryEvent) -> dict[str, Any]:
    """One history event: ``EventType`` (its class name) and its fields as they are named."""
    out: dict[str, Any] = {"EventType": type(event).__name__}
    errors: dict[str, str] = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        out[f.name] = (
            iso(value) if isinstance(value, datetime) else _render_into(errors, f.name, value)
        )
    if errors:
        out["payloadErrors"] = errors
    return out


def entity_json(entity: EntityMetadata) -> dict[str, Any]:
    """An entity's metadata and state."""
    errors: dict[str, str] = {}
    out: dict[str, Any] = {
        "entityId": {"name": entity.id.name, "key": entity.id.key},
        "state": _render_into(errors, "state", entity.state),
        "lastModified": iso(entity.last_modified),
        "lockedBy": entity.locked_by,
        "backlogQueueSize": entity.backlog_queue_size,
    }
    if errors:
        out["payloadErrors"] = errors
    return out


def parked_json(item: ParkedItem, *, show_payload: bool = False) -> dict[str, Any]:
    """A parked item: ``{partition, kind, target, parkedAt, error, detail}``, and with
    ``show_payload`` its ``payload`` (the engine's encoding of the parked message, base64;
    null when there is none)."""
    out: dict[str, Any] = {
        "partition": item.partition,
        "kind": item.kind,
        "target": item.target,
        "parkedAt": iso(item.parked_at),
        "error": item.error,
        "detail": item.detail,
    }
    if show_payload:
        out["payload"] = (
            None if item.payload is None else base64.b64encode(item.payload).decode("ascii")
        )
    return out


def blocking_json(report: BlockingReport | None) -> dict[str, Any] | None:
    """The latest blocking report of an instance: ``{partition, reportedAt, seconds,
    finishedAfter, stack}`` (``finishedAfter`` null while the episode runs), or None."""
    if report is None:
        return None
    return {
        "partition": report.partition,
        "reportedAt": iso(report.reported_at),
        "seconds": report.seconds,
        "finishedAfter": report.finished_after,
        "stack": report.stack,
    }


def event_outcome_json(instance_id: str, outcome: BaseException | None) -> dict[str, Any]:
    """One event's outcome in a ``raiseEvents`` answer: ``{instanceId, status, error}``,
    status ``delivered``, ``notFound``, ``finished`` or ``failed`` (the partition could
    not take it: disk full, a failure inside it; error says which)."""
    if outcome is None:
        status = "delivered"
    elif isinstance(outcome, InstanceNotFoundError):
        status = "notFound"
    elif isinstance(outcome, InstanceStateError):
        status = "finished"  # the one state that refuses an event
    else:
        status = "failed"
    return {
        "instanceId": instance_id,
        "status": status,
        "error": None if outcome is None else str(outcome),
    }


def management_urls(base_url: str, instance_id: str) -> dict[str, str]:
    """The Durable Functions check-status payload: the id and its management URLs."""
    root = f"{base_url.rstrip('/')}/api/instances/{quote(instance_id, safe='')}"
    return {
        "id": instance_id,
        "statusQueryGetUri": root,
        "sendEventPostUri": f"{root}/raiseEvent/{{eventName}}",
        "terminatePostUri": f"{root}/terminate",
        "suspendPostUri": f"{root}/suspend",
        "resumePostUri": f"{root}/resume",
        "rewindPostUri": f"{root}/rewind",
        "restartPostUri": f"{root}/restart",
        "purgeHistoryDeleteUri": root,
    }
