"""End to end: AsyncClient mirrors the Client as coroutines; shutdown_hub stops an in-process hub."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import duraray as dr
from duraray.runtime.client.aio import ASYNC_METHODS
from duraray.testing import run_in_process

from .helpers import TIMEOUT

app = dr.App("e2e-async-client")

Status = dr.OrchestrationStatus


@app.activity
def double(ctx: dr.ActivityContext, value: int) -> int:
    return value * 2


@app.orchestration
def double_after_event(ctx: dr.OrchestrationContext, value: int):
    extra = yield ctx.wait_for_external_event("extra")
    return (yield ctx.call_activity(double, input=value + extra))


def test_async_client_mirrors_every_client_method():
    """Every mirrored name exists on Client and AsyncClient, and the async one is a coroutine function."""
    for name in ASYNC_METHODS:
        assert callable(getattr(dr.Client, name)), name
        assert inspect.iscoroutinefunction(getattr(dr.AsyncClient, name)), name


def test_async_client_drives_an_orchestration(client):
    """Through AsyncClient an orchestration is started, sent an event, awaited, queried and purged."""

    async def scenario() -> tuple:
        async with dr.AsyncClient(client) as aclient:
            iid = await aclient.schedule_new_orchestration(double_after_event, input=20)
            started = await aclient.wait_for_orchestration_start(iid, timeout=TIMEOUT)
            await aclient.raise_orchestration_event(iid, "extra", data=1)
            done = await aclient.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
            history = await aclient.get_orchestration_history(iid)
            page = await aclient.query_instances(runtime_status=[Status.COMPLETED])
            purged = await aclient.purge_orchestration(iid)
            gone = await aclient.get_orchestration_state(iid)
            return started.runtime_status, done.output, len(history) > 0, page.items, purged, gone

    status, output, has_history, items, purged, gone = asyncio.run(scenario())
    assert status in (Status.RUNNING, Status.COMPLETED)
    expected = 42
    assert expected == output
    assert has_history
    expected_count = 1
    assert expected_count == len(items)
    assert dr.PurgeResult(1) == purged
    assert gone is None


def test_async_client_raises_the_sync_errors(client):
    """AsyncClient raises the same errors as the synchronous client."""

    async def scenario() -> None:
        aclient = dr.AsyncClient(client)
        with pytest.raises(dr.InstanceNotFoundError):
            await aclient.raise_orchestration_event("missing", "extra")
        with pytest.raises(TimeoutError):
            iid = await aclient.schedule_new_orchestration(double_after_event, input=1)
            await aclient.wait_for_orchestration_completion(iid, timeout=0.2)

    asyncio.run(scenario())


def test_shutdown_hub_stops_an_in_process_hub():
    """Client.shutdown_hub stops the in-process engine; later calls raise instead of hanging."""
    with run_in_process(app) as c:
        iid = c.schedule_new_orchestration(double_after_event, input=1)
        c.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        c.shutdown_hub()
        with pytest.raises(RuntimeError, match="stopped"):
            c.get_orchestration_state(iid)
