"""The shared activity workers as a partition sees them (runtime/ray/shared_pool.py): started
by the pools actor on first use, a batch run as a task while none has answered, a fixed
size, no batch for a worker found lost until the workers answer again."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import ray

import duraray as dr
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import ActivityTask
from duraray.runtime.ray.pools import ActivityPools, pools_actor_name
from duraray.runtime.ray.shared_pool import NAMESPACE, SharedPool, worker_actor_name

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TIMEOUT = 60
HUB = "rt-shared-pool"

app = dr.App(HUB)


@app.activity
def triple(ctx: dr.ActivityContext, n: int) -> int:
    """Three times ``n``."""
    return 3 * n


def _task(n: int) -> ActivityTask:
    return ActivityTask("i", "e1", n, "triple", codec.encode(n), 0)


def _exists(index: int) -> bool:
    try:
        ray.get_actor(worker_actor_name(HUB, index), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


async def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"{what} not reached within {TIMEOUT} s"
        await asyncio.sleep(0.02)


@pytest.fixture
def pools(ray_session) -> Any:
    """The hub's pools actor (it owns the shared workers); killed with them at the end."""
    actor = ActivityPools.options(
        name=pools_actor_name(HUB), namespace=NAMESPACE, max_concurrency=100
    ).remote(HUB, app.registry, 60.0)
    yield actor
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + TIMEOUT
    while any(_exists(i) for i in range(3)) and time.monotonic() < deadline:
        time.sleep(0.05)  # its children go with it; the next test starts afresh


def test_started_on_first_use_and_restarted_when_lost(pools: Any) -> None:
    """Nothing starts until a batch asks; until a worker answers, a batch runs as a task;
    a worker found lost takes no batch until the workers answer again."""

    async def scenario(pool: SharedPool) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        pool.resize(2)  # the cluster's CPUs, told before anything needs the pool
        await asyncio.sleep(0.2)
        seen["before_use"] = [_exists(i) for i in range(3)]
        seen["first_pick"] = pool.pick()  # starts the pool; no worker has answered yet
        ran = await pool.as_task.remote(ray.put(app.registry), [_task(1), _task(2)])
        seen["as_task"] = [codec.decode(r.result) for r in ran]
        await _until(lambda: pool.started == 2, "two workers started")
        pool.resize(8)  # a bigger cluster later: the pool keeps its size
        worker = pool.pick()
        seen["on_worker"] = [codec.decode(r.result) for r in await worker.run.remote([_task(5)])]
        old = await worker.__ray_call__.remote(lambda self: os.getpid())
        ray.kill(worker, no_restart=False)  # Ray restarts it
        pool.lost(worker)
        seen["after_loss"] = (pool.started, pool.pick())
        # Each batch asks for a worker; the pool asks the pools actor again and takes
        # each worker back as it answers (the killed one once Ray has restarted it).
        await _until(lambda: bool(pool.pick()) and pool.started == 2, "both answered again")
        seen["restarted"] = old != await worker.__ray_call__.remote(lambda self: os.getpid())
        seen["exist"] = [_exists(i) for i in range(3)]
        return seen

    pool = SharedPool(size=None, concurrency=2, find_pools=lambda: pools)
    seen = asyncio.run(scenario(pool))

    assert [False, False, False] == seen["before_use"]
    assert seen["first_pick"] is None
    assert [3, 6] == seen["as_task"]
    assert [15] == seen["on_worker"]
    assert (0, None) == seen["after_loss"]
    assert seen["restarted"]
    assert [True, True, False] == seen["exist"]


def test_a_fixed_size_and_no_pools_actor(pools: Any) -> None:
    """``activity_workers`` fixes the pool's size whatever the cluster; without a pools
    actor every batch runs as a task and the pool asks again later."""

    async def scenario() -> tuple[Any, int, int]:
        orphan = SharedPool(size=None, concurrency=1, find_pools=lambda: None)
        first = orphan.pick()
        await asyncio.sleep(0.1)
        fixed = SharedPool(size=1, concurrency=1, find_pools=lambda: pools)
        fixed.resize(16)
        fixed.pick()
        await _until(lambda: fixed.started == 1, "the one worker started")
        return first, orphan.started, sum(_exists(i) for i in range(3))

    first, orphan_started, existing = asyncio.run(scenario())
    assert (None, 0, 1) == (first, orphan_started, existing)
