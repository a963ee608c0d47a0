"""The hub's shared activity workers, started when a partition first needs them.

The shared pool runs cheap activities in batches (the ``POOL`` route of
``engine/dispatch.py``) on worker processes that hold no CPU. Its workers are not started
with the hub: a hub whose activities are all heavy never needs them, and each Ray worker
process started at launch costs about half a second of CPU that the hub's first
orchestration waits for on a small machine. The first partition to route a batch here
creates them; until one of them answers, batches run as Ray tasks holding a CPU, in the
task workers the probes of those activities already warmed.

- **Names**: the workers are named actors (``worker_actor_name``) created with
  ``get_if_exists``, so partitions that start the pool at the same time get the same
  workers, and ``PartitionManager.stop`` finds them.
- **Size**: ``activity_workers``, else one per CPU of the cluster (at least 2), looked up
  again as nodes come and go: a node that joins gets its share of new workers (``SPREAD``
  places them on the least loaded nodes). The pool never shrinks: an idle worker holds no
  CPU, and a node that left took its workers with it.
- **Lifetime**: a detached hub's workers are detached (``stop`` kills them); otherwise a
  worker belongs to the partition that created it and stops with it. A partition that
  finds a worker lost (its owner stopped, its node died) forgets it, and the next batch
  creates it again.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Iterator
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
#: Least seconds between two attempts to create a worker whose creation failed.
RETRY_S = 1.0


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

    def ping(self) -> bool:
        """Liveness probe."""
        return True


ActivityWorker = ray.remote(ActivityWorkerImpl)


def _run_batch(registry: Registry, tasks: list[ActivityTask]) -> list[ActivityResult]:
    """A Ray task running a pool batch while no shared worker has started yet."""
    return [execute_activity(registry, task) for task in tasks]


class SharedPool:
    """The shared workers as one partition sees them (see the module docstring).

    Runs on the partition actor's event loop; creating actors (calls to Ray's control
    store) happens on a thread beside it.
    """

    def __init__(
        self,
        hub: str,
        registry: Registry,
        *,
        size: int | None,
        concurrency: int,
        detached: bool,
    ) -> None:
        self._hub = hub
        self._registry = registry
        self._size = size
        self._concurrency = concurrency
        self._lifetime = "detached" if detached else None
        self._cpus = 1  # the cluster's CPUs, as last told (``resize``)
        self._wanted = False  # a batch has asked for the pool: keep it at its size
        self._workers: dict[int, Any] = {}  # index -> handle, created or being created
        self._ready: list[Any] = []  # handles that answered a ping
        self._failed_at: dict[int, float] = {}  # index -> when its creation last failed
        self._round_robin = itertools.count(random.randrange(1 << 16))
        self._jobs: set[asyncio.Task[None]] = set()
        #: the fallback while no worker has answered: one Ray task per batch, holding a CPU
        #: (bounded by the cluster's cores, unlike a flood of CPU-less tasks)
        self.as_task = ray.remote(num_cpus=1, max_retries=0)(_run_batch)

    @property
    def target(self) -> int:
        """How many workers the pool should have now."""
        return self._size or max(2, self._cpus)

    @property
    def started(self) -> int:
        """Workers that answered and take batches."""
        return len(self._ready)

    def resize(self, cpus: int) -> None:
        """The cluster has ``cpus`` CPUs now: once the pool is in use, grow it to match."""
        self._cpus = max(1, cpus)
        if self._wanted:
            self._grow()

    def pick(self) -> Any | None:
        """A started worker for the next batch, in turns; None while none has answered
        (the first call starts the pool)."""
        if not self._wanted:
            self._wanted = True
        if len(self._workers) < self.target:
            self._grow()
        if not self._ready:
            return None
        return self._ready[next(self._round_robin) % len(self._ready)]

    def lost(self, worker: Any) -> None:
        """A call to ``worker`` failed because its process is gone: stop sending it
        batches; the next ``pick`` looks it up by name again, or creates it anew."""
        if worker in self._ready:
            self._ready.remove(worker)
        for index, handle in list(self._workers.items()):
            if handle is worker:
                del self._workers[index]

    def _grow(self) -> None:
        now = time.monotonic()
        missing = [
            i
            for i in range(self.target)
            if i not in self._workers and now >= self._failed_at.get(i, -math.inf) + RETRY_S
        ]
        if not missing:
            return
        for i in missing:
            self._workers[i] = None  # being created: not asked for twice
        job = asyncio.get_running_loop().create_task(self._start(missing))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _start(self, indices: list[int]) -> None:
        loop = asyncio.get_running_loop()
        created = await loop.run_in_executor(None, self._create, indices)
        for index, handle in created.items():
            if handle is None:
                self._workers.pop(index, None)
                self._failed_at[index] = time.monotonic()
            else:
                self._workers[index] = handle
        await asyncio.gather(
            *(self._await_ready(i, h) for i, h in created.items() if h is not None)
        )

    def _create(self, indices: list[int]) -> dict[int, Any]:
        handles: dict[int, Any] = {}
        for i in indices:
            try:
                handles[i] = ActivityWorker.options(
                    name=worker_actor_name(self._hub, i),
                    namespace=NAMESPACE,
                    lifetime=self._lifetime,
                    max_restarts=-1,
                    max_task_retries=0,
                    num_cpus=0,
                    # One byte of memory: Ray does not honour SPREAD for an actor that asks
                    # for no resources at all (a 3-node test cluster often got no worker on
                    # a node); any non-empty request makes SPREAD place them round-robin.
                    memory=1,
                    max_concurrency=self._concurrency,
                    scheduling_strategy="SPREAD",
                    get_if_exists=True,
                ).remote(self._registry)
            except Exception:
                log.warning("activity worker not created", worker=i, exc_info=True)
                handles[i] = None
        return handles

    async def _await_ready(self, index: int, handle: Any) -> None:
        try:
            await handle.ping.remote()
        except Exception:
            # Died while starting (or its owner did): forget it; a later batch retries.
            if self._workers.get(index) is handle:
                del self._workers[index]
                self._failed_at[index] = time.monotonic()
            return
        if self._workers.get(index) is handle and handle not in self._ready:
            self._ready.append(handle)
