"""How the client's requests reach partitions: routing, fan-out and batching.

A ``Transport`` (in-process or Ray) turns ``(partition, operation, arguments)`` into a
future. ``Router`` sits on top of it: it sends a request about an instance or an entity
to the partition its id hashes to, fans a request out to every partition, and packs many
small requests into a few batch requests. It knows the wire format of requests, never
what the operations mean.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, Protocol

from duraray._errors import DurableError
from duraray.entities.ids import EntityId
from duraray.orchestrations.ids import validate_instance_id
from duraray.runtime.engine.records import InstanceRecord, Reply
from duraray.runtime.engine.routing import partition_for

#: At most this many operations go in one batch request, so that one request (and the
#: partition's reply to it) stays a bounded size however many operations a call makes
#: (but see ``Router._chunks``: one key's operations are never split).
BATCH_CHUNK = 2000
#: ... and at most about this many payload bytes (inputs, event data): 2,000 events of
#: 1 MiB each would otherwise be one 2 GiB request and one commit. An operation larger
#: than this still goes, alone.
BATCH_BYTES = 16 * 1024 * 1024


class Transport(Protocol):
    """How a client reaches partitions: one future per request."""

    @property
    def partition_count(self) -> int: ...

    def submit(
        self, partition: int, op: str, args: dict[str, Any], request_id: str | None = None
    ) -> Future[Any]: ...


class Router:
    """Sends the client's requests to the partitions they concern, over one transport.

    A mutating request carries a fresh request id, so that a partition that receives it
    twice (a transport's retry) applies it once; a read carries none.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def partition(self, key: str) -> int:
        """The partition that owns an instance id or an entity id."""
        return partition_for(key, self.transport.partition_count)

    def call(
        self,
        instance_id: str,
        op: str,
        args: dict[str, Any],
        *,
        mutating: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Run ``op`` on the instance's partition; its result, after at most ``timeout`` s."""
        validate_instance_id(instance_id)
        request_id = uuid.uuid4().hex if mutating else None
        future = self.transport.submit(
            self.partition(instance_id), op, {"instance_id": instance_id, **args}, request_id
        )
        return future.result(timeout)

    def call_entity(self, entity: Any, op: str, args: dict[str, Any], *, mutating: bool) -> Any:
        """Run ``op`` on the entity's partition (``entity``: anything ``EntityId.of`` takes)."""
        entity_id = str(EntityId.of(entity))
        request_id = uuid.uuid4().hex if mutating else None
        future = self.transport.submit(
            self.partition(entity_id), op, {"entity_id": entity_id, **args}, request_id
        )
        return future.result()

    def call_all(self, op: str, args: dict[str, Any], *, mutating: bool = False) -> list[Any]:
        """Run ``op`` on every partition at once; the results in partition order."""
        futures = [
            self.transport.submit(p, op, args, uuid.uuid4().hex if mutating else None)
            for p in range(self.transport.partition_count)
        ]
        return [f.result() for f in futures]

    def batch(self, ops: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
        """Run (routing key, op, args) triples as batch requests; results in order.

        One key's operations are applied in the order given. Every operation runs, even
        when some fail; the first failure is raised afterwards.
        """
        results = self.batch_each(ops)
        first_error = next((r.error for r in results if isinstance(r, Reply)), None)
        if first_error is not None:
            raise first_error
        return results

    def batch_each(self, ops: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
        """``batch``, but each operation's own outcome, in order: its result, or a
        ``Reply`` holding its error.

        A batch request the partition refused as a whole (``StorageFullError``,
        ``PartitionFailureError``: nothing of it was stored) gives its error to each of its
        operations. Any other error (the transport's: whether the request was applied is
        unknown) is raised, once every request has been answered.
        """
        pending = [
            (chunk, self.transport.submit(partition, "batch", {"ops": body}, uuid.uuid4().hex))
            for partition, chunk, body in self._chunks(ops)
        ]
        results: list[Any] = [None] * len(ops)
        failure: BaseException | None = None
        for chunk, future in pending:
            try:
                answers = future.result()
            except DurableError as exc:
                answers = [Reply(exc)] * len(chunk)
            except Exception as exc:
                failure = failure or exc
                continue
            for index, result in zip(chunk, answers, strict=True):
                results[index] = result
        if failure is not None:
            raise failure
        return results

    def _chunks(
        self, ops: list[tuple[str, str, dict[str, Any]]]
    ) -> Iterator[tuple[int, list[int], list[tuple[str, dict[str, Any]]]]]:
        """(partition, indexes of ``ops``, their (op, args)) of each batch request.

        All the operations of one routing key go in one request, in the order given: a
        partition applies a request's operations in order, but two requests in flight to
        one partition actor may run in either order (Ray runs an async actor's calls out
        of order). A key's later operations join its request even when that one is full,
        so a key with very many operations makes its request that much larger.
        """
        by_partition: dict[int, list[int]] = {}
        for index, (key, _, _) in enumerate(ops):
            by_partition.setdefault(self.partition(key), []).append(index)
        for partition, indexes in by_partition.items():
            chunks: list[list[int]] = []
            sizes: list[int] = []
            chunk_of: dict[str, int] = {}
            for index in indexes:
                key, _, args = ops[index]
                weight = _payload_bytes(args)
                at = chunk_of.get(key)
                if at is None:
                    if not chunks or (
                        chunks[-1]
                        and (len(chunks[-1]) >= BATCH_CHUNK or sizes[-1] + weight > BATCH_BYTES)
                    ):
                        chunks.append([])
                        sizes.append(0)
                    at = chunk_of[key] = len(chunks) - 1
                chunks[at].append(index)
                sizes[at] += weight
            for chunk in chunks:
                yield partition, chunk, [(ops[i][1], ops[i][2]) for i in chunk]

    def wait_all(self, instance_ids: list[str], timeout: float) -> list[InstanceRecord]:
        """The records of ``instance_ids`` (in order) once all completed: one wait per
        partition, all under one deadline; ``TimeoutError`` when it passes first."""
        by_partition: dict[int, list[str]] = {}
        for iid in dict.fromkeys(instance_ids):
            by_partition.setdefault(self.partition(iid), []).append(iid)
        futures = [
            self.transport.submit(
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
                f"{len(instance_ids) - len(records)} of {len(instance_ids)} instances did not "
                f"complete within {timeout} s"
            ) from None
        return [records[iid] for iid in instance_ids]


def _payload_bytes(args: dict[str, Any]) -> int:
    """The encoded payloads an operation carries (what makes a request large)."""
    return sum(len(value) for value in args.values() if isinstance(value, bytes))
