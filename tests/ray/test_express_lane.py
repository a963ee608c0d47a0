"""The express lane's bookkeeping (no Ray cluster): small instances' inline chunks run on
their own thread, the batch loop waits for them only when asked and only for chunks on
that thread, and a chunk that blocks sends the next express chunks to the ordinary
inline threads, unwaited for."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from duraray.runtime.ray import express
from duraray.runtime.ray.express import ExpressLane

#: Generous: ``settle`` returns long before this unless it waits for the wrong job.
HANG_S = 30.0


@pytest.fixture
def long_wait(monkeypatch):
    """A wait long enough that settle returns because the chunk finished, not because
    its wait ran out (no test may depend on how fast a thread starts)."""
    monkeypatch.setattr(express, "WAIT_S", HANG_S)


def _job(executor, fn):
    loop = asyncio.get_running_loop()

    async def run():
        await loop.run_in_executor(executor, fn)

    return loop.create_task(run())


def _blocked_chunk():
    """A lane whose express thread runs a chunk blocked until the event is set, the
    fallback executor, the express executor, the job and the event."""
    lane = ExpressLane()
    fallback = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    pool = lane.executor(fallback)
    job = _job(pool, release.wait)
    lane.started(job, pool)
    return lane, fallback, pool, job, release


def test_settle_waits_for_the_chunk_just_released(long_wait):
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


def test_settle_does_not_wait_without_more_work_and_forgets_the_chunks(long_wait):
    async def scenario():
        lane, _, _, job, release = _blocked_chunk()
        await lane.settle(False)
        assert not job.done()
        # Forgotten: the next settle does not wait for it (it would for HANG_S).
        await asyncio.wait_for(lane.settle(True), timeout=HANG_S / 2)
        assert not job.done()
        release.set()
        await job

    asyncio.run(scenario())


def test_a_blocked_chunk_sends_the_next_ones_to_the_inline_threads_unwaited(long_wait):
    async def scenario():
        lane, fallback, pool, blocked, release = _blocked_chunk()
        await lane.settle(False)  # the batch loop went on without it
        # The express thread is taken: the next express chunk runs on the fallback, and
        # the batch loop does not wait for it there (it may queue behind a fan-out).
        assert lane.executor(fallback) is fallback
        stuck = threading.Event()
        queued = _job(fallback, stuck.wait)
        lane.started(queued, fallback)
        await asyncio.wait_for(lane.settle(True), timeout=HANG_S / 2)
        assert not queued.done()
        stuck.set()
        release.set()
        await asyncio.gather(blocked, queued)
        assert lane.executor(fallback) is pool  # free again

    asyncio.run(scenario())
