"""The express lane's bookkeeping (no Ray cluster): small instances' inline chunks run on
their own thread, the batch loop waits for them only when asked and only briefly, and a
chunk that blocks sends the next express chunks to the ordinary inline threads."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from duraray.runtime.ray.express import WAIT_S, ExpressLane


def _job(executor, fn):
    loop = asyncio.get_running_loop()

    async def run():
        await loop.run_in_executor(executor, fn)

    return loop.create_task(run())


def test_settle_waits_for_the_chunk_just_released():
    async def scenario():
        lane = ExpressLane()
        fallback = ThreadPoolExecutor(max_workers=1)
        ran = threading.Event()
        pool = lane.executor(fallback)
        assert pool is not fallback  # the express thread is free
        job = _job(pool, ran.set)
        lane.started(job, pool)
        await lane.settle(True)
        assert ran.is_set() and job.done()
        # Finished chunks leave the express thread free again.
        assert lane.executor(fallback) is pool

    asyncio.run(scenario())


def test_settle_does_not_wait_without_more_work_and_forgets_the_chunks():
    async def scenario():
        lane = ExpressLane()
        fallback = ThreadPoolExecutor(max_workers=1)
        release = threading.Event()
        pool = lane.executor(fallback)
        job = _job(pool, release.wait)
        lane.started(job, pool)
        await lane.settle(False)
        assert not job.done()
        assert [] == lane._jobs  # forgotten: the next settle does not wait for it
        release.set()
        await job

    asyncio.run(scenario())


def test_a_blocked_chunk_is_let_go_and_the_next_goes_to_the_inline_threads():
    async def scenario():
        lane = ExpressLane()
        fallback = ThreadPoolExecutor(max_workers=1)
        release = threading.Event()
        pool = lane.executor(fallback)
        blocked = _job(pool, release.wait)
        lane.started(blocked, pool)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await lane.settle(True)  # gives up after WAIT_S
        assert loop.time() - started >= WAIT_S * 0.5
        assert not blocked.done()
        # The express thread is taken: the next express chunk runs on the fallback.
        assert lane.executor(fallback) is fallback
        ran = threading.Event()
        job = _job(fallback, ran.set)
        lane.started(job, fallback)
        await lane.settle(True)
        assert ran.is_set()
        release.set()
        await blocked
        assert lane.executor(fallback) is not fallback

    asyncio.run(scenario())
