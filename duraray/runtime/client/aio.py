"""AsyncClient: every Client method as a coroutine.

Each call runs the synchronous client's method in a worker thread, so the event loop is
never blocked by a wait or a commit; the behaviour (and every error) is the sync client's.
The methods are written out (not attached at import) so that type checkers see them;
tests/runtime/test_async_client_surface.py checks they match ``Client`` one for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from duraray._errors import DurableError
from duraray.orchestrations import history as h
from duraray.runtime.client.results import (
    CleanEntityStorageResult,
    EntityMetadata,
    OrchestrationState,
    OrchestrationStatus,
    Page,
    PurgeResult,
)
from duraray.runtime.client.sync import Client
from duraray.runtime.engine.records import BlockingReport, ParkedItem

#: The Client methods mirrored as coroutines.
ASYNC_METHODS = (
    "schedule_new_orchestration",
    "schedule_new_orchestrations",
    "wait_for_orchestrations",
    "signal_entities",
    "get_orchestration_state",
    "get_orchestration_history",
    "wait_for_orchestration_start",
    "wait_for_orchestration_completion",
    "raise_orchestration_event",
    "raise_orchestration_events",
    "terminate_orchestration",
    "suspend_orchestration",
    "resume_orchestration",
    "rewind_orchestration",
    "restart_orchestration",
    "purge_orchestration",
    "purge_orchestrations_by",
    "query_instances",
    "count_instances",
    "terminate_instances",
    "purge_instances",
    "get_all_instances",
    "signal_entity",
    "get_entity",
    "query_entities",
    "get_all_entities",
    "clean_entity_storage",
    "partition_stats",
    "get_parked_items",
    "get_blocking_report",
    "shutdown_hub",
)


class AsyncClient:
    """An asyncio client of a hub: ``AsyncClient(client)`` or ``AsyncClient.attach(hub)``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.hub = client.hub

    @classmethod
    def attach(cls, hub: str, *, address: str | None = "auto") -> AsyncClient:
        """An async client of a hub running on a Ray cluster (see ``Client.attach``)."""
        return cls(Client.attach(hub, address=address))

    async def map(self, orchestrator: Any, inputs: Any, **options: Any) -> AsyncIterator[Any]:
        """``Client.map`` as an async generator (each step runs in a worker thread)."""
        iterator = await asyncio.to_thread(self.client.map, orchestrator, inputs, **options)
        done = object()
        try:
            while True:
                item = await asyncio.to_thread(next, iterator, done)
                if item is done:
                    return
                yield item
        finally:
            # Leaving early (break, cancellation) closes the job's generator and its bar.
            close = getattr(iterator, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    async def schedule_new_orchestration(
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
        """``Client.schedule_new_orchestration`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.schedule_new_orchestration,
            orchestrator,
            input=input,
            instance_id=instance_id,
            start_at=start_at,
            reuse_id_policy=reuse_id_policy,
            tags=tags,
            version=version,
        )

    async def schedule_new_orchestrations(
        self,
        orchestrator: Any,
        inputs: Iterable[Any],
        *,
        instance_ids: Iterable[str] | None = None,
        tags: dict[str, str] | None = None,
        version: str | None = None,
        reuse_id_policy: str | None = None,
    ) -> list[str]:
        """``Client.schedule_new_orchestrations`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.schedule_new_orchestrations,
            orchestrator,
            inputs,
            instance_ids=instance_ids,
            tags=tags,
            version=version,
            reuse_id_policy=reuse_id_policy,
        )

    async def wait_for_orchestrations(
        self, instance_ids: Iterable[str], *, timeout: float = 60
    ) -> list[OrchestrationState]:
        """``Client.wait_for_orchestrations`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.wait_for_orchestrations, instance_ids, timeout=timeout
        )

    async def signal_entities(self, signals: Iterable[tuple[Any, str, Any]]) -> None:
        """``Client.signal_entities`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.signal_entities, signals)

    async def get_orchestration_state(
        self, instance_id: str, *, fetch_payloads: bool = True
    ) -> OrchestrationState | None:
        """``Client.get_orchestration_state`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.get_orchestration_state, instance_id, fetch_payloads=fetch_payloads
        )

    async def get_orchestration_history(self, instance_id: str) -> list[h.HistoryEvent]:
        """``Client.get_orchestration_history`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.get_orchestration_history, instance_id)

    async def wait_for_orchestration_start(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """``Client.wait_for_orchestration_start`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.wait_for_orchestration_start, instance_id, timeout=timeout
        )

    async def wait_for_orchestration_completion(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """``Client.wait_for_orchestration_completion`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.wait_for_orchestration_completion, instance_id, timeout=timeout
        )

    async def raise_orchestration_event(
        self, instance_id: str, event_name: str, *, data: Any = None
    ) -> None:
        """``Client.raise_orchestration_event`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.raise_orchestration_event, instance_id, event_name, data=data
        )

    async def raise_orchestration_events(
        self, events: Iterable[tuple[str, str] | tuple[str, str, Any]]
    ) -> list[DurableError | None]:
        """``Client.raise_orchestration_events`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.raise_orchestration_events, events)

    async def terminate_orchestration(
        self, instance_id: str, *, output: Any = None, recursive: bool = True
    ) -> None:
        """``Client.terminate_orchestration`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.terminate_orchestration, instance_id, output=output, recursive=recursive
        )

    async def suspend_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """``Client.suspend_orchestration`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.suspend_orchestration, instance_id, reason=reason
        )

    async def resume_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """``Client.resume_orchestration`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.resume_orchestration, instance_id, reason=reason)

    async def rewind_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """``Client.rewind_orchestration`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.rewind_orchestration, instance_id, reason=reason)

    async def restart_orchestration(
        self, instance_id: str, *, restart_with_new_instance_id: bool = False
    ) -> str:
        """``Client.restart_orchestration`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.restart_orchestration,
            instance_id,
            restart_with_new_instance_id=restart_with_new_instance_id,
        )

    async def purge_orchestration(self, instance_id: str, *, recursive: bool = True) -> PurgeResult:
        """``Client.purge_orchestration`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.purge_orchestration, instance_id, recursive=recursive
        )

    async def purge_orchestrations_by(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Any = None,
    ) -> PurgeResult:
        """``Client.purge_orchestrations_by`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.purge_orchestrations_by, created_time_from, created_time_to, runtime_status
        )

    async def query_instances(
        self,
        *,
        runtime_status: Any = None,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        instance_id_prefix: str | None = None,
        page_size: int = 100,
        continuation_token: str | None = None,
        fetch_payloads: bool = True,
        newest_first: bool = False,
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Page[OrchestrationState]:
        """``Client.query_instances`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.query_instances,
            runtime_status=runtime_status,
            created_time_from=created_time_from,
            created_time_to=created_time_to,
            instance_id_prefix=instance_id_prefix,
            page_size=page_size,
            continuation_token=continuation_token,
            fetch_payloads=fetch_payloads,
            newest_first=newest_first,
            name=name,
            tags=tags,
        )

    async def count_instances(
        self,
        *,
        runtime_status: Any = None,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        instance_id_prefix: str | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> dict[OrchestrationStatus, int]:
        """``Client.count_instances`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.count_instances,
            runtime_status=runtime_status,
            created_time_from=created_time_from,
            created_time_to=created_time_to,
            instance_id_prefix=instance_id_prefix,
            name=name,
            tags=tags,
        )

    async def terminate_instances(
        self,
        *,
        output: Any = None,
        recursive: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
        **filters: Any,
    ) -> int:
        """``Client.terminate_instances`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.terminate_instances,
            output=output,
            recursive=recursive,
            on_progress=on_progress,
            **filters,
        )

    async def purge_instances(
        self, *, on_progress: Callable[[int, int], None] | None = None, **filters: Any
    ) -> PurgeResult:
        """``Client.purge_instances`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.purge_instances, on_progress=on_progress, **filters
        )

    async def get_all_instances(self, **filters: Any) -> list[OrchestrationState]:
        """``Client.get_all_instances`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.get_all_instances, **filters)

    async def signal_entity(
        self,
        entity_id: Any,
        operation: str,
        input: Any = None,
        *,
        signal_time: datetime | timedelta | None = None,
    ) -> None:
        """``Client.signal_entity`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.signal_entity, entity_id, operation, input, signal_time=signal_time
        )

    async def get_entity(
        self, entity_id: Any, *, include_state: bool = True
    ) -> EntityMetadata | None:
        """``Client.get_entity`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.get_entity, entity_id, include_state=include_state
        )

    async def query_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str | None = None,
        include_state: bool = True,
        page_size: int = 100,
        continuation_token: str | None = None,
    ) -> Page[EntityMetadata]:
        """``Client.query_entities`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.query_entities,
            name=name,
            key_prefix=key_prefix,
            include_state=include_state,
            page_size=page_size,
            continuation_token=continuation_token,
        )

    async def get_all_entities(self, **filters: Any) -> list[EntityMetadata]:
        """``Client.get_all_entities`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.get_all_entities, **filters)

    async def clean_entity_storage(
        self, *, remove_empty_entities: bool = True, release_orphaned_locks: bool = True
    ) -> CleanEntityStorageResult:
        """``Client.clean_entity_storage`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.clean_entity_storage,
            remove_empty_entities=remove_empty_entities,
            release_orphaned_locks=release_orphaned_locks,
        )

    async def partition_stats(self) -> list[dict[str, Any]]:
        """``Client.partition_stats`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.partition_stats,
        )

    async def get_parked_items(self, limit: int = 100) -> list[ParkedItem]:
        """``Client.get_parked_items`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.get_parked_items, limit)

    async def get_blocking_report(self, instance_id: str) -> BlockingReport | None:
        """``Client.get_blocking_report`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(self.client.get_blocking_report, instance_id)

    async def shutdown_hub(self) -> None:
        """``Client.shutdown_hub`` as a coroutine (the call runs in a worker thread)."""
        return await asyncio.to_thread(
            self.client.shutdown_hub,
        )

    async def close(self) -> None:
        """Release the client."""
        await asyncio.to_thread(self.client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
