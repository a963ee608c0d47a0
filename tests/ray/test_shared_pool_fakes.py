"""SharedPool's bookkeeping with fake actors (no Ray cluster): workers Ray refused to
create are asked for again, a lost worker makes the partition ask again at once with a
recheck, and a missing pools actor backs the asks off."""

from __future__ import annotations

import asyncio
from typing import Any

from duraray.runtime.ray.shared_pool import RETRY_S, SharedPool


class _Remote:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            return self._fn(*args)

        return call()


class FakeWorker:
    """Answers its ping."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ping = _Remote(lambda: True)


class FakePools:
    """Hands out the workers it has; records each ask's ``recheck``."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers
        self.rechecks: list[bool] = []
        self.shared_workers = _Remote(self._shared)

    def _shared(self, count: int, concurrency: int, recheck: bool) -> list[Any]:
        self.rechecks.append(recheck)
        return list(self.workers)


async def _settle(pool: SharedPool) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    while pool._jobs:
        await asyncio.gather(*pool._jobs)


def test_a_worker_not_created_is_asked_for_again_with_a_recheck() -> None:
    """One of two workers not created (None): the other takes batches; the next ask, after
    the back-off, rechecks and gets both."""
    w0, w1 = FakeWorker("w0"), FakeWorker("w1")
    pools = FakePools([w0, None])

    async def scenario() -> tuple[int, int, list[bool]]:
        pool = SharedPool(size=2, concurrency=1, find_pools=lambda: pools)
        pool.pick()
        await _settle(pool)
        first = pool.started
        pools.workers = [w0, w1]
        pool._retry_at = 0.0  # the back-off has passed
        pool.pick()
        await _settle(pool)
        return first, pool.started, pools.rechecks

    assert (1, 2, [False, True]) == asyncio.run(scenario())


def test_a_lost_worker_makes_the_pool_ask_again_at_once() -> None:
    """After ``lost``, nothing is picked until the workers answer again; the ask goes out
    on the next pick, with a recheck, whatever the back-off was."""
    w0, w1 = FakeWorker("w0"), FakeWorker("w1")
    pools = FakePools([w0, w1])

    async def scenario() -> tuple[Any, int, list[bool]]:
        pool = SharedPool(size=2, concurrency=1, find_pools=lambda: pools)
        pool.pick()
        await _settle(pool)
        pool._retry_at = float("inf")  # as if backing off
        pool.lost(w0)
        picked = pool.pick()
        await _settle(pool)
        return picked, pool.started, pools.rechecks

    assert (None, 2, [False, True]) == asyncio.run(scenario())


def test_no_pools_actor_backs_the_asks_off() -> None:
    """Without a pools actor every pick answers None, and the asks back off."""
    asks: list[int] = []

    def find() -> None:
        asks.append(1)
        return None

    async def scenario() -> tuple[Any, int, float]:
        pool = SharedPool(size=2, concurrency=1, find_pools=find)
        picked = pool.pick()
        await _settle(pool)
        for _ in range(5):
            pool.pick()  # within the back-off: no new ask
        await _settle(pool)
        return picked, len(asks), pool._backoff

    assert (None, 1, 2 * RETRY_S) == asyncio.run(scenario())


def test_a_dead_pools_actor_is_forgotten_and_found_again() -> None:
    """An ask that meets a dead pools actor drops the cached handle (a re-created one is
    then found by name)."""
    import ray

    forgotten: list[int] = []

    class DeadPools:
        shared_workers = _Remote(_raise_actor_died)

    async def scenario() -> tuple[Any, int]:
        pool = SharedPool(
            size=2,
            concurrency=1,
            find_pools=lambda: DeadPools(),
            forget_pools=lambda: forgotten.append(1),
        )
        picked = pool.pick()
        await _settle(pool)
        return picked, len(forgotten)

    assert (None, 1) == asyncio.run(scenario())
    assert issubclass(ray.exceptions.ActorDiedError, ray.exceptions.RayActorError)


def _raise_actor_died(*args: Any) -> Any:
    import ray

    raise ray.exceptions.RayActorError()


class SlowWorker(FakeWorker):
    """Answers its ping once ``ready`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = asyncio.Event()

        async def ping() -> bool:
            await self.ready.wait()
            return True

        class _Ping:
            def remote(self) -> Any:
                return ping()

        self.ping = _Ping()


def test_a_batch_waiting_for_a_task_slot_takes_the_worker_that_answers() -> None:
    """Every task slot is held (by batches whose tasks wait behind heavy work): a batch
    waiting for one goes to the first worker that answers instead, holding no slot."""
    worker = SlowWorker("w0")
    pools = FakePools([worker])

    async def scenario() -> tuple[Any, bool, int]:
        pool = SharedPool(size=1, concurrency=1, find_pools=lambda: pools)
        pool.resize(1)  # one CPU: one slot
        assert pool.pick() is None  # asks for the workers; none answered yet
        slots = pool.fallback_slots()
        await slots.acquire()  # the one slot, held by a batch already out as a task

        async def batch() -> Any:
            async with pool.fallback_turn() as got:
                return got

        waiting = asyncio.get_running_loop().create_task(batch())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()  # no slot, no worker: it waits
        worker.ready.set()
        got = await asyncio.wait_for(waiting, 30)
        held = slots._value == 0  # still only the first batch's
        slots.release()
        await asyncio.sleep(0)
        return got, held, pool.started

    got, held, started = asyncio.run(scenario())
    assert got is worker
    assert held
    assert 1 == started


def test_a_batch_that_gets_a_slot_first_runs_as_a_task_and_gives_it_back() -> None:
    async def scenario() -> tuple[Any, bool, bool]:
        pool = SharedPool(size=1, concurrency=1, find_pools=lambda: None)
        pool.resize(1)
        slots = pool.fallback_slots()
        async with pool.fallback_turn() as got:
            inside = slots._value == 0
        return got, inside, slots._value == 1

    got, inside, after = asyncio.run(scenario())
    assert got is None  # no worker: the batch runs as a task, holding the slot
    assert inside and after


def test_a_batch_cancelled_as_it_gets_its_slot_gives_it_back() -> None:
    """The slot is freed and the waiting batch cancelled in the same step (its acquire
    already granted): the slot goes back, none is lost for good."""

    async def scenario(pause: int) -> int:
        pool = SharedPool(size=1, concurrency=1, find_pools=lambda: None)
        pool.resize(1)
        slots = pool.fallback_slots()
        await slots.acquire()

        async def batch() -> None:
            async with pool.fallback_turn():
                pass

        waiting = asyncio.get_running_loop().create_task(batch())
        for _ in range(5):
            await asyncio.sleep(0)
        slots.release()
        for _ in range(pause):
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        for _ in range(5):
            await asyncio.sleep(0)
        return slots._value

    for pause in (0, 1, 2):
        assert 1 == asyncio.run(scenario(pause)), pause
