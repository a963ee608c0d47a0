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
from concurrent.futures import Future
from typing import Any, Protocol

from duraray.entities.ids import EntityId
from duraray.orchestrations.ids import validate_instance_id
from duraray.runtime.engine.records import InstanceRecord, Reply
from duraray.runtime.engine.routing import partition_for

#: At most this many operations go in one batch request, so that one request (and the
#: partition's reply to it) stays a bounded size however many operations a call makes.
BATCH_CHUNK = 2000


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

        Every operation runs, even when some fail; the first failure is raised afterwards.
        """
        by_partition: dict[int, list[int]] = {}
        for index, (key, _, _) in enumerate(ops):
            by_partition.setdefault(self.partition(key), []).append(index)
        pending = []
        for partition, indexes in by_partition.items():
            for start in range(0, len(indexes), BATCH_CHUNK):
                chunk = indexes[start : start + BATCH_CHUNK]
                future = self.transport.submit(
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
