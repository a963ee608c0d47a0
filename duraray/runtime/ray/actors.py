"""Thin Ray actor shell: a partition actor around ``PartitionCore``, and activity tasks.

The shells hold no engine logic. A partition actor is an async actor whose event loop
accepts calls (client requests, messages, acks, activity results) by appending them to
the core's intake, and runs one background loop: run a batch (in a thread, so calls keep
arriving while LMDB commits), then release its effects: replies resolve the waiting
calls, messages and acks go to each peer together, on its direct link (``peerlink``) or
else as one Ray call, activities go out by route (inline threads, the shared workers of
``shared_pool.py``, tasks, the shaped pools of ``pools.py``). Ray restarts a dead
partition actor; ``PartitionCore.__init__`` recovers it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import ray
import structlog

from duraray._errors import FailureDetails, HubConfigurationError, StorageFullError
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.runtime import tracing
from duraray.runtime.engine.activity import execute_activity
from duraray.runtime.engine.client_ops import OFF_BATCH_READS
from duraray.runtime.engine.dispatch import INLINE, SHAPED, TASK, Dispatch
from duraray.runtime.engine.partition import PartitionCore
from duraray.runtime.engine.records import (
    ActivityResult,
    ActivityTask,
    ClientRequest,
    Effects,
    Reply,
)
from duraray.runtime.engine.store import LmdbStore
from duraray.runtime.ray.demand import Demand
from duraray.runtime.ray.express import ExpressLane
from duraray.runtime.ray.peerlink import PeerLinks
from duraray.runtime.ray.pools import pools_actor_name
from duraray.runtime.ray.shared_pool import NAMESPACE as NAMESPACE
from duraray.runtime.ray.shared_pool import SharedPool

log = structlog.get_logger("duraray.actors")

#: Errors that mean the process running an activity died (not the activity failing).
LOST = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.RayActorError,
    ray.exceptions.NodeDiedError,
)
#: Seconds between looks at the cluster's CPU count (see ``_refresh_capacity``).
CAPACITY_REFRESH_S = 2.0
#: Times a batch is re-dispatched after its worker died before its tasks fail.
MAX_REDISPATCH = 5


def partition_actor_name(hub: str, index: int) -> str:
    """The Ray actor name of a hub's partition."""
    return f"duraray/{hub}/p{index}"


def partition_dir(data_dir: str, hub: str, index: int) -> str:
    """Where a partition's LMDB environment lives."""
    return os.path.join(data_dir, hub, f"p{index}")


def _run_activity(registry: Registry, task: ActivityTask) -> ActivityResult:
    """A Ray task running one activity that travels alone (heavy, or asking for resources)."""
    return execute_activity(registry, task)


class PartitionActorImpl:
    """The async Ray actor hosting one PartitionCore."""

    def __init__(
        self,
        hub: str,
        index: int,
        config: HubConfig,
        registry: Registry,
        link_secret: bytes | int | None = None,
        legacy_secret: bytes | None = None,
        *,
        expect_data: bool = False,
        detached: bool = False,  # passed by one earlier version's launch; unused
    ) -> None:
        if isinstance(link_secret, int):
            # Launched by an older version, which passed its worker count here, and now
            # restarted on this code (Ray restarts an actor with its original arguments).
            link_secret = legacy_secret
        from duraray.runtime.logging import configure_logging

        configure_logging(config.log_format)
        tracing.setup(config.otel_setup)  # before the core exists: nothing traced yet
        self.hub = hub
        self.index = index
        self.config = config
        self.registry = registry
        # Workers, pools and peers are found by name, not passed as handles: constructor
        # arguments stay small and inline, so Ray can always restart this actor from them.
        # The shared workers start when the first batch needs them (shared_pool.py).
        self.shared = SharedPool(
            size=config.activity_workers,
            concurrency=config.worker_concurrency,
            find_pools=self._find_pools,
            forget_pools=self._forget_pools,
        )
        self._peers: dict[int, Any] = {}
        path = partition_dir(config.data_dir, hub, index)
        if expect_data and not os.path.exists(os.path.join(path, "data.mdb")):
            # A fresh, empty store here would silently stand in for the real one.
            raise HubConfigurationError(
                f"partition {index} of hub {hub!r} has no data at {path} on node "
                f"{ray.util.get_node_ip_address()}, where the hub's placement puts it"
            )
        store = LmdbStore(path, sync=config.fsync, max_map_size=config.max_map_size)
        try:
            self.core = PartitionCore(
                hub=hub, index=index, store=store, registry=registry, config=config
            )
        except BaseException:
            # A refused data dir (wrong partition count, another hub's store): release its
            # lock now, since Ray may keep this failed actor's process alive for a while.
            store.close()
            raise
        self._registry_ref = ray.put(registry)
        # max_retries=0: a lost activity is re-dispatched here, where it is counted.
        self._remote_one = ray.remote(max_retries=0)(_run_activity)
        self._pools: Any = None  # the hub's ActivityPools actor, looked up on first use
        # What its activities ask of the cluster, told to the autoscaler (demand.py).
        self._demand = Demand(index, config.max_activities_in_flight, self._find_pools)
        self._capacity_checked = -math.inf
        # Before the first batch plans anything: without a capacity the plan would send
        # every activity of unknown cost out at once (the in-process runtime's setting).
        self.core.dispatch.capacity = os.cpu_count() or 1
        self.core.host_stats = self._host_stats
        self._refresh_capacity()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        # Cheap activities run here, beside the batch loop (see engine/dispatch.py).
        self._inline_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inline")
        self.express = ExpressLane()  # small instances' inline steps (express.py)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="read")
        self._in_flight: set[asyncio.Task[None]] = set()
        self._started = time.time()
        self._log = log.bind(hub=hub, partition=index)
        self.links: PeerLinks | None = None
        self._links_ready: asyncio.Task[Any] | None = None
        self._link_secret = link_secret
        if (
            link_secret is not None
            and config.peer_links
            and config.partitions > 1
            and not _ray_tls()
        ):
            self.links = PeerLinks(
                hub=hub,
                index=index,
                secret=link_secret,
                on_frame=self._on_frame,
                resolve=self._resolve_link,
                on_reconnect=self._on_reconnect,
            )

    # -- the loop ---------------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop_task is None:
            loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._loop_task = loop.create_task(self._run())
            if self.links is not None:
                self._links_ready = loop.create_task(
                    self.links.start(ray.util.get_node_ip_address())
                )

    def _poke(self) -> None:
        self._ensure_loop()
        assert self._wake is not None
        self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        core = self.core
        while True:
            try:
                if core.has_work() or core.resend_due():
                    try:
                        fx = await loop.run_in_executor(self._committer, core.run_batch)
                    except StorageFullError as exc:
                        # Not committed, for lack of space: a restart would fail the same
                        # way. Answer its callers and go on with a core rebuilt from the
                        # store, in the commit thread (engine/storage_full.py).
                        core, fx = await loop.run_in_executor(
                            self._committer, core.recover_from_storage_full, exc
                        )
                        self.core = core
                    except Exception as exc:
                        # Not committed: a restart would apply the same items and fail the
                        # same way. Go on with a core rebuilt from the store that applies
                        # them one at a time and sets aside the one that fails
                        # (engine/poison.py); it raises again if the failure is systemic.
                        core, fx = await loop.run_in_executor(
                            self._committer, core.recover_from_failure, exc
                        )
                        self.core = core
                    self._release(fx)
                    self._demand.report(core, time.monotonic())  # throttled: cheap
                    # If the next batch would start at once, let the small instances'
                    # inline steps just released land in it (express.py).
                    await self.express.settle(core.has_work())
                    await asyncio.sleep(0)  # let queued calls land in the next batch
                    continue
                self._demand.report_idle(core, time.monotonic())
                timeout = 1.0
                due = core.next_due()
                if due is not None:
                    wait = (due - datetime.now(due.tzinfo)).total_seconds()
                    timeout = max(0.0, min(timeout, wait))
                if timeout > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except TimeoutError:
                        pass
                self._wake.clear()
            except asyncio.CancelledError:
                raise  # the actor is stopping
            except BaseException:
                # A failed batch was not committed, nothing was released, and rebuilding
                # the core failed too (or failures look systemic). Crash the actor so Ray
                # restarts it and the core recovers from its last commit.
                self._log.exception("partition batch failed; restarting the actor")
                os._exit(1)

    def _release(self, fx: Effects) -> None:
        for reply_to, result in fx.replies:
            if isinstance(reply_to, asyncio.Future) and not reply_to.done():
                reply_to.set_result(result)
        own = fx.messages.pop(self.index, None)
        if own:
            # To itself: straight into the next batch, no Ray call.
            self.core.submit_messages(self.index, own)
            self._poke()
        own_ack = fx.acks.pop(self.index, None)
        if own_ack is not None:
            self.core.submit_ack(self.index, own_ack)
        # One frame (or Ray call) per peer carries both its messages and our ack of its
        # messages to us.
        links = self.links
        for peer in fx.messages.keys() | fx.acks.keys():
            messages = fx.messages.get(peer, [])
            ack = fx.acks.get(peer)
            if links is not None and links.send(peer, ack, messages):
                continue
            self._peer(peer).deliver.remote(self.index, messages, ack)
        if fx.dispatches:
            self._dispatch(fx.dispatches)

    def _peer(self, index: int) -> Any:
        peer = self._peers.get(index)
        if peer is None:
            peer = ray.get_actor(partition_actor_name(self.hub, index), namespace=NAMESPACE)
            self._peers[index] = peer
        return peer

    # -- activities -------------------------------------------------------------------------

    def _dispatch(self, dispatches: list[Dispatch]) -> None:
        """Carry out the core's dispatch plan: each unit as its own job."""
        self._refresh_capacity()
        loop = asyncio.get_running_loop()
        for unit in dispatches:
            if unit.route == INLINE:
                pool = self.express.executor(self._inline_pool) if unit.express else None
                job = loop.create_task(self._execute_inline(unit.tasks, pool))
                if pool is not None:
                    self.express.started(job, pool)
            elif unit.route == TASK:
                job = loop.create_task(self._execute_task(unit))
                cpus = float(unit.ray_options.get("num_cpus", 1))
                if cpus:
                    self._demand.task_started(cpus)
                    job.add_done_callback(functools.partial(self._demand.task_done, cpus))
            elif unit.route == SHAPED:
                job = loop.create_task(self._execute_shaped(unit))
            else:
                job = loop.create_task(self._execute_pool(unit))
            self._in_flight.add(job)
            job.add_done_callback(self._in_flight.discard)

    def _refresh_capacity(self) -> None:
        """Tell the plan how many CPUs the cluster has now (it probes that many activities of
        unknown cost at once); looked up at most every few seconds, as nodes come and go."""
        now = time.monotonic()
        if now < self._capacity_checked + CAPACITY_REFRESH_S:
            return
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
        except Exception:  # the GCS briefly unreachable: keep the last figure, ask again
            return
        self._capacity_checked = now
        self.core.dispatch.capacity = max(1, cpus)
        self.shared.resize(cpus)
        self._demand.report(self.core, now)

    async def _execute_inline(self, chunk: list[ActivityTask], pool: Executor | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(pool or self._inline_pool, self._run_chunk, chunk)
        except Exception as exc:  # execute_activity never raises; this is a safety net
            results = [_failed(t, exc) for t in chunk]
        self._deliver(results)

    def _run_chunk(self, chunk: list[ActivityTask]) -> list[ActivityResult]:
        return [execute_activity(self.registry, task) for task in chunk]

    def _deliver(self, results: list[ActivityResult]) -> None:
        self.core.submit_activity_results(results)
        self._poke()

    async def _execute_task(self, unit: Dispatch) -> None:
        """One activity as one Ray task holding its CPU (or the resources it asked for)."""
        (task,) = unit.tasks
        for attempt in range(MAX_REDISPATCH + 1):
            ref = None
            try:
                ref = self._remote_one.options(**unit.ray_options).remote(self._registry_ref, task)
                if unit.timeout is not None:
                    result = await asyncio.wait_for(asyncio.wrap_future(ref.future()), unit.timeout)
                else:
                    result = await ref
            except TimeoutError:
                # Force: a running synchronous task stops only with its process (Ray starts
                # a fresh one for the next task).
                if ref is not None:
                    ray.cancel(ref, force=True)
                result = _timed_out(task, unit.timeout)
            except LOST as exc:
                if attempt < MAX_REDISPATCH:
                    self._log.warning("activity worker lost; re-dispatching", error=str(exc))
                    continue
                result = _failed(task, RuntimeError(f"activity worker lost: {exc}"))
            except Exception as exc:  # a failure outside the activity itself
                result = _failed(task, exc)
            self._deliver([result])
            return

    async def _execute_shaped(self, unit: Dispatch) -> None:
        """One activity on a warm worker of its resource shape (``pools.py``)."""
        (task,) = unit.tasks
        spec = self.registry.activities.get(task.name)
        options = spec.options if spec is not None else {}
        limits = {
            "timeout": unit.timeout,
            "max_workers": options.get("max_workers"),
            "max_activities_per_worker": options.get("max_activities_per_worker"),
        }
        for attempt in range(MAX_REDISPATCH + 1):
            pools = self._find_pools()
            if pools is None:
                # A hub launched before pools existed: the activity runs as a task of its shape.
                await self._execute_task(Dispatch(TASK, [task], unit.ray_options, unit.timeout))
                return
            try:
                result = await pools.run.remote(task, unit.ray_options, limits)
            except ray.exceptions.RayActorError as exc:
                # The pools actor died (Ray restarts it) with this activity in it.
                self._pools = None
                if attempt < MAX_REDISPATCH:
                    self._log.warning("worker pools lost; re-dispatching", error=str(exc))
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                    continue
                result = _failed(task, RuntimeError(f"activity worker pools lost: {exc}"))
            except Exception as exc:  # a failure outside the activity itself
                result = _failed(task, exc)
            self._deliver([result])
            return

    def _host_stats(self) -> dict[str, Any]:
        return {"shared_workers": self.shared.started}

    def _forget_pools(self) -> None:
        """The pools actor is gone for good: look it up again by name next time."""
        self._pools = None

    def _find_pools(self) -> Any:
        if self._pools is None:
            try:
                self._pools = ray.get_actor(pools_actor_name(self.hub), namespace=NAMESPACE)
            except ValueError:
                return None
        return self._pools

    async def _execute_pool(self, unit: Dispatch) -> None:
        """A batch on a shared pool worker. A batch expected to run more than a few
        milliseconds streams each result back as it finishes (``unit.stream``), so a slow
        activity holds back no finished one and a worker that dies repeats only what had not
        finished; a shorter one returns its results together, in one message."""
        pending = {(t.instance_id, t.task_id): t for t in unit.tasks}
        for attempt in range(MAX_REDISPATCH + 1):
            worker = self.shared.pick()
            try:
                async with asyncio.timeout(unit.timeout):
                    if worker is None:
                        worker = await self._execute_pool_as_task(pending)
                        if worker is None:  # it ran as a task
                            return
                    if not unit.stream:
                        # A short batch: its results come back together (one message).
                        results: list[ActivityResult] = await worker.run.remote(
                            list(pending.values())
                        )
                        self._deliver(results)
                        return
                    stream = worker.run_stream.options(num_returns="streaming").remote(
                        list(pending.values())
                    )
                    async for ref in stream:
                        results = await ref
                        for result in results:
                            pending.pop((result.instance_id, result.task_id), None)
                        self._deliver(results)
                return
            except TimeoutError:  # a safety net: activities with a timeout travel as tasks
                self._deliver([_timed_out(t, unit.timeout) for t in pending.values()])
                return
            except LOST as exc:
                if worker is not None:
                    self.shared.lost(worker)
                if attempt < MAX_REDISPATCH:
                    self._log.warning(
                        "activity worker lost; re-dispatching what had not finished",
                        error=str(exc),
                        tasks=len(pending),
                    )
                    continue
                failed = [
                    _failed(t, RuntimeError(f"activity worker lost: {exc}"))
                    for t in pending.values()
                ]
                self._deliver(failed)
                return
            except Exception as exc:  # a failure outside the activities themselves
                self._deliver([_failed(t, exc) for t in pending.values()])
                return

    async def _execute_pool_as_task(self, pending: dict[Any, ActivityTask]) -> Any:
        """No shared worker has answered yet: run the batch as one task holding a CPU, at
        most as many at once as the cluster has CPUs, and return None; or return the
        worker that answered while this batch waited for its turn (it goes there)."""
        async with self.shared.fallback_turn() as worker:
            if worker is not None:
                return worker
            ran: list[ActivityResult] = await self.shared.as_task.remote(
                self._registry_ref, list(pending.values())
            )
            self._deliver(ran)
            return None

    # -- calls from clients and peers ---------------------------------------------------------

    async def client_request(self, op: str, args: dict[str, Any], request_id: str | None) -> Any:
        """Apply a client operation; returns after the batch that applied it committed."""
        results = await self.client_requests([(op, args, request_id)])
        return results[0]

    async def client_requests(
        self, requests: list[tuple[str, dict[str, Any], str | None]]
    ) -> list[Any]:
        """Apply several client operations (one call from a busy client); their replies in
        order, each a result or a ``Reply`` holding its error."""
        self._ensure_loop()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        batched = False
        for op, args, request_id in requests:
            if op in OFF_BATCH_READS:
                # Listings and counts read committed data beside the batch loop.
                futures.append(
                    loop.run_in_executor(self._readers, self.core.client_ops.read, op, args)
                )
                continue
            future = loop.create_future()
            self.core.submit_request(
                ClientRequest(op=op, args=args, reply_to=future, request_id=request_id)
            )
            futures.append(future)
            batched = True
        if batched:
            self._poke()
        results = list(await asyncio.gather(*futures))
        for (op, _, _), result in zip(requests, results, strict=True):
            if op == "stats" and self.links is not None and isinstance(result, dict):
                # The links belong to this shell, not the core: add their counters here.
                counters = result.setdefault("counters", {})
                for key, value in self.links.counters.items():
                    counters[f"link_{key}"] = value
        return results

    async def deliver(self, source: int, messages: list[Any], ack: int | None = None) -> None:
        """Messages from partition ``source``, and its ack of ours up to ``ack``."""
        self._on_frame(source, ack, messages)

    def _on_frame(self, source: int, ack: int | None, messages: list[Any]) -> None:
        if messages:
            self.core.submit_messages(source, messages)
        if ack is not None:
            self.core.submit_ack(source, ack)
        self._poke()

    async def _resolve_link(self, index: int) -> tuple[str, int] | None:
        address = await self._peer(index).link_address.remote()
        return None if address is None else (address[0], int(address[1]))

    def _on_reconnect(self, destination: int) -> None:
        self.core.submit_resend(destination)
        self._poke()

    async def link_address(self) -> tuple[str, int] | None:
        """Where this partition's peer-link server listens (None: links are off)."""
        self._ensure_loop()
        if self._links_ready is None:
            return None
        result: tuple[str, int] = await asyncio.shield(self._links_ready)
        return result

    async def link_secret(self) -> bytes | None:
        """The hub's peer-link secret, for a relaunch that replaces dead partitions."""
        return self._link_secret

    async def describe(self) -> dict[str, Any]:
        """Hub metadata for clients that attach without the app's code."""
        self._ensure_loop()
        return {
            "hub": self.hub,
            "partition": self.index,
            "partitions": self.config.partitions,
            "max_payload_bytes": self.config.max_payload_bytes,
            "data_dir": self.config.data_dir,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "started": self._started,
        }

    async def ping(self) -> bool:
        """Liveness probe; also starts the batch loop."""
        self._ensure_loop()
        return True


def _ray_tls() -> bool:
    """True when Ray's own traffic is TLS-encrypted: the peer links are plain TCP, so a
    cluster that asked for encryption keeps its partition messages on Ray calls."""
    return os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true", "yes")


def _failed(task: ActivityTask, exc: BaseException) -> ActivityResult:
    """A failure the shell records for an activity that did not run to its end."""
    return ActivityResult(
        task.instance_id,
        task.execution_id,
        task.task_id,
        failure=FailureDetails.from_exception(exc),
        name=task.name,  # with no run time: the plan learns nothing, ends its probe
    )


def _timed_out(task: ActivityTask, timeout: float | None) -> ActivityResult:
    return _failed(task, TimeoutError(f"activity {task.name!r} timed out after {timeout} s"))


PartitionActor = ray.remote(PartitionActorImpl)
_ = Reply
