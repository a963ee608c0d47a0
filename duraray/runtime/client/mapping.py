"""``Client.map``: one durable orchestration per input, bounded, resumable, in order.

The inputs are consumed lazily and at most ``max_in_flight`` instances are outstanding at
once (backpressure), so mapping millions of inputs keeps memory flat. With deterministic
instance ids (a prefix or a function of the index and input), re-running a job after a
crash re-uses what already completed: finished instances are read back, running ones are
awaited, failed or terminated ones are started again.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from duraray._errors import FailureDetails, OrchestrationFailedError
from duraray.orchestrations.history import OrchestrationStatus
from duraray.runtime.client.results import OrchestrationState
from duraray.runtime.client.transport import Transport

#: What ``Client.map`` does with an item whose orchestration failed or was terminated.
ON_ERROR = ("raise", "skip", "collect")

#: How many instances one round trip starts or awaits.
_CHUNK = 500


class MapClient(Protocol):
    """What mapping uses of a ``duraray.runtime.client.sync.Client``.

    A protocol rather than the class: ``Client.map`` imports this module, so importing the
    client here (even only for type checking) would tie the two modules in a cycle.
    """

    @property
    def _transport(self) -> Transport: ...

    def _name(self, kind: str, target: Any) -> str: ...

    def _partition(self, instance_id: str) -> int: ...

    def schedule_new_orchestrations(
        self,
        orchestrator: Any,
        inputs: Iterable[Any],
        *,
        instance_ids: Iterable[str] | None = None,
        reuse_id_policy: str | None = None,
    ) -> list[str]: ...

    def wait_for_orchestrations(
        self, instance_ids: Iterable[str], *, timeout: float = 60
    ) -> list[OrchestrationState]: ...


@dataclass(frozen=True, slots=True)
class MapFailure:
    """The outcome of an item whose orchestration did not complete (``on_error="collect"``)."""

    index: int
    instance_id: str
    status: OrchestrationStatus
    failure: FailureDetails | None


def instance_ids_for(
    instance_id: str | Callable[[int, Any], str] | None,
) -> Callable[[int, Any], str | None]:
    """Turn ``map``'s ``instance_id`` argument into a function of (index, input)."""
    if instance_id is None:
        return lambda index, value: None
    if isinstance(instance_id, str):
        prefix = instance_id
        return lambda index, value: f"{prefix}-{index}"
    if callable(instance_id):
        return instance_id
    raise TypeError("instance_id must be a prefix string, a function (index, input) -> id, or None")


def map_orchestrations(
    client: MapClient,
    orchestrator: Any,
    inputs: Iterable[Any],
    *,
    instance_id: str | Callable[[int, Any], str] | None = None,
    max_in_flight: int = 1000,
    progress: bool = True,
    on_error: str = "raise",
    timeout: float | None = None,
    total: int | None = None,
) -> Iterator[Any]:
    """The generator behind ``Client.map``; see its docstring."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}")
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError("max_in_flight must be a positive integer")
    name = client._name("orchestration", orchestrator)
    make_id = instance_ids_for(instance_id)
    chunk_size = max(1, min(_CHUNK, max_in_flight))
    if total is None and hasattr(inputs, "__len__"):
        total = len(inputs)  # type: ignore[arg-type]
    bar = _progress_bar(progress, total, name)
    items = enumerate(inputs)
    window: deque[list[tuple[int, str]]] = deque()
    outstanding = 0
    try:
        while True:
            while outstanding < max_in_flight:
                chunk = list(itertools.islice(items, min(chunk_size, max_in_flight - outstanding)))
                if not chunk:
                    break
                window.append(_start_chunk(client, name, chunk, make_id))
                outstanding += len(window[-1])
            if not window:
                return
            head = window.popleft()
            outstanding -= len(head)
            states = client.wait_for_orchestrations(
                [iid for _, iid in head], timeout=timeout if timeout is not None else 1e9
            )
            for (index, iid), state in zip(head, states, strict=True):
                if bar is not None:
                    bar.update(1)
                if state.runtime_status is OrchestrationStatus.COMPLETED:
                    yield state.output
                elif on_error == "raise":
                    raise _failure_error(index, iid, state)
                elif on_error == "collect":
                    yield MapFailure(index, iid, state.runtime_status, state.failure_details)
    finally:
        if bar is not None:
            bar.close()


def _start_chunk(
    client: MapClient,
    name: str,
    chunk: list[tuple[int, Any]],
    make_id: Callable[[int, Any], str | None],
) -> list[tuple[int, str]]:
    """Start what the chunk needs; re-use instances that completed or still run."""
    import uuid

    from duraray.orchestrations.ids import validate_instance_id
    from duraray.runtime.engine.records import ReuseIdPolicy

    ids: list[str] = []
    for index, value in chunk:
        iid = make_id(index, value)
        ids.append(validate_instance_id(iid) if iid is not None else uuid.uuid4().hex)
    existing = _read_records(client, ids)
    to_start = [
        (iid, value)
        for iid, (_, value), record in zip(ids, chunk, existing, strict=True)
        # Completed or still running: awaited as they are. Anything else runs (again).
        if record is None
        or (record.status not in (OrchestrationStatus.COMPLETED,) and not record.status.is_running)
    ]
    if to_start:
        client.schedule_new_orchestrations(
            name,
            [value for _, value in to_start],
            instance_ids=[iid for iid, _ in to_start],
            reuse_id_policy=ReuseIdPolicy.IGNORE_IF_RUNNING,
        )
    return [(index, iid) for (index, _), iid in zip(chunk, ids, strict=True)]


def _read_records(client: MapClient, ids: list[str]) -> list[Any]:
    """The instance records of ``ids`` (None where absent), in order, one request per partition.

    Not ``Router.batch``: that sends a request id, which makes the partition store the reply
    for deduplication, and a reply holding instance records cannot be stored (nor need it
    be: a read has nothing to deduplicate).
    """
    from duraray.runtime.engine.records import Reply

    by_partition: dict[int, list[int]] = {}
    for index, iid in enumerate(ids):
        by_partition.setdefault(client._partition(iid), []).append(index)
    pending = [
        (
            indexes,
            client._transport.submit(
                partition,
                "batch",
                {
                    "ops": [
                        ("get_state", {"instance_id": ids[i], "fetch_payloads": False})
                        for i in indexes
                    ]
                },
                None,
            ),
        )
        for partition, indexes in by_partition.items()
    ]
    records: list[Any] = [None] * len(ids)
    for indexes, future in pending:
        for index, record in zip(indexes, future.result(), strict=True):
            if isinstance(record, Reply):
                raise record.error
            records[index] = record
    return records


def _failure_error(
    index: int, instance_id: str, state: OrchestrationState
) -> OrchestrationFailedError:
    details = state.failure_details
    reason = details.message if details else state.runtime_status.value
    err = OrchestrationFailedError(
        f"item {index} (instance {instance_id!r}) ended {state.runtime_status.value}: {reason}",
        details,
    )
    err.instance_id = instance_id  # type: ignore[attr-defined]
    err.index = index  # type: ignore[attr-defined]
    return err


def _progress_bar(enabled: bool, total: int | None, name: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (CI logs stay clean).
    return tqdm(total=total, desc=f"map {name}", unit="item", disable=None)
