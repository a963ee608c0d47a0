"""The client: start, query and control orchestration instances of a hub.

A client talks to partitions through a transport (in-process or Ray) that turns
``(partition, operation, arguments)`` into a future. The client routes each instance id
to its partition, fans queries and bulk purges out to every partition and merges the
answers; it never touches storage.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from duraray import _limits
from duraray._errors import (
    FailureDetails,
    InstanceNotFoundError,
    InstanceStateError,
    OrchestrationFailedError,
    SerializationError,
)
from duraray._registry import Registry
from duraray.entities.ids import EntityId
from duraray.entities.scheduler import EntityRecord
from duraray.orchestrations import history as h
from duraray.orchestrations.ids import validate_instance_id
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.records import InstanceRecord, Reply, ReuseIdPolicy
from duraray.runtime.engine.routing import partition_for

T = TypeVar("T")
OrchestrationStatus = h.OrchestrationStatus


class Transport(Protocol):
    """How a client reaches partitions: one future per request."""

    @property
    def partition_count(self) -> int: ...

    def submit(
        self, partition: int, op: str, args: dict[str, Any], request_id: str | None = None
    ) -> Future[Any]: ...


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


def _utc(value: datetime | None, what: str) -> datetime | None:
    """A time argument checked against the store's range (naive: UTC), or None."""
    return None if value is None else _limits.check_time(value, what)


def _when(value: datetime | timedelta | None, what: str) -> datetime | timedelta | None:
    """A point in time or a delay: a delay is resolved by the partition on the hub's
    clock (a test's ManualClock, a Ray node whose clock differs from this process's)."""
    if value is None or isinstance(value, timedelta):
        return None if value is None else _limits.check_duration(value, what)
    if isinstance(value, datetime):
        return _limits.check_time(value, what)
    raise TypeError(f"{what} must be a datetime or a timedelta, got {type(value).__name__}")


def _statuses(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, OrchestrationStatus | str) else list(value)
    return [OrchestrationStatus(s).value if isinstance(s, str) else s.value for s in items]


class Client:
    """A synchronous client of one hub; every method is also on ``AsyncClient``."""

    def __init__(
        self,
        transport: Transport,
        *,
        hub: str,
        registry: Registry | None = None,
        max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self.hub = hub
        self._registry = registry
        self._max_payload = max_payload_bytes
        self._on_close = on_close

    # -- plumbing --------------------------------------------------------------------------

    def _partition(self, instance_id: str) -> int:
        return partition_for(instance_id, self._transport.partition_count)

    def _call(
        self,
        instance_id: str,
        op: str,
        args: dict[str, Any],
        *,
        mutating: bool = False,
        timeout: float | None = None,
    ) -> Any:
        validate_instance_id(instance_id)
        request_id = uuid.uuid4().hex if mutating else None
        future = self._transport.submit(
            self._partition(instance_id), op, {"instance_id": instance_id, **args}, request_id
        )
        return future.result(timeout)

    def _call_all(self, op: str, args: dict[str, Any], *, mutating: bool = False) -> list[Any]:
        futures = [
            self._transport.submit(p, op, args, uuid.uuid4().hex if mutating else None)
            for p in range(self._transport.partition_count)
        ]
        return [f.result() for f in futures]

    def _encode(self, value: Any, what: str) -> bytes:
        try:
            return codec.encode(value, max_size=self._max_payload)
        except SerializationError as exc:
            raise type(exc)(f"{what}: {exc}") from None

    def _name(self, kind: str, target: Any) -> str:
        if self._registry is not None:
            return _limits.check_name(self._registry.name_of(kind, target), f"{kind} name")
        if isinstance(target, str) and target:
            return _limits.check_name(target, f"{kind} name")
        name = getattr(target, "__name__", None)
        if not name:
            raise TypeError(f"expected an {kind} function or name, got {target!r}")
        return _limits.check_name(str(name), f"{kind} name")

    def _state(self, record: InstanceRecord | None) -> OrchestrationState | None:
        if record is None:
            return None
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

    # -- orchestrations --------------------------------------------------------------------

    def schedule_new_orchestration(
        self,
        orchestrator: Any,
        *,
        input: Any = None,
        instance_id: str | None = None,
        start_at: datetime | timedelta | None = None,
        reuse_id_policy: str | None = None,
        tags: dict[str, str] | None = None,
        version: str | None = None,
    ) -> str:
        """Start an orchestration instance; returns its id once the start is durable.

        ``start_at`` delays the start (the instance stays PENDING until then): a datetime
        from 1970 to about year 9899 (naive: UTC) or a delay of at most a century.
        ``reuse_id_policy`` (see ``ReuseIdPolicy``) says what happens when the id exists:
        by default a terminal instance is replaced and a running one is an error.
        Limits (ValueError or TypeError here, nothing stored): the instance id at most
        256 bytes of UTF-8, the name at most 256, tags (keys and values together) and
        version at most 64 KiB.
        """
        name = self._name("orchestration", orchestrator)
        # `is not None`, not truthiness: an empty id is malformed, not "pick one for me".
        instance_id = (
            validate_instance_id(instance_id) if instance_id is not None else uuid.uuid4().hex
        )
        encoded = self._encode(input, "orchestration input")
        start_at = _when(start_at, "start_at")
        _limits.check_tags(tags)
        _limits.check_text(version, "version")
        if reuse_id_policy is not None and reuse_id_policy not in ReuseIdPolicy.ALL:
            raise ValueError(f"unknown reuse_id_policy {reuse_id_policy!r}")
        return self._start(
            instance_id,
            name,
            encoded,
            version=version,
            tags=tags,
            start_at=start_at,
            reuse_policy=reuse_id_policy,
        )

    def _start(self, instance_id: str, name: str, encoded: bytes | None, **args: Any) -> str:
        result: str = self._call(
            instance_id, "start", {"name": name, "input": encoded, **args}, mutating=True
        )
        return result

    def schedule_new_orchestrations(
        self,
        orchestrator: Any,
        inputs: Iterable[Any],
        *,
        instance_ids: Iterable[str] | None = None,
        tags: dict[str, str] | None = None,
        version: str | None = None,
        reuse_id_policy: str | None = None,
    ) -> list[str]:
        """Start one instance per input in a few requests (one per partition and chunk).

        Returns the ids in input order once every start is durable. If some starts fail
        (e.g. an id already running), the others still happen and the first error is
        raised afterwards. Limits as for ``schedule_new_orchestration``.
        """
        name = self._name("orchestration", orchestrator)
        _limits.check_tags(tags)
        _limits.check_text(version, "version")
        payloads = [self._encode(value, "orchestration input") for value in inputs]
        if instance_ids is None:
            ids = [uuid.uuid4().hex for _ in payloads]
        else:
            ids = [validate_instance_id(i) for i in instance_ids]
            if len(ids) != len(payloads):
                raise ValueError("instance_ids and inputs differ in length")
        if reuse_id_policy is not None and reuse_id_policy not in ReuseIdPolicy.ALL:
            raise ValueError(f"unknown reuse_id_policy {reuse_id_policy!r}")
        ops = [
            (
                iid,
                "start",
                {
                    "instance_id": iid,
                    "name": name,
                    "input": payload,
                    "version": version,
                    "tags": tags,
                    "start_at": None,
                    "reuse_policy": reuse_id_policy,
                },
            )
            for iid, payload in zip(ids, payloads, strict=True)
        ]
        self._batch(ops)
        return ids

    def _batch(self, ops: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
        """Run (routing key, op, args) triples as batch requests; results in order."""
        by_partition: dict[int, list[int]] = {}
        for index, (key, _, _) in enumerate(ops):
            by_partition.setdefault(self._partition(key), []).append(index)
        pending = []
        for partition, indexes in by_partition.items():
            for start in range(0, len(indexes), _BATCH_CHUNK):
                chunk = indexes[start : start + _BATCH_CHUNK]
                future = self._transport.submit(
                    partition,
                    "batch",
                    {"ops": [(ops[i][1], ops[i][2]) for i in chunk]},
                    uuid.uuid4().hex,
                )
                pending.append((chunk, future))
        results: list[Any] = [None] * len(ops)
        for chunk, future in pending:
            for index, result in zip(chunk, future.result(), strict=True):
                results[index] = result
        first_error = next((r.error for r in results if isinstance(r, Reply)), None)
        if first_error is not None:
            raise first_error
        return results

    def wait_for_orchestrations(
        self, instance_ids: Iterable[str], *, timeout: float = 60
    ) -> list[OrchestrationState]:
        """Wait until every instance has finished; states in the given order.

        ``timeout``: finite seconds from 0 to a century (ValueError otherwise).
        """
        timeout = _limits.check_timeout(timeout)
        ids = [validate_instance_id(i) for i in instance_ids]
        by_partition: dict[int, list[str]] = {}
        for iid in dict.fromkeys(ids):
            by_partition.setdefault(self._partition(iid), []).append(iid)
        futures = [
            self._transport.submit(
                partition,
                "wait_many",
                {"instance_ids": group, "kind": "completion", "timeout": timeout},
            )
            for partition, group in by_partition.items()
        ]
        records: dict[str, InstanceRecord] = {}
        deadline = time.monotonic() + timeout
        try:
            for future in futures:
                for record in future.result(max(0.0, deadline - time.monotonic())):
                    records[record.instance_id] = record
        except TimeoutError:
            raise TimeoutError(
                f"{len(ids) - len(records)} of {len(ids)} instances did not complete "
                f"within {timeout} s"
            ) from None
        return [self._state(records[iid]) for iid in ids]  # type: ignore[misc]

    def map(
        self,
        orchestrator: Any,
        inputs: Iterable[Any],
        *,
        instance_id: str | Callable[[int, Any], str] | None = None,
        max_in_flight: int = 1000,
        progress: bool = True,
        on_error: str = "raise",
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Run one orchestration per input; yield the outputs in input order.

        At most ``max_in_flight`` instances are outstanding at once; inputs are consumed
        lazily. ``instance_id`` makes ids deterministic — a prefix (``"job-7"`` gives
        ``job-7-0``, ``job-7-1``, ...) or a function ``(index, input) -> id`` — so running
        the same job again re-uses every instance that already completed. ``on_error``:
        "raise" (the first failed item raises OrchestrationFailedError naming its instance),
        "skip" (failed items are left out) or "collect" (a ``MapFailure`` takes the item's
        place). ``progress`` shows a progress bar on a terminal.
        """
        from duraray.runtime.client.mapping import map_orchestrations

        if timeout is not None:
            _limits.check_timeout(timeout)
        return map_orchestrations(
            self,
            orchestrator,
            inputs,
            instance_id=instance_id,
            max_in_flight=max_in_flight,
            progress=progress,
            on_error=on_error,
            timeout=timeout,
        )

    def get_orchestration_state(
        self, instance_id: str, *, fetch_payloads: bool = True
    ) -> OrchestrationState | None:
        """The instance's current state, or None if there is no such instance."""
        record = self._call(instance_id, "get_state", {"fetch_payloads": fetch_payloads})
        return self._state(record)

    def get_orchestration_history(self, instance_id: str) -> list[h.HistoryEvent]:
        """The current execution's history events, payloads decoded."""
        events = self._call(instance_id, "get_history", {})
        return [_decode_payloads(e) for e in events]

    def wait_for_orchestration_start(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """Wait until the instance has left PENDING; ``TimeoutError`` after ``timeout`` s.

        ``timeout``: finite seconds from 0 to a century; NaN, infinity or a negative
        value is a ValueError.
        """
        return self._wait(instance_id, "start", timeout)

    def wait_for_orchestration_completion(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """Wait until the instance is COMPLETED, FAILED or TERMINATED.

        ``TimeoutError`` after ``timeout`` s (finite, from 0 to a century: ValueError
        otherwise).
        """
        return self._wait(instance_id, "completion", timeout)

    def _wait(self, instance_id: str, kind: str, timeout: float) -> OrchestrationState:
        timeout = _limits.check_timeout(timeout)
        try:
            record = self._call(
                instance_id, "wait", {"kind": kind, "timeout": timeout}, timeout=timeout
            )
        except TimeoutError:
            raise TimeoutError(
                f"instance {instance_id!r} did not {'start' if kind == 'start' else 'complete'} "
                f"within {timeout} s"
            ) from None
        state = self._state(record)
        assert state is not None
        return state

    def raise_orchestration_event(
        self, instance_id: str, event_name: str, *, data: Any = None
    ) -> None:
        """Deliver an external event; unknown id: InstanceNotFoundError, finished: InstanceStateError.

        The event name is at most 256 bytes of UTF-8.
        """
        _limits.check_name(event_name, "event name")
        encoded = self._encode(data, "event data")
        self._call(instance_id, "raise_event", {"name": event_name, "data": encoded}, mutating=True)

    def terminate_orchestration(
        self, instance_id: str, *, output: Any = None, recursive: bool = True
    ) -> None:
        """Terminate a running instance (and, recursively, its sub-orchestrations).

        Terminating an instance that already finished is a no-op.
        """
        encoded = self._encode(output, "termination output")
        self._call(
            instance_id, "terminate", {"output": encoded, "recursive": recursive}, mutating=True
        )

    def suspend_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Suspend: events are kept, not applied, until ``resume_orchestration``.

        ``reason`` (as for resume and rewind): at most 64 KiB of UTF-8.
        """
        _limits.check_text(reason, "reason")
        self._call(instance_id, "suspend", {"reason": reason}, mutating=True)

    def resume_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Resume a suspended instance; events received meanwhile are applied in order."""
        _limits.check_text(reason, "reason")
        self._call(instance_id, "resume", {"reason": reason}, mutating=True)

    def rewind_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Re-run a FAILED instance from its failures: only the failed work runs again."""
        _limits.check_text(reason, "reason")
        self._call(instance_id, "rewind", {"reason": reason}, mutating=True)

    def restart_orchestration(
        self, instance_id: str, *, restart_with_new_instance_id: bool = False
    ) -> str:
        """Run a finished instance again with its original input; returns the id used."""
        record: InstanceRecord | None = self._call(instance_id, "get_state", {})
        if record is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        if not record.status.is_terminal:
            raise InstanceStateError(
                f"cannot restart instance {instance_id!r}: it is {record.status.value}"
            )
        new_id = uuid.uuid4().hex if restart_with_new_instance_id else instance_id
        return self._start(
            new_id,
            record.name,
            record.input,
            version=record.version,
            tags=record.tags,
            start_at=None,
            reuse_policy=ReuseIdPolicy.ERROR_IF_RUNNING,
        )

    def purge_orchestration(self, instance_id: str, *, recursive: bool = True) -> PurgeResult:
        """Delete a finished instance and its history (and its sub-orchestrations')."""
        total = 0
        pending = [instance_id]
        while pending:
            current = pending.pop()
            count, children = self._call(current, "purge", {}, mutating=True)
            total += count
            if recursive and count:
                pending.extend(children)
        return PurgeResult(total)

    def purge_orchestrations_by(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Any = None,
    ) -> PurgeResult:
        """Delete finished instances created in the range, optionally only some statuses.

        Times lie from 1970 to about year 9899 (naive: UTC); ValueError otherwise.
        """
        created_from = _utc(created_time_from, "created_time_from")
        created_to = _utc(created_time_to, "created_time_to")
        counts = self._call_all(
            "purge_by",
            {
                "created_from": created_from,
                "created_to": created_to,
                "statuses": _statuses(runtime_status),
            },
            mutating=True,
        )
        return PurgeResult(sum(counts))

    def query_instances(
        self,
        *,
        runtime_status: Any = None,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        instance_id_prefix: str | None = None,
        page_size: int = 100,
        continuation_token: str | None = None,
        fetch_payloads: bool = True,
    ) -> Page[OrchestrationState]:
        """One page of instances matching the filters, oldest first.

        ``page_size`` is 1 to 10,000; times lie from 1970 to about year 9899 (naive: UTC);
        ValueError otherwise.
        """
        _limits.check_page_size(page_size)
        _limits.check_text(instance_id_prefix, "instance_id_prefix")
        created_from = _utc(created_time_from, "created_time_from")
        created_to = _utc(created_time_to, "created_time_to")
        after = _decode_token(continuation_token, _INSTANCE_TOKEN)
        results = self._call_all(
            "query",
            {
                "statuses": _statuses(runtime_status),
                "created_from": created_from,
                "created_to": created_to,
                "prefix": instance_id_prefix,
                "after": after,
                "limit": page_size,
                "fetch_payloads": fetch_payloads,
            },
        )
        merged = sorted((rec for part in results for rec in part), key=lambda rec: _record_key(rec))
        page = merged[:page_size]
        more = len(merged) > page_size or any(len(part) >= page_size for part in results)
        token = _encode_token(_record_key(page[-1]), _INSTANCE_TOKEN) if page and more else None
        return Page([self._state(rec) for rec in page], token)  # type: ignore[misc]

    def get_all_instances(self, **filters: Any) -> list[OrchestrationState]:
        """Every instance matching ``query_instances`` filters, following all pages."""
        return _all_pages(self.query_instances, filters)

    # -- entities ------------------------------------------------------------------------

    def _entity_call(self, entity: Any, op: str, args: dict[str, Any], *, mutating: bool) -> Any:
        entity_id = str(EntityId.of(entity))
        request_id = uuid.uuid4().hex if mutating else None
        future = self._transport.submit(
            partition_for(entity_id, self._transport.partition_count),
            op,
            {"entity_id": entity_id, **args},
            request_id,
        )
        return future.result()

    def signal_entity(
        self,
        entity_id: Any,
        operation: str,
        input: Any = None,
        *,
        signal_time: datetime | timedelta | None = None,
    ) -> None:
        """Send a one-way operation to an entity; returns once the signal is durable.

        ``signal_time`` (a datetime, or a delay) defers the operation until then: a time
        from 1970 to about year 9899, a delay of at most a century. The operation name is
        at most 256 bytes of UTF-8, the entity id (``@name@key``) at most 256.
        Signals from one client are applied in the order they were sent.
        """
        _limits.check_name(operation, "entity operation")
        encoded = self._encode(input, "entity operation input")
        when = _when(signal_time, "signal_time")
        self._entity_call(
            entity_id,
            "signal_entity",
            {"operation": operation, "input": encoded, "signal_time": when},
            mutating=True,
        )

    def signal_entities(self, signals: Iterable[tuple[Any, str, Any]]) -> None:
        """Send many one-way operations ``(entity_id, operation, input)`` at once.

        Batched per partition, so thousands of signals cost a few requests; signals to
        one entity are applied in the order given. Returns once all are durable.
        """
        ops = []
        for entity, operation, value in signals:
            _limits.check_name(operation, "entity operation")
            entity_id = str(EntityId.of(entity))
            ops.append(
                (
                    entity_id,
                    "signal_entity",
                    {
                        "entity_id": entity_id,
                        "operation": operation,
                        "input": self._encode(value, "entity operation input"),
                    },
                )
            )
        self._batch(ops)

    def get_entity(self, entity_id: Any, *, include_state: bool = True) -> EntityMetadata | None:
        """The entity's metadata (and state), or None if it does not exist."""
        record = self._entity_call(
            entity_id, "get_entity", {"include_state": include_state}, mutating=False
        )
        return None if record is None else _entity_metadata(record)

    def query_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str | None = None,
        include_state: bool = True,
        page_size: int = 100,
        continuation_token: str | None = None,
    ) -> Page[EntityMetadata]:
        """One page of entities, by id; filter by entity name and key prefix.

        ``page_size`` is 1 to 10,000 (ValueError otherwise).
        """
        _limits.check_page_size(page_size)
        if name is not None:
            _limits.check_name(name, "entity name")
        _limits.check_text(key_prefix, "key_prefix")
        if key_prefix and not name:
            raise ValueError("key_prefix needs name")
        prefix = "@" if not name else f"@{name.lower()}@{key_prefix or ''}"
        key = _decode_token(continuation_token, _ENTITY_TOKEN)
        after = None if key is None else key.decode()
        results = self._call_all(
            "query_entities",
            {"prefix": prefix, "after": after, "limit": page_size, "include_state": include_state},
        )
        merged = sorted((rec for part in results for rec in part), key=lambda rec: rec.entity_id)
        page = merged[:page_size]
        more = len(merged) > page_size or any(len(part) >= page_size for part in results)
        token = _encode_token(page[-1].entity_id.encode(), _ENTITY_TOKEN) if page and more else None
        return Page([_entity_metadata(rec) for rec in page], token)

    def get_all_entities(self, **filters: Any) -> list[EntityMetadata]:
        """Every entity matching ``query_entities`` filters, following all pages."""
        return _all_pages(self.query_entities, filters)

    def clean_entity_storage(
        self, *, remove_empty_entities: bool = True, release_orphaned_locks: bool = True
    ) -> CleanEntityStorageResult:
        """Remove empty entities and release locks held by instances no longer running."""
        results = self._call_all(
            "clean_entities", {"remove_empty": remove_empty_entities}, mutating=True
        )
        removed = sum(count for count, _ in results)
        released = 0
        if release_orphaned_locks:
            for _, locks in results:
                for entity_id, holder, owner in locks:
                    state = self.get_orchestration_state(holder, fetch_payloads=False)
                    if state is not None and not state.runtime_status.is_terminal:
                        continue
                    if self._entity_call(
                        entity_id, "release_entity_lock", {"owner": owner}, mutating=True
                    ):
                        released += 1
        return CleanEntityStorageResult(removed, released)

    def partition_stats(self) -> list[dict[str, Any]]:
        """Counters and load of every partition."""
        return self._call_all("stats", {})

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def attach(cls, hub: str, *, address: str | None = "auto") -> Client:
        """A client of a hub already running on a Ray cluster, without the app's code.

        Orchestrations and activities are then named by string.
        """
        from duraray._errors import HubConfigurationError
        from duraray.runtime.ray.manager import PartitionManager, RayTransport, ensure_ray

        ensure_ray(address)
        handle = PartitionManager.find(hub)
        if handle is None:
            raise HubConfigurationError(f"hub {hub!r} is not running on this Ray cluster")
        return cls(
            RayTransport(handle), hub=hub, max_payload_bytes=handle.info["max_payload_bytes"]
        )

    def shutdown_hub(self) -> None:
        """Stop the hub this client talks to (its actors or its in-process engine)."""
        shutdown = getattr(self._transport, "shutdown", None)
        if shutdown is not None:
            shutdown()
            return
        from duraray.runtime.ray.manager import PartitionManager

        PartitionManager.stop(self.hub)

    def close(self) -> None:
        """Release the client (and stop the hub it owns, for an embedded run)."""
        on_close, self._on_close = self._on_close, None
        stop = getattr(self._transport, "release", None)
        if stop is not None:
            stop()
        if on_close is not None:
            on_close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_BATCH_CHUNK = 2000


def _all_pages(query: Callable[..., Page[T]], filters: dict[str, Any]) -> list[T]:
    """Follow continuation tokens until the last page; every item once, in order."""
    out: list[T] = []
    token = None
    while True:
        page = query(continuation_token=token, **filters)
        out.extend(page.items)
        token = page.continuation_token
        if token is None:
            return out


def _entity_metadata(record: EntityRecord) -> EntityMetadata:
    return EntityMetadata(
        id=EntityId.from_stored(record.entity_id),
        last_modified=record.last_modified,
        state=codec.decode_or_mark(record.state),
        locked_by=record.locked_by,
        backlog_queue_size=len(record.queue),
    )


def _record_key(record: InstanceRecord) -> bytes:
    return r.created_key(codec.utc_micros(record.created_at), record.instance_id)


# A continuation token: base64url of kind (1 byte), the last key of the page, CRC-32 of both.
# The kind and checksum make a token of the other query, or garbage, a ValueError rather
# than a silently wrong page.
_INSTANCE_TOKEN = b"I"
_ENTITY_TOKEN = b"E"


def _encode_token(key: bytes, kind: bytes) -> str:
    body = kind + key
    return base64.urlsafe_b64encode(body + zlib.crc32(body).to_bytes(4, "big")).decode()


def _decode_token(token: str | None, kind: bytes) -> bytes | None:
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"a continuation token is a str, not {type(token).__name__}")
    malformed = ValueError(
        f"malformed continuation token {token[:64]!r}: pass back the token of the previous "
        f"page of the same query"
    )
    try:
        raw = base64.b64decode(token.encode(), altchars=b"-_", validate=True)
    except (ValueError, UnicodeEncodeError):
        raise malformed from None
    body, crc = raw[:-4], raw[-4:]
    if len(raw) < 5 or body[:1] != kind or zlib.crc32(body).to_bytes(4, "big") != crc:
        raise malformed
    key = body[1:]
    if kind == _INSTANCE_TOKEN and not 9 <= len(key) <= _limits.MAX_STORE_KEY_BYTES:
        raise malformed
    if kind == _ENTITY_TOKEN:
        try:
            key.decode()
        except UnicodeDecodeError:
            raise malformed from None
    return key


def _decode_payloads(event: h.HistoryEvent) -> h.HistoryEvent:
    changes = {
        f: codec.decode_or_mark(getattr(event, f))
        for f in h.PAYLOAD_FIELDS
        if hasattr(event, f) and getattr(event, f) is not None
    }
    return dataclasses.replace(event, **changes) if changes else event
