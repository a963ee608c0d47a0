"""The shared activity workers as a partition sees them (runtime/ray/shared_pool.py): started
on first use, a batch run as a task while none has answered, grown as the cluster grows, a
lost worker started again under its name."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import ray

import duraray as dr
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import ActivityTask
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


def test_started_on_first_use_grown_with_the_cluster_and_restarted(ray_session) -> None:
    """Nothing starts until a batch asks; until a worker answers, a batch runs as a task;
    the pool grows to the cluster's CPUs; a lost worker is started again by name."""

    async def scenario(pool: SharedPool) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        pool.resize(2)  # the cluster's CPUs, told before anything needs the pool
        await asyncio.sleep(0.2)
        seen["before_use"] = [_exists(i) for i in range(3)]
        seen["first_pick"] = pool.pick()  # starts the pool; no worker has answered yet
        ran = await pool.as_task.remote(ray.put(app.registry), [_task(1), _task(2)])
        seen["as_task"] = [codec.decode(r.result) for r in ran]
        await _until(lambda: pool.started == 2, "two workers started")
        worker = pool.pick()
        seen["on_worker"] = [codec.decode(r.result) for r in await worker.run.remote([_task(5)])]
        pool.resize(3)  # a node joined: the pool grows to match
        await _until(lambda: pool.started == 3, "a third worker started")
        ray.kill(worker, no_restart=True)
        pool.lost(worker)
        seen["after_loss"] = pool.started
        # Each batch asks for a worker; one of those asks starts the lost one again.
        await _until(lambda: bool(pool.pick()) and pool.started == 3, "the lost one restarted")
        seen["exist"] = [_exists(i) for i in range(4)]
        return seen

    pool = SharedPool(HUB, app.registry, size=None, concurrency=2, detached=False)
    try:
        seen = asyncio.run(scenario(pool))
    finally:
        for i in range(4):
            try:
                ray.kill(ray.get_actor(worker_actor_name(HUB, i), namespace=NAMESPACE))
            except ValueError:
                pass

    assert [False, False, False] == seen["before_use"]
    assert seen["first_pick"] is None
    assert [3, 6] == seen["as_task"]
    assert [15] == seen["on_worker"]
    assert 2 == seen["after_loss"]
    assert [True, True, True, False] == seen["exist"]


def test_a_fixed_size_is_kept_whatever_the_cluster(ray_session) -> None:
    """``activity_workers`` fixes the pool's size: a bigger cluster adds no worker."""
    pool = SharedPool(HUB, app.registry, size=1, concurrency=1, detached=False)

    async def scenario() -> int:
        pool.resize(8)
        pool.pick()
        await _until(lambda: pool.started == 1, "the one worker started")
        pool.resize(16)
        await asyncio.sleep(0.2)
        return sum(_exists(i) for i in range(3))

    try:
        assert 1 == asyncio.run(scenario())
        assert 1 == pool.target
    finally:
        ray.kill(ray.get_actor(worker_actor_name(HUB, 0), namespace=NAMESPACE))
