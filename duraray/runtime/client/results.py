"""What the client returns: snapshots of instances and entities, pages, counts and
parked items.

Also how those snapshots are built from the engine's records (stored payloads decoded,
an undecodable one marked rather than raised), so that every operation of the client
reads a record the same way.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from duraray._errors import FailureDetails, OrchestrationFailedError
from duraray.entities.ids import EntityId
from duraray.entities.scheduler import EntityRecord
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import InstanceRecord

T = TypeVar("T")
OrchestrationStatus = h.OrchestrationStatus


@dataclass(frozen=True, slots=True)
class OrchestrationState:
    """A snapshot of an orchestration instance, with decoded payloads.

    A stored payload that cannot be decoded (written before ``encode`` refused such values,
    or damaged) reads as an ``UndecodablePayload`` marker, named in ``payload_errors``: one
    bad record never fails a status call or a listing.
    """

    instance_id: str
    name: str
    runtime_status: OrchestrationStatus
    created_at: datetime
    last_updated_at: datetime
    input: Any = None
    output: Any = None
    custom_status: Any = None
    failure_details: FailureDetails | None = None
    tags: dict[str, str] | None = None
    version: str | None = None
    parent_instance_id: str | None = None
    completed_at: datetime | None = None
    scheduled_start_at: datetime | None = None

    @property
    def serialized_input(self) -> str | None:
        """The input as JSON text (for tools that expect Durable Functions' strings)."""
        return _to_json(self.input)

    @property
    def serialized_output(self) -> str | None:
        """The output as JSON text."""
        return _to_json(self.output)

    @property
    def serialized_custom_status(self) -> str | None:
        """The custom status as JSON text."""
        return _to_json(self.custom_status)

    @property
    def payload_errors(self) -> dict[str, str]:
        """Why a payload could not be decoded, by field name (empty when all decoded)."""
        return _payload_errors(
            input=self.input, output=self.output, custom_status=self.custom_status
        )

    def raise_if_failed(self) -> None:
        """Raise ``OrchestrationFailedError`` if the instance FAILED."""
        if self.runtime_status is OrchestrationStatus.FAILED:
            details = self.failure_details
            message = details.message if details else "orchestration failed"
            raise OrchestrationFailedError(
                f"orchestration {self.instance_id!r} failed: {message}", details
            )


@dataclass(frozen=True, slots=True)
class EntityMetadata:
    """A snapshot of a durable entity: its state (if asked for) and its lock."""

    id: EntityId
    last_modified: datetime | None
    state: Any = None
    locked_by: str | None = None
    backlog_queue_size: int = 0

    @property
    def includes_state(self) -> bool:
        """True when the state was fetched (and the entity has some)."""
        return self.state is not None

    @property
    def payload_errors(self) -> dict[str, str]:
        """``{"state": reason}`` when the stored state could not be decoded, else empty."""
        return _payload_errors(state=self.state)


@dataclass(frozen=True, slots=True)
class CleanEntityStorageResult:
    """What ``clean_entity_storage`` did."""

    empty_entities_removed: int
    orphaned_locks_released: int


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """How many instances a purge deleted."""

    deleted_instance_count: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a query; pass ``continuation_token`` back for the next (None: done)."""

    items: list[T]
    continuation_token: str | None = None


def orchestration_state(record: InstanceRecord) -> OrchestrationState:
    """The snapshot of a stored instance record, its payloads decoded (or marked)."""
    return OrchestrationState(
        instance_id=record.instance_id,
        name=record.name,
        runtime_status=record.status,
        created_at=record.created_at,
        last_updated_at=record.last_updated_at,
        input=codec.decode_or_mark(record.input),
        output=codec.decode_or_mark(record.output),
        custom_status=codec.decode_or_mark(record.custom_status),
        failure_details=record.failure,
        tags=record.tags,
        version=record.version,
        parent_instance_id=record.parent_instance_id,
        completed_at=record.completed_at,
        scheduled_start_at=record.scheduled_start_at,
    )


def entity_metadata(record: EntityRecord) -> EntityMetadata:
    """The snapshot of a stored entity record, its state decoded (or marked)."""
    return EntityMetadata(
        id=EntityId.from_stored(record.entity_id),
        last_modified=record.last_modified,
        state=codec.decode_or_mark(record.state),
        locked_by=record.locked_by,
        backlog_queue_size=len(record.queue),
    )


def decode_payloads(event: h.HistoryEvent) -> h.HistoryEvent:
    """A history event with its payload fields decoded (or marked), for reading."""
    changes = {
        f: codec.decode_or_mark(getattr(event, f))
        for f in h.PAYLOAD_FIELDS
        if hasattr(event, f) and getattr(event, f) is not None
    }
    return dataclasses.replace(event, **changes) if changes else event


def _to_json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, default=str)


def _payload_errors(**payloads: Any) -> dict[str, str]:
    return {
        name: value.error
        for name, value in payloads.items()
        if isinstance(value, codec.UndecodablePayload)
    }
