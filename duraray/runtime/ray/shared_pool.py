"""The hub's shared activity workers, started when a partition first needs them.

The shared pool runs cheap activities in batches (the ``POOL`` route of
``engine/dispatch.py``) on worker processes that hold no CPU. Its workers are not started
with the hub: a hub whose activities are all heavy never needs them, and each Ray worker
process started at launch costs about half a second of CPU that the hub's first
orchestration would wait for on a small machine. The first partition to route a batch
here asks the hub's pools actor (``pools.py``) to start them; until one of them answers,
batches run as Ray tasks holding a CPU, in the task workers that the probes of those
activities already warmed.

- **Owner**: the pools actor, like the workers of the resource-shaped pools: they live as
  long as the hub (a partition that crashes takes none of them along) and stop with it.
  Ray restarts a worker that dies; the partitions re-send what it had not finished.
- **Names**: ``worker_actor_name`` (created with ``get_if_exists``, so asking again
  starts only those not running, and ``PartitionManager.stop`` finds them).
- **Size**: ``activity_workers``, else one per CPU of the cluster when the pool starts (at
  least 2), spread over the nodes (``SPREAD``). It does not grow onto nodes that join
  later: a worker holds a byte of memory, which would keep an autoscaled node from ever
  counting as idle, and cheap work needs few processes; what grows with the cluster is the
  work that needs it, CPU-bound activities (tasks) and resource-shaped pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import ray
import structlog

from duraray._registry import Registry
from duraray.runtime.engine.activity import execute_activity
from duraray.runtime.engine.records import ActivityResult, ActivityTask

log = structlog.get_logger("duraray.partition")

#: The Ray namespace of every duraray actor.
NAMESPACE = "duraray"

#: Results of a streamed pool batch that finish this close together come back together.
STREAM_CHUNK_S = 0.005
#: Seconds before asking again for workers that did not start (doubling up to the most).
RETRY_S = 1.0
MAX_RETRY_S = 60.0
#: Back-off after which workers still missing are worth a warning.
WARN_AFTER_S = 8.0
#: Longest wait for a worker to answer its first ping (one Ray cannot place waits).
READY_TIMEOUT_S = 60.0


def worker_actor_name(hub: str, index: int) -> str:
    """The Ray actor name of a hub's activity worker."""
    return f"duraray/{hub}/w{index}"


class ActivityWorkerImpl:
    """Executes batches of activities; one process of the shared pool."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def run(self, tasks: list[ActivityTask]) -> list[ActivityResult]:
        """Execute ``tasks`` one after the other and return their results."""
        return [execute_activity(self.registry, task) for task in tasks]

    def run_stream(self, tasks: list[ActivityTask]) -> Iterator[list[ActivityResult]]:
        """Execute ``tasks`` one after the other, yielding finished results as they come
        (called with ``num_returns="streaming"``).

        Results that finish within ``STREAM_CHUNK_S`` of the last yield travel together (a
        yield costs a Ray message, more than a sub-millisecond activity); so a finished
        result waits for a slow batch-mate only if it finished within that window.
        """
        finished: list[ActivityResult] = []
        last = time.monotonic()
        for task in tasks:
            finished.append(execute_activity(self.registry, task))
            now = time.monotonic()
            if now - last >= STREAM_CHUNK_S:
                yield finished
                finished, last = [], now
        if finished:
            yield finished

    def node_id(self) -> str:
        """The Ray node this worker runs on."""
        return ray.get_runtime_context().get_node_id()

    @ray.method(concurrency_group="control")
    def ping(self) -> bool:
        """Liveness probe, in a group of its own: it never queues behind busy batches."""
        return True


# ping has a thread of its own (``concurrency_groups`` is not accepted by ``.options``;
# Ray's stubs do not list it for ``ray.remote`` either).
ActivityWorker = ray.remote(concurrency_groups={"control": 1})(  # type: ignore[call-overload]
    ActivityWorkerImpl
)


def _run_batch(registry: Registry, tasks: list[ActivityTask]) -> list[ActivityResult]:
    """A Ray task running a pool batch while no shared worker has started yet."""
    return [execute_activity(registry, task) for task in tasks]


def start_shared_workers(hub: str, registry: Registry, count: int, concurrency: int) -> list[Any]:
    """Handles to the hub's shared workers 0..count-1, creating those not running (called
    by the pools actor, which owns them; blocking: Ray's control store is asked per name).
    None in the place of one Ray refused to create."""
    handles: list[Any] = []
    for i in range(count):
        try:
            handles.append(
                ActivityWorker.options(
                    name=worker_actor_name(hub, i),
                    namespace=NAMESPACE,
                    max_restarts=-1,
                    max_task_retries=0,
                    num_cpus=0,
                    # One byte of memory: Ray does not honour SPREAD for an actor that
                    # asks for no resources at all (a 3-node test cluster often got no
                    # worker on a node); any non-empty request places them round-robin.
                    memory=1,
                    max_concurrency=concurrency,
                    scheduling_strategy="SPREAD",
                    get_if_exists=True,
                ).remote(registry)
            )
        except Exception:
            log.warning("activity worker not started", worker=i, exc_info=True)
            handles.append(None)
    return handles


def _took(acquire: asyncio.Future[Any]) -> bool:
    """Whether a finished ``Semaphore.acquire`` took its slot."""
    return acquire.done() and not acquire.cancelled() and acquire.exception() is None


class SharedPool:
    """The shared workers as one partition sees them (see the module docstring).

    Runs on the partition actor's event loop. ``pick`` answers at once: a started worker,
    or None while none has answered; the first call asks the pools actor for the workers.
    A batch finding none runs as a Ray task holding a CPU, at most ``fallback_slots()``
    at once: the rest wait here and look again, so a burst of mostly-waiting activities
    does not become thousands of CPU-holding tasks. A worker found lost makes the
    partition trust none of them until each answers again (they may have gone together,
    with a node or with the pools actor), so no batch is re-sent to a dead worker.
    """

    def __init__(
        self,
        *,
        size: int | None,
        concurrency: int,
        find_pools: Callable[[], Any],
        forget_pools: Callable[[], None] = lambda: None,
    ) -> None:
        self._size = size
        self._concurrency = concurrency
        self._find_pools = find_pools
        self._forget_pools = forget_pools
        self._cpus = 1  # the cluster's CPUs, as last told (``resize``)
        self._count: int | None = None  # the pool's size, as the pools actor fixed it
        self._ready: list[Any] = []  # handles that answered a ping, in the workers' order
        self._asking = 0  # the generation of the ask in flight (0: none)
        self._generation = 1
        self._recheck = False  # a worker was lost: the pools actor starts missing ones
        self._retry_at = -math.inf
        self._backoff = RETRY_S
        self._warned = False
        self._round_robin = itertools.count(random.randrange(1 << 16))
        self._jobs: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._answered = asyncio.Event()  # set while some worker takes batches
        #: the fallback while no worker has answered: one Ray task per batch, holding a CPU
        self.as_task = ray.remote(num_cpus=1, max_retries=0)(_run_batch)

    @property
    def target(self) -> int:
        """How many workers the pool has: ``activity_workers``, else one per CPU of the
        cluster when it started (at least 2)."""
        if self._count is not None:
            return self._count
        return self._size or max(2, self._cpus)

    @property
    def started(self) -> int:
        """Workers that answered and take batches."""
        return len(self._ready)

    def resize(self, cpus: int) -> None:
        """The cluster has ``cpus`` CPUs now (sizes the pool if it has not started)."""
        self._cpus = max(1, cpus)

    def fallback_slots(self) -> asyncio.Semaphore:
        """Batches that may run as tasks at once: the cluster's CPUs when first asked."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(1, self._cpus))
        return self._slots

    @contextlib.asynccontextmanager
    async def fallback_turn(self) -> AsyncIterator[Any]:
        """A batch's turn while no worker has answered: waits for a free task slot or for
        a worker to answer, whichever comes first. Yields that worker (the batch goes
        there, holding no slot), or None with a slot held until the block ends (the batch
        runs as a task). A batch waiting for a slot held by tasks that wait behind heavy
        work thus goes to the first worker that answers, not after that work."""
        slots = self.fallback_slots()
        while True:
            if await self._slot_or_answer(slots):
                try:
                    yield self.pick()  # a worker may have answered meanwhile all the same
                finally:
                    slots.release()
                return
            worker = self.pick()
            if worker is not None:
                yield worker
                return
            # Lost again before this batch got it: wait once more.

    async def _slot_or_answer(self, slots: asyncio.Semaphore) -> bool:
        """True with a slot taken; False (no slot taken) once a worker takes batches."""
        if self._ready:
            return False
        acquire = asyncio.ensure_future(slots.acquire())
        answered = asyncio.ensure_future(self._answered.wait())
        try:
            await asyncio.wait({acquire, answered}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this batch was cancelled: it takes no slot with it
            answered.cancel()
            self._drop(acquire, slots)
            raise
        answered.cancel()
        if not _took(acquire):
            self._drop(acquire, slots)
            return False
        if self._ready:  # both at once: the worker wins, the slot goes back
            slots.release()
            return False
        return True

    @staticmethod
    def _drop(acquire: asyncio.Future[Any], slots: asyncio.Semaphore) -> None:
        """Give up ``acquire``: give back the slot it took or, still waiting, takes."""
        if acquire.done():
            if _took(acquire):
                slots.release()
            return
        acquire.cancel()  # granted just before, it still ends with the slot: give it back
        acquire.add_done_callback(lambda job: slots.release() if _took(job) else None)

    def pick(self) -> Any | None:
        """A started worker for the next batch, in turns; None while none has answered."""
        if (
            len(self._ready) < self.target
            and not self._asking
            and time.monotonic() >= self._retry_at
        ):
            self._asking = self._generation
            job = asyncio.get_running_loop().create_task(self._ask(self._generation))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
        if not self._ready:
            return None
        return self._ready[next(self._round_robin) % len(self._ready)]

    def lost(self, worker: Any) -> None:
        """A call to ``worker`` failed because its process is gone: until each worker
        answers again, batches run as tasks; the next ``pick`` asks again at once (an ask
        still in flight, perhaps waiting on a worker that never answers, is not waited
        for)."""
        self._ready = []
        self._answered.clear()
        self._generation += 1
        self._asking = 0
        self._recheck = True
        self._retry_at = -math.inf
        self._backoff = RETRY_S

    async def _ask(self, generation: int) -> None:
        """Ask the pools actor for the workers (it starts any not running) and take each
        into turns as it answers. Workers missing after that (not placed, failing to
        start) are asked for again later, less and less often."""
        try:
            pools = await asyncio.to_thread(self._find_pools)
            if pools is None:
                raise LookupError("the hub's pools actor is not running")
            recheck, self._recheck = self._recheck, False
            handles: list[Any] = await asyncio.wait_for(
                pools.shared_workers.remote(self.target, self._concurrency, recheck),
                READY_TIMEOUT_S,
            )
            self._count = len(handles)  # the pools actor's size wins (one for the hub)
            answered = await asyncio.gather(*(self._answers(handles, h) for h in handles))
            if handles and all(answered):
                self._backoff = RETRY_S
                self._warned = False
                return
            self._recheck = True
            raise RuntimeError(f"{len(handles) - sum(answered)} of {len(handles)} not started")
        except Exception as exc:
            if isinstance(exc, ray.exceptions.RayActorError):
                self._forget_pools()  # dead for good: found again by name (re-created)
            if generation != self._generation:
                return  # a worker was lost meanwhile: a newer ask is under way
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(MAX_RETRY_S, self._backoff * 2)
            # Quiet at first: just after a launch the pools actor may still be starting.
            if self._backoff >= WARN_AFTER_S and not self._warned:
                self._warned = True
                log.warning("shared activity workers not all started", error=str(exc))
        finally:
            if self._asking == generation:
                self._asking = 0

    async def _answers(self, handles: list[Any], handle: Any) -> bool:
        if handle is None:  # not created: asked for again later
            return False
        try:
            await asyncio.wait_for(handle.ping.remote(), READY_TIMEOUT_S)
        except Exception:
            return False
        # Takes batches from now on, in the workers' order: SPREAD placed them on the
        # nodes in turn, so batches in turn go to every node. (Handles compare by actor.)
        ready = {*self._ready, handle}
        self._ready = [h for h in handles if h is not None and h in ready]
        self._answered.set()
        return True
