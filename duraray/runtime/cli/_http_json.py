"""The records ``HttpHubClient`` returns, built from the HTTP API's JSON payloads (the
shapes ``duraray/runtime/http/api.py`` documents): ``OrchestrationState``, history events,
``EntityMetadata`` and ``ParkedItem``, as the Python client returns them.

A builder raises ``KeyError``, ``TypeError`` or ``ValueError`` on a payload of another
shape; the client reports that as an answer that is not the API's. Payloads stay the JSON
values they arrive as (bytes as base64, datetimes as ISO text).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from duraray._errors import FailureDetails
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.orchestrations.history import OrchestrationStatus
from duraray.runtime.client.results import EntityMetadata, OrchestrationState
from duraray.runtime.engine.records import ParkedItem

__all__ = [
    "entities",
    "entity_metadata",
    "history_event",
    "orchestration_state",
    "parked_item",
    "states",
]

#: ``Running``, ``ContinuedAsNew`` (the API's spelling) or ``CONTINUED_AS_NEW``, folded.
_STATUS_BY_FOLDED = {s.value.replace("_", "").lower(): s for s in OrchestrationStatus}


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _maybe_time(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


def _status(text: str) -> OrchestrationStatus:
    return _STATUS_BY_FOLDED[text.replace("_", "").lower()]


def _failure(data: Mapping[str, Any] | None, keys: tuple[str, str, str, str, str]) -> Any:
    """A ``FailureDetails`` chain from its JSON (``keys``: the names of message, type,
    stack trace, non-retriable and inner failure), innermost first, without recursion."""
    chain: list[Mapping[str, Any]] = []
    while data:
        chain.append(data)
        data = data.get(keys[4])
    details: FailureDetails | None = None
    for part in reversed(chain):
        details = FailureDetails(
            message=str(part.get(keys[0]) or ""),
            error_type=str(part.get(keys[1]) or ""),
            stack_trace=part.get(keys[2]),
            inner=details,
            non_retriable=bool(part.get(keys[3])),
        )
    return details


_STATUS_FAILURE_KEYS = ("errorMessage", "errorType", "stackTrace", "isNonRetriable", "innerFailure")
_EVENT_FAILURE_KEYS = ("message", "error_type", "stack_trace", "non_retriable", "inner")


def orchestration_state(data: Mapping[str, Any]) -> OrchestrationState:
    """An ``OrchestrationState`` from the API's status payload."""
    status = _status(data["runtimeStatus"])
    failure = _failure(data.get("failureDetails"), _STATUS_FAILURE_KEYS)
    output = data.get("output")
    if status is OrchestrationStatus.FAILED and failure is not None and output == failure.message:
        output = None  # the API shows a failed instance's message as its output
    return OrchestrationState(
        instance_id=data["instanceId"],
        name=data["name"],
        runtime_status=status,
        created_at=_time(data["createdTime"]),
        last_updated_at=_time(data["lastUpdatedTime"]),
        input=data.get("input"),
        output=output,
        custom_status=data.get("customStatus"),
        failure_details=failure,
        tags=data.get("tags"),
        version=data.get("version"),
        parent_instance_id=data.get("parentInstanceId"),
        completed_at=_maybe_time(data.get("completedTime")),
        scheduled_start_at=_maybe_time(data.get("scheduledStartTime")),
    )


def states(body: Iterable[Mapping[str, Any]]) -> list[OrchestrationState]:
    """The states of a list of status payloads."""
    return [orchestration_state(item) for item in body]


def history_event(data: Mapping[str, Any]) -> h.HistoryEvent:
    """A history event from the API's ``{"EventType": ..., <field>: ...}`` object: its
    times parsed, failures and statuses rebuilt, payloads left as the JSON they are."""
    cls = getattr(h, str(data["EventType"]), None)
    if not (isinstance(cls, type) and issubclass(cls, h.HistoryEvent)):
        cls = h.HistoryEvent  # an event type this version does not know: its time only
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        kind = str(f.type)
        if value is not None and kind.startswith("datetime"):
            value = _time(value)
        elif value is not None and kind.startswith("FailureDetails"):
            value = _failure(value, _EVENT_FAILURE_KEYS)
        elif kind == "OrchestrationStatus":
            value = OrchestrationStatus(value)
        values[f.name] = value
    event: h.HistoryEvent = cls(**values)
    return event


def entity_metadata(data: Mapping[str, Any]) -> EntityMetadata:
    """An ``EntityMetadata`` from the API's entity payload."""
    return EntityMetadata(
        id=EntityId(data["entityId"]["name"], data["entityId"]["key"]),
        last_modified=_maybe_time(data.get("lastModified")),
        state=data.get("state"),
        locked_by=data.get("lockedBy"),
        backlog_queue_size=int(data.get("backlogQueueSize") or 0),
    )


def entities(body: Iterable[Mapping[str, Any]]) -> list[EntityMetadata]:
    """The metadata of a list of entity payloads."""
    return [entity_metadata(item) for item in body]


def parked_item(data: Mapping[str, Any]) -> ParkedItem:
    """A ``ParkedItem`` from the API's parked-item payload (without its payload)."""
    return ParkedItem(
        kind=data["kind"],
        target=data["target"],
        parked_at=_time(data["parkedAt"]),
        error=data["error"],
        detail=data.get("detail") or "",
        partition=int(data["partition"]),
    )
