"""The JSON shapes of the HTTP API: instance status, history events, entities, management URLs.

Pure functions from the client's records to JSON-ready dicts; no Starlette, no I/O, so the
shapes can be tested (and reused by the CLI) without a server. ``api.py`` documents them.

Payload values (inputs, outputs, event data, entity state) may hold any type the codec
carries; ``to_json`` maps the ones JSON lacks: bytes to base64 text, datetimes to ISO 8601,
timedeltas to seconds, UUIDs and Decimals to text, tuples and sets to lists, non-finite
floats to ``"NaN"``/``"Infinity"``/``"-Infinity"`` (JSON has no such numbers).
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

from duraray.orchestrations.history import HistoryEvent, OrchestrationStatus
from duraray.runtime.client.sync import EntityMetadata, OrchestrationState

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


def to_json(value: Any) -> Any:
    """``value`` (a decoded payload or engine record) as plain JSON types."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_key(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime | date | time):
        return value.isoformat()  # a payload keeps its own offset (or lack of one)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def _key(key: Any) -> str:
    # JSON object keys are text: 1 -> "1", None -> "null", (1, 2) -> "[1,2]".
    if isinstance(key, str):
        return key
    converted = to_json(key)
    if isinstance(converted, str):
        return converted
    return json.dumps(converted, separators=(",", ":"))


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
    payload: dict[str, Any] = {
        "name": state.name,
        "instanceId": state.instance_id,
        "runtimeStatus": DF_STATUS[state.runtime_status],
        "input": to_json(state.input) if show_input else None,
        "customStatus": to_json(state.custom_status),
        "output": to_json(output),
        "createdTime": iso(state.created_at),
        "lastUpdatedTime": iso(state.last_updated_at),
        "failureDetails": failure_json(state),
        "version": state.version,
        "tags": state.tags,
        "parentInstanceId": state.parent_instance_id,
    }
    if history is not None:
        payload["historyEvents"] = [event_json(e) for e in history]
    return payload


def event_json(event: HistoryEvent) -> dict[str, Any]:
    """One history event: ``EventType`` (its class name) and its fields as they are named."""
    out: dict[str, Any] = {"EventType": type(event).__name__}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        out[f.name] = iso(value) if isinstance(value, datetime) else to_json(value)
    return out


def entity_json(entity: EntityMetadata) -> dict[str, Any]:
    """An entity's metadata and state."""
    return {
        "entityId": {"name": entity.id.name, "key": entity.id.key},
        "state": to_json(entity.state),
        "lastModified": iso(entity.last_modified),
        "lockedBy": entity.locked_by,
        "backlogQueueSize": entity.backlog_queue_size,
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
