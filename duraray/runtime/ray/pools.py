"""Warm worker pools for resource-shaped activities: one hub-wide actor, a pool per shape.

An activity that asks for Ray resources (``num_cpus``, ``num_gpus`` — fractions too —,
``resources``, ``memory``, ``accelerator_type``) or a ``runtime_env`` runs in a worker
process that holds exactly those resources: a Ray actor of that shape. Ray then packs
them (four ``num_gpus=0.25`` workers share one GPU) and as many run at once as the
cluster holds. Workers stay warm between activities, so imports happen and models load
(an activity class is constructed) once per process, as with Ray Data's actor pools.

One ``ActivityPools`` actor per hub (``duraray/<hub>/pools``) owns every pool, so all
partitions share the warm workers. There is one pool per activity and shape: two model
classes of the same shape never share a process (two models in one GPU slice), and each
activity's ``max_workers`` and ``max_activities_per_worker`` are its own. A pool:

- hands an activity to an idle worker, or starts a new one while the pool is below its
  limit (the activity's ``max_workers``, at most as many as the cluster's totals hold of
  that shape, looked up again as nodes come and go), or queues it. A new worker joins the
  pool only once it is placed and has built the activity's class (if it is one): an
  activity waits for whichever worker is free first, never for one Ray cannot place yet,
  and its timeout counts its own run only;
- runs one activity per worker at a time;
- replaces a worker whose activity timed out (a running synchronous call cannot be
  cancelled otherwise), one whose activity failed with a CUDA error or out of memory,
  and one that ran ``max_activities_per_worker`` activities;
- stops workers idle for ``activity_pool_idle_s`` (a hub option), so resources held by
  an idle pool go back to the cluster; and when a new worker is not placed within a
  second, stops the idle workers of the other pools at once, since they may hold what
  it waits for (two pools of one shape would otherwise wait on each other's idle ones).

Worker actors are children of this actor: if it dies they go with it, Ray restarts it,
and the partitions re-dispatch the activities it had (they never saw their results). It
also starts and owns the shared pool's workers (``shared_pool.py``) when a partition
first asks for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray
import structlog

from duraray._errors import FailureDetails
from duraray._registry import Registry
from duraray.runtime.engine.activity import execute_activity, prepare_activity
from duraray.runtime.engine.records import ActivityResult, ActivityTask
from duraray.runtime.ray.ledger import MAX_PUBLISHED_CPUS, find_ledger
from duraray.runtime.ray.shared_pool import start_shared_workers

log = structlog.get_logger("duraray.pools")

#: Times an activity is handed to another worker after its worker died under it.
MAX_RETRIES = 5
#: Seconds a new worker may wait for placement before idle workers of other pools are
#: stopped to make room for it.
PLACEMENT_WAIT_S = 1.0
#: Seconds between looks at the cluster's resource totals.
CAPACITY_REFRESH_S = 10.0
#: Failure types after which a worker's process is not trusted with the next activity.
POISONED = ("OutOfMemoryError", "CudaError", "CUDA error", "CUDA out of memory", "cudaError")


def pools_actor_name(hub: str) -> str:
    """The Ray actor name of a hub's worker pools."""
    return f"duraray/{hub}/pools"


def shape_key(options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable key for a resource shape (``repr`` keeps nested dicts comparable)."""
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


def worker_options(shape: dict[str, Any]) -> dict[str, Any]:
    """Ray actor options for a worker of ``shape``: exactly those resources.

    A shape that names no CPU but names other resources holds no CPU (a GPU worker that
    asked for ``num_gpus=0.25`` holds a quarter of a GPU, nothing else); a shape of
    nothing but a ``runtime_env`` holds one CPU, as a Ray task would.
    """
    options = dict(shape)
    if "num_cpus" not in options:
        other = any(k in options for k in ("num_gpus", "resources", "memory", "accelerator_type"))
        options["num_cpus"] = 0 if other else 1
    return options


def capacity(shape: dict[str, Any], totals: dict[str, float]) -> int:
    """How many workers of ``shape`` the cluster's ``totals`` hold at once (0: none)."""
    wants: dict[str, float] = {}
    options = worker_options(shape)
    if options.get("num_cpus"):
        wants["CPU"] = float(options["num_cpus"])
    if options.get("num_gpus"):
        wants["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        wants["memory"] = float(options["memory"])
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            wants[name] = float(amount)
    if options.get("accelerator_type"):
        wants[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    if not wants:
        return max(1, int(totals.get("CPU", 1)))
    fits = [math.floor(totals.get(name, 0.0) / amount + 1e-9) for name, amount in wants.items()]
    return max(0, min(fits))


class ShapedWorkerImpl:
    """One warm process of a pool: runs one activity at a time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def run(self, task: ActivityTask) -> ActivityResult:
        """Execute one activity (its class, if it is one, is built once per process)."""
        return execute_activity(self.registry, task)

    def prepare(self, name: str) -> int:
        """Build the activity's class now (if it is one), before any activity's timeout
        runs; returns this worker's pid. A constructor that fails is retried by the first
        activity, which then fails with its error."""
        spec = self.registry.activities.get(name)
        if spec is not None:
            with contextlib.suppress(Exception):
                prepare_activity(spec)
        return os.getpid()

    def pid(self) -> int:
        """This worker's process id."""
        return os.getpid()


@dataclass(eq=False)
class _Worker:
    handle: Any
    runs: int = 0
    idle_since: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Pool:
    name: str
    options: dict[str, Any]
    max_workers: int | None = None
    #: workers placed and ready, busy or idle
    workers: list[_Worker] = field(default_factory=list)
    #: workers asked of Ray, not ready yet
    starting: int = 0
    idle: deque[_Worker] = field(default_factory=deque)
    waiters: deque[asyncio.Future[_Worker]] = field(default_factory=deque)
    started: int = 0
    replaced: int = 0
    warned: bool = False


class ActivityPoolsImpl:
    """The async actor holding every shaped pool of a hub (see the module docstring)."""

    def __init__(
        self, hub: str, registry: Registry, idle_timeout: float, log_format: str = "auto"
    ) -> None:
        from duraray.runtime.logging import configure_logging

        configure_logging(log_format)
        self.hub = hub
        self.registry = registry
        self.idle_timeout = idle_timeout
        self._pools: dict[tuple[str, tuple[tuple[str, str], ...]], _Pool] = {}
        self._worker_class = ray.remote(ShapedWorkerImpl)
        self._totals: dict[str, float] = {}
        self._totals_at = -math.inf
        self._reaper: asyncio.Task[None] | None = None
        self._starting: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs
        self._log = log.bind(hub=hub)
        # CPUs the partitions want for activities out or waiting (report_demand).
        self._demand: dict[int, int] = {}
        # The hub's total last reported to the cluster's demand ledger (ledger.py).
        self._published: int | None = None
        self._ledger: Any = None  # the ledger actor, found (or created) on first report
        self._publishing = asyncio.Lock()
        # The shared pool's workers (shared_pool.py): started on a partition's first ask,
        # held here so that, as this actor's children, they live as long as it does.
        self._shared: list[Any] = []
        self._shared_size: int | None = None
        self._sharing = asyncio.Lock()
        # The handle that created each of them, by actor id: an actor this one owns dies
        # when that handle goes, even while other handles to it (a later lookup by name)
        # are held, so it is kept for the actor's life.
        self._creators: dict[str, Any] = {}

    async def run(
        self, task: ActivityTask, shape: dict[str, Any], limits: dict[str, Any]
    ) -> ActivityResult:
        """Run ``task`` on a warm worker of ``shape``; ``limits``: ``max_workers``,
        ``max_activities_per_worker``, ``timeout`` (each may be absent or None)."""
        self._ensure_reaper()
        pool = self._pools.get(key := (task.name, shape_key(shape)))
        if pool is None:
            pool = self._pools[key] = _Pool(
                task.name, worker_options(shape), limits.get("max_workers")
            )
        timeout = limits.get("timeout")
        max_runs = limits.get("max_activities_per_worker") or None
        for attempt in range(MAX_RETRIES + 1):
            worker = await self._acquire(pool)
            try:
                ref = worker.handle.run.remote(task)
                result: ActivityResult = (
                    await ref
                    if timeout is None
                    else await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
                )
            except TimeoutError:
                # The call still runs there, and a running synchronous call cannot be
                # cancelled: only a new process is free for the next activity.
                self._retire(pool, worker)
                return _failed(
                    task, TimeoutError(f"activity {task.name!r} timed out after {timeout} s")
                )
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                self._retire(pool, worker)
                if attempt < MAX_RETRIES:
                    self._log.warning(
                        "pool worker lost; running the activity again", error=str(exc)
                    )
                    continue
                return _failed(task, RuntimeError(f"activity worker lost: {exc}"))
            except BaseException:
                self._retire(pool, worker)  # cancelled mid-call: its state is unknown
                raise
            keep = result.failure is None or not _poisoned(result.failure)
            self._release(pool, worker, keep, max_runs)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def stats(self) -> list[dict[str, Any]]:
        """Per pool: its shape, workers, idle ones, waiting activities, started, replaced."""
        return [
            {
                "activity": pool.name,
                "shape": pool.options,
                "workers": len(pool.workers),
                "starting": pool.starting,
                "idle": len(pool.idle),
                "waiting": len(pool.waiters),
                "started": pool.started,
                "replaced": pool.replaced,
            }
            for pool in self._pools.values()
        ]

    async def ping(self) -> bool:
        """Liveness probe."""
        return True

    async def shared_workers(
        self, count: int, concurrency: int, recheck: bool = False
    ) -> list[Any]:
        """The hub's shared activity workers (``shared_pool.py``), started on the first
        call: ``count`` named actors (the first caller's count fixes the pool's size),
        children of this actor. ``recheck`` (a partition found one lost): start again
        any that is not running. Returns them all, in order (None for one Ray refused to
        create: asked for again on the next call)."""
        async with self._sharing:  # partitions ask together at first: start them once
            if self._shared_size is None:
                self._shared_size = max(1, count)
            if recheck or None in self._shared or len(self._shared) < self._shared_size:
                self._shared = await asyncio.to_thread(
                    start_shared_workers,
                    self.hub,
                    self.registry,
                    self._shared_size,
                    concurrency,
                )
                for handle in self._shared:
                    if handle is not None:  # None: not created, asked for again later
                        self._creators.setdefault(handle._actor_id.hex(), handle)
            return self._shared

    async def report_demand(self, partition: int, cpus: int) -> int:
        """Partition ``partition`` has ``cpus`` CPUs' worth of activities out or waiting:
        report the hub's total to the cluster's demand ledger (``ledger.py``), which
        publishes the sum over every hub to Ray's autoscaler, so a cluster that
        autoscales grows for a fan-out and shrinks after it. Every report goes on, even
        an unchanged one: the partitions repeat theirs at least every 30 s, which keeps
        the hub's figure from lapsing there. Returns the hub's total."""
        self._demand[partition] = max(0, int(cpus))
        async with self._publishing:  # calls overlap: report the latest total, in order
            total = min(sum(self._demand.values()), MAX_PUBLISHED_CPUS)
            try:
                if self._ledger is None:
                    self._ledger = await asyncio.to_thread(find_ledger)
                me = ray.get_runtime_context().get_actor_id()
                # Bounded: a ledger that hangs must not queue every report behind it.
                await asyncio.wait_for(self._ledger.report.remote(self.hub, total, me), 10)
            except Exception as exc:  # a hint only: never fail a partition for it
                self._ledger = None  # gone (Ray restarts it): looked up again next time
                self._log.warning("autoscaler demand not reported", error=str(exc))
                return self._published or 0
            self._published = total
            return total

    # -- workers ----------------------------------------------------------------------------

    async def _acquire(self, pool: _Pool) -> _Worker:
        while pool.idle:
            worker = pool.idle.pop()  # the most recently used: its caches are warmest
            if worker in pool.workers:
                return worker
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        self._grow(pool)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._hand_over(pool, waiter.result())  # cancelled just after it got one
            raise

    def _grow(self, pool: _Pool) -> None:
        """Start one more worker if activities wait beyond those starting and the pool is
        below its limit; it joins the pool (and serves the first waiter) once ready."""
        fits = self._capacity(pool.options)
        if fits == 0 and not pool.warned:
            pool.warned = True
            self._log.warning(
                "no node of the cluster has the resources this activity asks for; it waits "
                "for one (an autoscaler may add it)",
                activity=pool.name,
                shape=pool.options,
            )
        limit = max(1, fits)
        if pool.max_workers:
            limit = min(limit, pool.max_workers)
        waiting = sum(1 for w in pool.waiters if not w.done())
        if waiting > pool.starting and len(pool.workers) + pool.starting < limit:
            pool.starting += 1
            task = asyncio.get_running_loop().create_task(self._start_worker(pool))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_worker(self, pool: _Pool) -> None:
        # Typed Any: Ray's stubs do not model remote methods.
        handle: Any = self._worker_class.options(**pool.options, max_restarts=0).remote(
            self.registry
        )
        try:
            # Placed, started and the activity's class built: only then is it a worker.
            ready = asyncio.ensure_future(handle.prepare.remote(pool.name))
            while not (await asyncio.wait({ready}, timeout=PLACEMENT_WAIT_S))[0]:
                # Not placed yet: idle workers of other pools may hold what it needs (their
                # idle timeout would free it only much later). Stop them, and look again.
                self._free_idle(but=pool)
            await ready
        except Exception as exc:  # could not start (bad options, died at once)
            pool.starting -= 1
            self._log.warning("pool worker did not start", activity=pool.name, error=str(exc))
            ray.kill(handle, no_restart=True)
            await asyncio.sleep(1.0)  # do not spin on a shape that cannot start
            self._grow(pool)
            return
        pool.starting -= 1
        worker = _Worker(handle)
        pool.workers.append(worker)
        pool.started += 1
        self._hand_over(pool, worker)

    def _hand_over(self, pool: _Pool, worker: _Worker) -> None:
        """Give ``worker`` to the first activity waiting, or make it idle."""
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        worker.idle_since = time.monotonic()
        pool.idle.append(worker)

    def _release(self, pool: _Pool, worker: _Worker, keep: bool, max_runs: int | None) -> None:
        worker.runs += 1
        if not keep or (max_runs and worker.runs >= max_runs):
            self._retire(pool, worker)
            return
        if worker in pool.workers:  # not retired meanwhile
            self._hand_over(pool, worker)

    def _retire(self, pool: _Pool, worker: _Worker) -> None:
        """Stop ``worker``; if activities wait, a replacement starts for them."""
        if worker not in pool.workers:
            return
        pool.workers.remove(worker)
        pool.replaced += 1
        ray.kill(worker.handle, no_restart=True)
        self._grow(pool)

    def _free_idle(self, but: _Pool) -> None:
        """Stop every idle worker of the other pools (their resources go back to Ray)."""
        for other in self._pools.values():
            if other is but:
                continue
            while other.idle:
                worker = other.idle.pop()
                if worker in other.workers:
                    other.workers.remove(worker)
                    ray.kill(worker.handle, no_restart=True)

    def _capacity(self, options: dict[str, Any]) -> int:
        now = time.monotonic()
        if now >= self._totals_at + CAPACITY_REFRESH_S:
            try:
                self._totals = dict(ray.cluster_resources())
                self._totals_at = now
            except Exception:  # the GCS briefly unreachable: keep the last totals
                pass
        return capacity(options, self._totals)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        """Stop workers that have been idle longer than the idle timeout."""
        while True:
            await asyncio.sleep(max(0.05, self.idle_timeout / 4))
            limit = time.monotonic() - self.idle_timeout
            for pool in self._pools.values():
                for worker in [w for w in pool.idle if w.idle_since < limit]:
                    pool.idle.remove(worker)
                    pool.workers.remove(worker)
                    ray.kill(worker.handle, no_restart=True)


def _poisoned(failure: FailureDetails) -> bool:
    text = f"{failure.error_type} {failure.message}"
    return any(marker in text for marker in POISONED)


def _failed(task: ActivityTask, exc: BaseException) -> ActivityResult:
    return ActivityResult(
        task.instance_id,
        task.execution_id,
        task.task_id,
        failure=FailureDetails.from_exception(exc),
        name=task.name,
    )


ActivityPools = ray.remote(ActivityPoolsImpl)
