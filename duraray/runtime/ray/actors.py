"""Thin Ray actor shells: a partition actor around ``PartitionCore``, and activity workers.

The shells hold no engine logic. A partition actor is an async actor whose event loop
accepts calls (client requests, messages, acks, activity results) by appending them to
the core's intake, and runs one background loop: run a batch (in a thread, so calls keep
arriving while LMDB commits), then release its effects: replies resolve the waiting
calls, messages and acks go to each peer together, on its direct link (``peerlink``) or
else as one Ray call, activities go to workers in batches. Ray restarts a dead partition
actor; ``PartitionCore.__init__`` recovers it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import random
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import ray
import structlog

from duraray._errors import FailureDetails, HubConfigurationError
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.runtime.engine.activity import ActivityCostModel, execute_activity
from duraray.runtime.engine.partition import PartitionCore
from duraray.runtime.engine.records import (
    ActivityResult,
    ActivityTask,
    ClientRequest,
    Effects,
    Reply,
)
from duraray.runtime.engine.store import LmdbStore
from duraray.runtime.ray.peerlink import PeerLinks

log = structlog.get_logger("duraray.actors")

NAMESPACE = "duraray"
#: Tasks per activity batch sent to one worker: large enough to amortize the Ray call,
#: small enough that a fan-out spreads over every worker.
ACTIVITY_BATCH = 32
#: Times a batch is re-dispatched after its worker died before its tasks fail.
MAX_REDISPATCH = 5

# Options that place an activity on specific Ray resources rather than the shared pool.
RESOURCE_OPTIONS = ("num_cpus", "num_gpus", "resources", "memory", "accelerator_type")


def partition_actor_name(hub: str, index: int) -> str:
    """The Ray actor name of a hub's partition."""
    return f"duraray/{hub}/p{index}"


def worker_actor_name(hub: str, index: int) -> str:
    """The Ray actor name of a hub's activity worker."""
    return f"duraray/{hub}/w{index}"


def partition_dir(data_dir: str, hub: str, index: int) -> str:
    """Where a partition's LMDB environment lives."""
    return os.path.join(data_dir, hub, f"p{index}")


class ActivityWorkerImpl:
    """Executes batches of activities; one process of the shared pool."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def run(self, tasks: list[ActivityTask]) -> list[ActivityResult]:
        """Execute ``tasks`` one after the other and return their results."""
        return [execute_activity(self.registry, task) for task in tasks]

    def node_id(self) -> str:
        """The Ray node this worker runs on."""
        return ray.get_runtime_context().get_node_id()

    def ping(self) -> bool:
        """Liveness probe."""
        return True


def _run_activity_batch(registry: Registry, tasks: list[ActivityTask]) -> list[ActivityResult]:
    """A Ray task running activities that asked for specific resources."""
    return [execute_activity(registry, task) for task in tasks]


class PartitionActorImpl:
    """The async Ray actor hosting one PartitionCore."""

    def __init__(
        self,
        hub: str,
        index: int,
        config: HubConfig,
        registry: Registry,
        worker_count: int,
        link_secret: bytes | None = None,
        *,
        expect_data: bool = False,
    ) -> None:
        from duraray.runtime.logging import configure_logging

        configure_logging(config.log_format)
        self.hub = hub
        self.index = index
        self.config = config
        self.registry = registry
        # Workers and peers are found by name, not passed as handles: constructor arguments
        # stay small and inline, so Ray can always restart this actor from them.
        self.workers = [
            ray.get_actor(worker_actor_name(hub, i), namespace=NAMESPACE)
            for i in range(worker_count)
        ]
        self._peers: dict[int, Any] = {}
        path = partition_dir(config.data_dir, hub, index)
        if expect_data and not os.path.exists(os.path.join(path, "data.mdb")):
            # A fresh, empty store here would silently stand in for the real one.
            raise HubConfigurationError(
                f"partition {index} of hub {hub!r} has no data at {path} on node "
                f"{ray.util.get_node_ip_address()}, where the hub's placement puts it"
            )
        store = LmdbStore(path, sync=config.fsync)
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
        self._remote_batch = ray.remote(_run_activity_batch)
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        # Cheap activities run here, beside the batch loop (see ActivityCostModel).
        self._inline_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inline")
        self._costs = ActivityCostModel(threshold=config.inline_activity_max_ms / 1000)
        self._round_robin = itertools.count(random.randrange(max(1, worker_count)))
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
                    fx = await loop.run_in_executor(self._committer, core.run_batch)
                    self._release(fx)
                    await asyncio.sleep(0)  # let queued calls land in the next batch
                    continue
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
            except Exception:
                # A failed batch was not committed; nothing was released. Crash the actor so
                # Ray restarts it and the core recovers from its last commit.
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
        if fx.activities:
            self._dispatch(fx.activities)

    def _peer(self, index: int) -> Any:
        peer = self._peers.get(index)
        if peer is None:
            peer = ray.get_actor(partition_actor_name(self.hub, index), namespace=NAMESPACE)
            self._peers[index] = peer
        return peer

    # -- activities -------------------------------------------------------------------------

    def _dispatch(self, tasks: list[ActivityTask]) -> None:
        # Group by where the tasks must run: the shared pool, or Ray tasks with the
        # resources an activity asked for. Activities with a timeout go alone, so one
        # slow task cannot time out its batch-mates.
        groups: dict[tuple[Any, ...], list[ActivityTask]] = defaultdict(list)
        plans: dict[tuple[Any, ...], tuple[dict[str, Any], float | None]] = {}
        for task in tasks:
            spec = self.registry.activities.get(task.name)
            options = spec.options if spec is not None else {}
            ray_options = {k: options[k] for k in RESOURCE_OPTIONS if k in options}
            timeout = options.get("timeout")
            if timeout is not None:
                key: tuple[Any, ...] = ("single", task.instance_id, task.task_id)
            elif self._runs_inline(task.name, spec, ray_options):
                key = ("inline",)
            else:
                key = ("pool", tuple(sorted((k, repr(v)) for k, v in ray_options.items())))
            groups[key].append(task)
            plans[key] = (ray_options, timeout)
        loop = asyncio.get_running_loop()
        for key, group in groups.items():
            ray_options, timeout = plans[key]
            inline = key == ("inline",)
            for start in range(0, len(group), ACTIVITY_BATCH):
                chunk = group[start : start + ACTIVITY_BATCH]
                job = loop.create_task(
                    self._execute_inline(chunk)
                    if inline
                    else self._execute(chunk, ray_options, timeout)
                )
                self._in_flight.add(job)
                job.add_done_callback(self._in_flight.discard)

    def _runs_inline(self, name: str, spec: Any, ray_options: dict[str, Any]) -> bool:
        """Cheap, plain activities skip the Ray round trip (see ActivityCostModel)."""
        if spec is None or ray_options or not self.config.inline_activities:
            return False
        forced = spec.options.get("inline")
        if forced is not None:
            return bool(forced)
        if inspect.iscoroutinefunction(spec.fn):
            return False
        return self._costs.is_cheap(name)

    async def _execute_inline(self, chunk: list[ActivityTask]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._inline_pool, self._run_chunk, chunk)
        except Exception as exc:  # execute_activity never raises; this is a safety net
            results = [_failed(t, exc) for t in chunk]
        self._deliver_results(chunk, results)

    def _run_chunk(self, chunk: list[ActivityTask]) -> list[ActivityResult]:
        return [execute_activity(self.registry, task) for task in chunk]

    def _deliver_results(self, chunk: list[ActivityTask], results: list[ActivityResult]) -> None:
        for task, result in zip(chunk, results, strict=False):
            if result.failure is None or result.duration:
                self._costs.observe(task.name, result.duration)
        self.core.submit_activity_results(results)
        self._poke()

    def _submit(self, chunk: list[ActivityTask], ray_options: dict[str, Any]) -> Any:
        if ray_options or not self.workers:
            return self._remote_batch.options(**ray_options).remote(self._registry_ref, chunk)
        worker = self.workers[next(self._round_robin) % len(self.workers)]
        return worker.run.remote(chunk)

    async def _execute(
        self, chunk: list[ActivityTask], ray_options: dict[str, Any], timeout: float | None
    ) -> None:
        for attempt in range(MAX_REDISPATCH + 1):
            ref = self._submit(chunk, ray_options)
            try:
                if timeout is not None:
                    results = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
                else:
                    results = await ref
            except TimeoutError:
                ray.cancel(ref, force=False)
                results = [
                    _failed(t, TimeoutError(f"activity {t.name!r} timed out after {timeout} s"))
                    for t in chunk
                ]
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                if attempt < MAX_REDISPATCH:
                    self._log.warning("activity worker lost; re-dispatching", error=str(exc))
                    continue
                results = [_failed(t, RuntimeError(f"activity worker lost: {exc}")) for t in chunk]
            except Exception as exc:  # a failure outside the activity itself
                results = [_failed(t, exc) for t in chunk]
            self._deliver_results(chunk, results)
            return

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
        for op, args, request_id in requests:
            future = loop.create_future()
            self.core.submit_request(
                ClientRequest(op=op, args=args, reply_to=future, request_id=request_id)
            )
            futures.append(future)
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
    return ActivityResult(
        task.instance_id,
        task.execution_id,
        task.task_id,
        failure=FailureDetails.from_exception(exc),
    )


PartitionActor = ray.remote(PartitionActorImpl)
ActivityWorker = ray.remote(ActivityWorkerImpl)
_ = Reply
