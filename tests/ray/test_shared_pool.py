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
    return _task_of("triple", n)


def _task_of(name: str, value: Any) -> ActivityTask:
    return ActivityTask("i", "e1", 0, name, codec.encode(value), 0)


def _exists(index: int) -> bool:
    try:
        ray.get_actor(worker_actor_name(HUB, index), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _dead(handle: Any) -> bool:
    try:
        ray.get(handle.ping.remote(), timeout=5)
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.GetTimeoutError:
        return False
    return False


async def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"{what} not reached within {TIMEOUT} s"
        await asyncio.sleep(0.02)


@pytest.fixture
def pools(ray_session) -> Any:
    """The hub's pools actor (it owns the shared workers); killed with them at the end."""
    actor = ActivityPools.options(
        name=pools_actor_name(HUB), namespace=NAMESPACE, max_concurrency=100, max_restarts=-1
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


@app.activity
def nap(ctx: dr.ActivityContext, seconds: float) -> float:
    """Sleeps ``seconds``: keeps a worker's threads busy."""
    time.sleep(seconds)
    return seconds


def test_the_first_caller_sizes_the_pool_and_a_busy_worker_still_answers(pools: Any) -> None:
    """A partition that starts later on a bigger cluster gets the pool as it is (it does
    not grow onto new nodes); a worker whose every batch thread is busy still answers the
    ping that lets a partition use it."""

    async def scenario() -> tuple[int, int, bool, int]:
        first = SharedPool(size=None, concurrency=1, find_pools=lambda: pools)
        first.resize(1)  # 1 CPU: the pool's size is 2 (at least 2)
        first.pick()
        await _until(lambda: first.started == 2, "the first partition's workers")
        busy = [w.run.remote([_task_of("nap", 30.0)]) for w in first._ready]
        later = SharedPool(size=None, concurrency=1, find_pools=lambda: pools)
        later.resize(16)  # the cluster grew since
        later.pick()
        await _until(lambda: later.started == 2, "the later partition's workers")
        still_busy = not any(ray.wait(busy, timeout=0)[0])
        return later.target, sum(_exists(i) for i in range(4)), still_busy, first.target

    later_target, existing, still_busy, first_target = asyncio.run(scenario())
    assert (2, 2, True, 2) == (later_target, existing, still_busy, first_target)


def test_workers_come_back_after_the_pools_actor_restarts(pools: Any) -> None:
    """The pools actor restarted (its workers die with it): the batch that meets the lost
    worker reports it, and the partition gets new workers from the new pools process."""

    async def scenario() -> tuple[bool, list[int]]:
        pool = SharedPool(size=2, concurrency=1, find_pools=lambda: pools)
        pool.pick()
        await _until(lambda: pool.started == 2, "two workers")
        old = [await w.__ray_call__.remote(lambda self: os.getpid()) for w in pool._ready]
        handles = list(pool._ready)
        ray.kill(pools, no_restart=False)
        await _until(lambda: all(_dead(h) for h in handles), "the old workers gone")
        worker = pool.pick()
        try:
            await worker.run.remote([_task(1)])
            failed = False
        except ray.exceptions.RayActorError:
            failed = True
            pool.lost(worker)
        await _until(lambda: bool(pool.pick()) and pool.started == 2, "two new workers")
        new = [await w.__ray_call__.remote(lambda self: os.getpid()) for w in pool._ready]
        return failed, [p for p in new if p in old]

    failed, reused = asyncio.run(scenario())
    assert (True, []) == (failed, reused)


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
