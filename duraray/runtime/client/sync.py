"""The client: start, query and control orchestration instances of a hub.

A client talks to partitions through a transport (in-process or Ray) that turns
``(partition, operation, arguments)`` into a future. The client routes each instance id
to its partition, fans queries and bulk purges out to every partition and merges the
answers; it never touches storage.

``Client`` holds the public operations and checks their arguments (those over a whole
hub, queries, counts and bulk actions, in ``operations``); the plumbing beneath
lives beside it: ``transport`` (routing, fan-out, batching), ``queries`` (merged pages and
continuation tokens), ``entity_ops`` (bulk signals, the entity clean-up), ``events`` (bulk
external events), ``mapping`` (``map``) and ``results`` (the snapshots returned, built
from stored records).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from duraray import _limits
from duraray._errors import (
    DurableError,
    InstanceNotFoundError,
    InstanceStateError,
    SerializationError,
)
from duraray._registry import Registry
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.orchestrations.ids import validate_instance_id
from duraray.runtime import tracing
from duraray.runtime.client import entity_ops, queries
from duraray.runtime.client import events as events_ops
from duraray.runtime.client.mapping import map_orchestrations
from duraray.runtime.client.operations import HubOperations
from duraray.runtime.client.results import (
    CleanEntityStorageResult,
    EntityMetadata,
    OrchestrationState,
    OrchestrationStatus,
    Page,
    PurgeResult,
    decode_payloads,
    orchestration_state,
)

# Under its old name here: tests read an entity record through ``sync._entity_metadata``.
from duraray.runtime.client.results import entity_metadata as _entity_metadata
from duraray.runtime.client.transport import Router, Transport
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import (
    BlockingReport,
    InstanceRecord,
    ParkedItem,
    ReuseIdPolicy,
)

__all__ = [
    "BlockingReport",
    "CleanEntityStorageResult",
    "Client",
    "EntityMetadata",
    "OrchestrationState",
    "OrchestrationStatus",
    "Page",
    "ParkedItem",
    "PurgeResult",
    "Transport",
]


def _when(value: datetime | timedelta | None, what: str) -> datetime | timedelta | None:
    """A point in time or a delay: a delay is resolved by the partition on the hub's
    clock (a test's ManualClock, a Ray node whose clock differs from this process's)."""
    if value is None or isinstance(value, timedelta):
        return None if value is None else _limits.check_duration(value, what)
    if isinstance(value, datetime):
        return _limits.check_time(value, what)
    raise TypeError(f"{what} must be a datetime or a timedelta, got {type(value).__name__}")


class Client(HubOperations):
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
        # ``map`` reaches the transport and ``_partition`` directly (see ``mapping``).
        self._transport = transport
        self._router = Router(transport)
        self._cursors = queries.OpenCursors()  # read-ahead of paged queries
        self.hub = hub
        self._registry = registry
        self._max_payload = max_payload_bytes
        self._on_close = on_close

    # -- plumbing --------------------------------------------------------------------------

    def _partition(self, instance_id: str) -> int:
        return self._router.partition(instance_id)

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
        attributes = {"duraray.orchestration": name, "duraray.instance_id": instance_id}
        with tracing.client_span(f"create_orchestration:{name}", attributes) as trace:
            return self._start(
                instance_id,
                name,
                encoded,
                version=version,
                tags=tags,
                start_at=start_at,
                reuse_policy=reuse_id_policy,
                **({"trace": trace} if trace else {}),
            )

    def _start(self, instance_id: str, name: str, encoded: bytes | None, **args: Any) -> str:
        result: str = self._router.call(
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
        rest = {"version": version, "tags": tags, "start_at": None, "reuse_policy": reuse_id_policy}
        attributes = {"duraray.orchestration": name, "duraray.instances": len(ids)}
        with tracing.client_span(f"create_orchestrations:{name}", attributes) as trace:
            if trace:  # every instance is a child of this one span
                rest["trace"] = trace
            ops = [
                (iid, "start", {"instance_id": iid, "name": name, "input": payload, **rest})
                for iid, payload in zip(ids, payloads, strict=True)
            ]
            self._router.batch(ops)
        return ids

    def wait_for_orchestrations(
        self, instance_ids: Iterable[str], *, timeout: float = 60
    ) -> list[OrchestrationState]:
        """Wait until every instance has finished; states in the given order.

        ``timeout``: finite seconds from 0 to a century (ValueError otherwise).
        """
        timeout = _limits.check_timeout(timeout)
        ids = [validate_instance_id(i) for i in instance_ids]
        return [orchestration_state(record) for record in self._router.wait_all(ids, timeout)]

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
        record = self._router.call(instance_id, "get_state", {"fetch_payloads": fetch_payloads})
        return None if record is None else orchestration_state(record)

    def get_orchestration_history(self, instance_id: str) -> list[h.HistoryEvent]:
        """The current execution's history events, payloads decoded."""
        events = self._router.call(instance_id, "get_history", {})
        return [decode_payloads(e) for e in events]

    def wait_for_orchestration_start(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """Wait until the instance has left PENDING; ``TimeoutError`` after ``timeout`` s
        (finite, from 0 to a century: ValueError otherwise)."""
        return self._wait(instance_id, "start", timeout)

    def wait_for_orchestration_completion(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """Wait until the instance is COMPLETED, FAILED or TERMINATED; ``TimeoutError``
        after ``timeout`` s (finite, from 0 to a century: ValueError otherwise)."""
        return self._wait(instance_id, "completion", timeout)

    def _wait(self, instance_id: str, kind: str, timeout: float) -> OrchestrationState:
        timeout = _limits.check_timeout(timeout)
        try:
            record = self._router.call(
                instance_id, "wait", {"kind": kind, "timeout": timeout}, timeout=timeout
            )
        except TimeoutError:
            raise TimeoutError(
                f"instance {instance_id!r} did not {'start' if kind == 'start' else 'complete'} "
                f"within {timeout} s"
            ) from None
        assert record is not None
        return orchestration_state(record)

    def raise_orchestration_event(
        self, instance_id: str, event_name: str, *, data: Any = None
    ) -> None:
        """Deliver an external event; unknown id: InstanceNotFoundError, finished: InstanceStateError.

        The event name is at most 256 bytes of UTF-8.
        """
        _limits.check_name(event_name, "event name")
        encoded = self._encode(data, "event data")
        attributes = {"duraray.instance_id": instance_id, "duraray.event": event_name}
        with tracing.client_span(f"raise_event:{event_name}", attributes):
            self._router.call(
                instance_id, "raise_event", {"name": event_name, "data": encoded}, mutating=True
            )

    def raise_orchestration_events(
        self, events: Iterable[tuple[str, str] | tuple[str, str, Any]]
    ) -> list[DurableError | None]:
        """Deliver many external events ``(instance_id, event_name[, data])`` at once.

        Batched per partition; events to one instance arrive in the order given. Returns
        once all are durable: per event, in order, None if delivered, else the error
        ``raise_orchestration_event`` would raise (``InstanceNotFoundError``, or
        ``InstanceStateError`` if finished), as ``gather(..., return_exceptions=True)``
        does. Each event is checked first as ``raise_orchestration_event`` checks it: a
        bad one raises ValueError or TypeError naming its index, and nothing is sent.
        """
        ops = events_ops.event_ops(events, self._encode)
        return events_ops.outcomes(self._router.batch_each(ops))

    def terminate_orchestration(
        self, instance_id: str, *, output: Any = None, recursive: bool = True
    ) -> None:
        """Terminate a running instance (and, recursively, its sub-orchestrations).

        Terminating an instance that already finished is a no-op.
        """
        encoded = self._encode(output, "termination output")
        with tracing.client_span("terminate_orchestration", {"duraray.instance_id": instance_id}):
            self._router.call(
                instance_id, "terminate", {"output": encoded, "recursive": recursive}, mutating=True
            )

    def suspend_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Suspend: events are kept, not applied, until ``resume_orchestration``.

        ``reason`` (as for resume and rewind): at most 64 KiB of UTF-8.
        """
        _limits.check_text(reason, "reason")
        self._router.call(instance_id, "suspend", {"reason": reason}, mutating=True)

    def resume_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Resume a suspended instance; events received meanwhile are applied in order."""
        _limits.check_text(reason, "reason")
        self._router.call(instance_id, "resume", {"reason": reason}, mutating=True)

    def rewind_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Re-run a FAILED instance from its failures: only the failed work runs again."""
        _limits.check_text(reason, "reason")
        self._router.call(instance_id, "rewind", {"reason": reason}, mutating=True)

    def restart_orchestration(
        self, instance_id: str, *, restart_with_new_instance_id: bool = False
    ) -> str:
        """Run a finished instance again with its original input; returns the id used."""
        record: InstanceRecord | None = self._router.call(instance_id, "get_state", {})
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
            count, children = self._router.call(current, "purge", {}, mutating=True)
            total += count
            if recursive and count:
                pending.extend(children)
        return PurgeResult(total)

    # -- entities ------------------------------------------------------------------------

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
        args: dict[str, Any] = {"operation": operation, "input": encoded, "signal_time": when}
        entity = EntityId.of(entity_id)
        attributes = {"duraray.entity": str(entity), "duraray.operation": operation}
        with tracing.client_span(f"signal_entity:{entity.name}:{operation}", attributes) as trace:
            if trace:  # the operation's span on the entity's partition is its child
                args["trace"] = trace
            self._router.call_entity(entity, "signal_entity", args, mutating=True)

    def signal_entities(self, signals: Iterable[tuple[Any, str, Any]]) -> None:
        """Send many one-way operations ``(entity_id, operation, input)`` at once.

        Batched per partition, so thousands of signals cost a few requests; signals to
        one entity are applied in the order given. Returns once all are durable.
        """
        self._router.batch(entity_ops.signal_ops(signals, self._encode))

    def get_entity(self, entity_id: Any, *, include_state: bool = True) -> EntityMetadata | None:
        """The entity's metadata (and state), or None if it does not exist."""
        record = self._router.call_entity(
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
        return queries.query_entities(
            self._router,
            name=name,
            key_prefix=key_prefix,
            include_state=include_state,
            page_size=page_size,
            continuation_token=continuation_token,
        )

    def get_all_entities(self, **filters: Any) -> list[EntityMetadata]:
        """Every entity matching ``query_entities`` filters, following all pages."""
        return queries.all_pages(self.query_entities, filters)

    def clean_entity_storage(
        self, *, remove_empty_entities: bool = True, release_orphaned_locks: bool = True
    ) -> CleanEntityStorageResult:
        """Remove empty entities and release locks held by instances no longer running."""
        return entity_ops.clean_storage(
            self._router,
            remove_empty=remove_empty_entities,
            release_orphaned_locks=release_orphaned_locks,
            state_of=self.get_orchestration_state,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def attach(cls, hub: str, *, address: str | None = "auto") -> Client:
        """A client of a hub already running on a Ray cluster, without the app's code.

        Orchestrations and activities are then named by string.
        """
        from duraray.runtime.ray.manager import attach_transport

        transport, max_payload_bytes = attach_transport(hub, address)
        return cls(transport, hub=hub, max_payload_bytes=max_payload_bytes)

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
