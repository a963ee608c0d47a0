"""AsyncClient: every Client method as a coroutine.

Each call runs the synchronous client's method in a worker thread, so the event loop is
never blocked by a wait or a commit; the behaviour (and every error) is the sync client's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from duraray.runtime.client.sync import Client

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

    async def close(self) -> None:
        """Release the client."""
        await asyncio.to_thread(self.client.close)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _mirror(name: str) -> Callable[..., Any]:
    sync = getattr(Client, name)

    @functools.wraps(sync)
    async def method(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.client, name), *args, **kwargs)

    return method


for _name in ASYNC_METHODS:
    setattr(AsyncClient, _name, _mirror(_name))
