"""PartitionManager: launching, attaching to and stopping a hub on Ray, and routing to it.

A hub on Ray is P named partition actors (``duraray/<hub>/p<i>`` in the ``duraray``
namespace) pinned to the node that holds their data dir, plus its pools actor
(``duraray/<hub>/pools``, started once the partitions answer), which starts the shared
activity workers when a partition first needs them and the resource-shaped pools. The
manager is driver-side code, not an actor: every
process can find a hub's actors by name, and ids are routed by the stable hash of
``routing.partition_for``, so nothing central sits on the hot path.
"""

from __future__ import annotations

import fcntl
import os
import queue
import secrets
import socket
import sys
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import structlog

from duraray._errors import HubConfigurationError
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.runtime.engine.records import Reply
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.ray.placement import Placement

log = structlog.get_logger("duraray.manager")


def ensure_ray(
    address: str | None = None, *, connect_timeout: float | None = None, **init_options: Any
) -> bool:
    """Connect to Ray (starting a local instance when no address is given).

    With ``connect_timeout``, an address that names a running cluster is first checked
    (``probe_ray_cluster``): ConnectionError within that many seconds when nothing
    answers there, instead of Ray's minutes of retries. Returns True if this call started
    or connected Ray (so the caller should shut it down), False if Ray was already
    initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "WARNING",
        "log_to_driver": True,
    }
    options.update(init_options)
    # No address means RAY_ADDRESS (set for Ray jobs) or else a new local instance: a bare
    # ray.init() would instead join whatever cluster /tmp/ray/ray_current_cluster names
    # (`ray start`, a test's Cluster), and Ray ignores RAY_ADDRESS for "local".
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or "local"
    if connect_timeout is not None:
        probe_ray_cluster(address, connect_timeout)
    options["address"] = address
    ray.init(**options)
    return True


def _recorded_ray_cluster() -> tuple[str, str | None]:
    """Where `ray start` records the latest cluster's address, and that address."""
    try:
        from ray._common.utils import get_ray_address_file

        path: str = get_ray_address_file(None)
    except Exception:  # an older Ray: the same file, by its documented default
        path = os.path.join(os.environ.get("RAY_TMPDIR") or "/tmp", "ray", "ray_current_cluster")
    try:
        with open(path) as file:
            return path, file.read().strip() or None
    except OSError:
        return path, None


def find_ray_cluster(address: str = "auto") -> str | None:
    """The GCS address (``host:port``) that ``ray.init(address=address)`` would join.

    None when it would start a new local instance (``"local"``). ``"auto"`` is resolved
    as Ray does: $RAY_ADDRESS, then the cluster `ray start` recorded in
    /tmp/ray/ray_current_cluster, then a GCS process on this machine; ConnectionError when
    it finds none. A ``ray://`` address gives its host:port.
    """
    if address == "local":
        return None
    if "://" in address:
        return address.split("://", 1)[1].split("/", 1)[0]
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved: str | None = canonicalize_bootstrap_address(address)
    except ConnectionError as exc:  # "auto" and nothing running
        raise ConnectionError(
            "no Ray cluster is running here (RAY_ADDRESS is unset and `ray start` recorded none)"
        ) from exc
    return resolved


def probe_ray_cluster(address: str, timeout: float) -> str | None:
    """Check within ``timeout`` seconds that something listens where ``address`` leads.

    Returns the GCS address (None for a new local instance, nothing to check). Raises
    ConnectionError, saying why, when ``"auto"`` finds no cluster or its address does
    not accept a TCP connection (a stale /tmp/ray/ray_current_cluster is named).
    """
    target = find_ray_cluster(address)
    if target is None:
        return None
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except ValueError as exc:
        raise ValueError(f"malformed Ray address {target!r}: want HOST:PORT") from exc
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        message = f"nothing answers at {target} ({reason})"
        if address == "auto" and not os.environ.get("RAY_ADDRESS"):
            path, recorded = _recorded_ray_cluster()
            if recorded is not None:  # what "auto" found there (canonicalized)
                message += (
                    f": {path} names a cluster that is gone (delete that file, or start "
                    "a new cluster with `ray start --head`)"
                )
        raise ConnectionError(message) from exc
    return target


@dataclass
class HubHandle:
    """The actors of a running hub, as seen from one process."""

    hub: str
    partitions: list[Any]
    info: dict[str, Any]
    # Held so that a non-detached pools actor (and the workers it owns) lives as long as
    # the hub: an actor without a detached lifetime dies when its owner's last handle goes.
    workers: list[Any] | None = None

    @property
    def partition_count(self) -> int:
        """Number of partitions."""
        return len(self.partitions)

    def partition_for(self, key: str) -> int:
        """The partition owning an instance or entity id."""
        return partition_for(key, len(self.partitions))


#: The file, in ``<data_dir>/<hub>/`` of the launching node, recording which node holds
#: each partition's data when ``placement="spread"``.

#: Calls one client keeps in flight to one partition. Further requests wait and then go
#: together as one call: a Ray call costs far more than a request, so many threads
#: calling one partition (signals to one entity from a web server's workers) then share
#: calls instead of each paying for its own.
MAX_CALLS_IN_FLIGHT = 2
#: Most requests in one shared call (a bulk caller's chunks must not merge into one
#: giant call whose every reply waits for the last commit).
MAX_SHARED_REQUESTS = 256
# Operations that stay open until something happens (a wait), and bulk requests that are
# already one call's worth: never shared, never counted against the in-flight calls.
_OWN_CALL_OPS = frozenset({"wait", "wait_many", "batch"})

_Pending = tuple[str, dict[str, Any], str | None, "Future[Any]"]


class RayTransport:
    """The client's transport on Ray: actor calls to the partitions, as futures.

    A request goes out at once while its partition has fewer than
    ``MAX_CALLS_IN_FLIGHT`` of this client's calls open; otherwise it queues, and when a
    call returns, up to ``MAX_SHARED_REQUESTS`` queued requests for that partition go as
    one ``client_requests`` call. Each request keeps its own request id, reply and error.
    """

    def __init__(self, handle: HubHandle) -> None:
        self.handle = handle
        self._lock = threading.Lock()
        self._in_flight = [0] * handle.partition_count
        self._queued: list[list[_Pending]] = [[] for _ in range(handle.partition_count)]
        self._flushes: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._flusher: threading.Thread | None = None

    @property
    def partition_count(self) -> int:
        """Number of partitions of the hub."""
        return self.handle.partition_count

    def submit(
        self, partition: int, op: str, args: dict[str, Any], request_id: str | None = None
    ) -> Future[Any]:
        """Send a client operation to a partition actor."""
        out: Future[Any] = Future()
        item: _Pending = (op, args, request_id, out)
        if op in _OWN_CALL_OPS:
            self._call(partition, [item], counted=False)
            return out
        with self._lock:
            if self._in_flight[partition] >= MAX_CALLS_IN_FLIGHT:
                self._queued[partition].append(item)
                return out
            self._in_flight[partition] += 1
        self._call(partition, [item], counted=True)
        return out

    def release(self) -> None:
        """Stop the flusher thread (requests still queued fail); the client is done."""
        with self._lock:
            flusher, self._flusher = self._flusher, None
            queued = [item for items in self._queued for item in items]
            self._queued = [[] for _ in self._queued]
        if flusher is not None:
            self._flushes.put(None)
        self._settle(queued, None, RuntimeError("the client was closed"))

    def _call(self, partition: int, items: list[_Pending], *, counted: bool) -> None:
        try:
            actor = self.handle.partitions[partition]
            if len(items) == 1:
                op, args, request_id, _ = items[0]
                ref = actor.client_request.remote(op, args, request_id)
            else:
                ref = actor.client_requests.remote([(op, args, rid) for op, args, rid, _ in items])
            future = ref.future()
        except BaseException as exc:  # e.g. an argument Ray cannot serialize
            if len(items) > 1:
                # Do not let one bad request fail the others that shared its call.
                for item in items:
                    self._call(partition, [item], counted=False)
            else:
                self._settle(items, None, exc)
            if counted:
                self._returned(partition)
            return

        def done(inner: Future[Any]) -> None:
            try:
                try:
                    result = inner.result()
                except BaseException as exc:  # Ray errors surface as they are
                    self._settle(items, None, exc)
                else:
                    self._settle(items, [result] if len(items) == 1 else result, None)
            finally:
                if counted:
                    self._returned(partition)

        future.add_done_callback(done)

    @staticmethod
    def _settle(items: list[_Pending], results: Any, error: BaseException | None) -> None:
        if error is None and (not isinstance(results, list) or len(results) != len(items)):
            error = RuntimeError(f"partition answered {len(items)} requests with {results!r}")
        for index, (_, _, _, out) in enumerate(items):
            try:
                if out.done():
                    continue
                if error is not None:
                    out.set_exception(error)
                elif isinstance(results[index], Reply):
                    out.set_exception(results[index].error)
                else:
                    out.set_result(results[index])
            except InvalidStateError:
                pass  # cancelled meanwhile by its caller

    def _returned(self, partition: int) -> None:
        with self._lock:
            if not self._queued[partition]:
                self._in_flight[partition] -= 1
                return
            # The returned call's slot passes to the queued requests: sent from our own
            # thread, since this callback runs on one of Ray's.
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_forever, name="duraray-client-flush", daemon=True
                )
                self._flusher.start()
        self._flushes.put(partition)

    def _flush_forever(self) -> None:
        while True:
            partition = self._flushes.get()
            if partition is None:
                return
            with self._lock:
                items = self._queued[partition][:MAX_SHARED_REQUESTS]
                del self._queued[partition][:MAX_SHARED_REQUESTS]
            try:
                if items:
                    self._call(partition, items, counted=True)
                else:
                    self._returned(partition)
            except BaseException as exc:  # keep flushing the other partitions
                log.error("client flush failed", error=repr(exc))
                self._settle(items, None, exc)


def ship_app_code(registry: Registry) -> list[str]:
    """Let workers load the app's code even where its modules are not installed.

    Functions are pickled by reference (module + name) by default, which fails on a
    worker that cannot import the module (a script's helper module, a test module, a
    notebook). Modules that are not part of an installed package are registered to be
    pickled by value instead; installed packages stay by reference. Returns the modules.
    """
    from ray import cloudpickle

    shipped: list[str] = []
    targets: list[Any] = list(registry.orchestrations.values())
    targets += [spec.fn for spec in registry.activities.values()]
    targets += list(registry.entities.values())
    for target in targets:
        name: str | None = getattr(target, "__module__", None)
        if not name:
            continue
        module = sys.modules.get(name)
        if module is None or name in ("__main__", "builtins") or name in shipped:
            continue
        path = getattr(module, "__file__", None) or ""
        if not path or any(part in path for part in ("site-packages", "dist-packages")):
            continue
        if name == "duraray" or name.startswith("duraray."):
            continue
        cloudpickle.register_pickle_by_value(module)
        shipped.append(name)
    return shipped


class PartitionManager:
    """Launches, attaches to and stops the actors of one hub."""

    def __init__(self, hub: str, config: HubConfig, registry: Registry | None) -> None:
        self.hub = hub
        self.config = config
        self.registry = registry

    # -- discovery --------------------------------------------------------------------------

    @staticmethod
    def find(hub: str, timeout: float = 0.0) -> HubHandle | None:
        """The running hub's actors, or None if the hub is not up."""
        import ray

        from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name

        deadline = time.monotonic() + timeout
        while True:
            try:
                # Typed Any: Ray's stubs do not model remote methods.
                first: Any = ray.get_actor(partition_actor_name(hub, 0), namespace=NAMESPACE)
                break
            except ValueError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)
        info: dict[str, Any] = ray.get(first.describe.remote())
        partitions = [first] + [
            ray.get_actor(partition_actor_name(hub, i), namespace=NAMESPACE)
            for i in range(1, info["partitions"])
        ]
        return HubHandle(hub, partitions, info)

    # -- launching ----------------------------------------------------------------------------

    def launch(self, *, detached: bool) -> HubHandle:
        """Start the hub's actors on this cluster, or attach if they are already up."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from duraray.runtime.ray.actors import (
            NAMESPACE,
            PartitionActor,
            partition_actor_name,
            partition_dir,
        )

        existing = self.find(self.hub)
        if existing is not None:
            if existing.partition_count != self.config.partitions:
                raise HubConfigurationError(
                    f"hub {self.hub!r} is running with {existing.partition_count} partitions, "
                    f"not {self.config.partitions}"
                )
            if self.registry is not None and detached:
                # A detached hub's pools actor may be gone (a launch stopped after the
                # partitions answered): without it cheap batches would run as tasks. Not
                # for a non-detached attach: this process's lifetime is not the hub's.
                existing.workers = [self._start_pools("detached")]
            return existing
        if self.registry is None:
            raise HubConfigurationError(
                f"hub {self.hub!r} is not running and no app code was given"
            )
        config = self.config
        placement, hub_exists = Placement(self.hub, config).plan()
        here = ray.get_runtime_context().get_node_id()
        self._check_data_dir(
            config, partition_dir, [i for i, n in enumerate(placement) if n == here]
        )
        ship_app_code(self.registry)

        lifetime = "detached" if detached else None
        # Only the partitions are waited for: the pools actor starts once they answer, and
        # the shared activity workers when a partition first needs them (shared_pool.py),
        # so the hub's first orchestration does not wait for processes it may never use
        # (each costs about half a second of CPU to start).
        names = [partition_actor_name(self.hub, i) for i in range(config.partitions)]
        # Authenticates the partitions' direct links to each other (see peerlink.py);
        # it lives only in the actors' constructor arguments, so restarts keep it.
        link_secret = self._running_link_secret(names) or secrets.token_bytes(32)
        partitions: list[Any] = [
            PartitionActor.options(
                name=names[i],
                namespace=NAMESPACE,
                lifetime=lifetime,
                max_restarts=-1,
                max_task_retries=-1,
                max_concurrency=10_000,
                num_cpus=0,
                # The partition's data is on that node's disk: it must always run there.
                scheduling_strategy=NodeAffinitySchedulingStrategy(placement[i], soft=False),
                get_if_exists=True,
            ).remote(
                self.hub,
                i,
                config,
                self.registry,
                link_secret,
                expect_data=hub_exists,
            )
            for i in range(config.partitions)
        ]
        try:
            ray.get([p.ping.remote() for p in partitions], timeout=120)
        except Exception as exc:
            for actor in partitions:
                ray.kill(actor, no_restart=True)
            # A partition that refused its data dir (partition count, owner) raised a
            # HubConfigurationError in its constructor; Ray only hands us its formatted
            # traceback, so surface that error's own message rather than the traceback.
            cause = str(exc).rsplit("HubConfigurationError: ", 1)
            if len(cause) == 2:
                raise HubConfigurationError(cause[1].strip()) from exc
            raise HubConfigurationError(f"hub {self.hub!r} failed to start: {exc}") from exc
        pools = self._start_pools(lifetime)
        if config.placement == "spread" and not hub_exists:
            Placement(self.hub, config).record(placement, created=True)
        started_info: dict[str, Any] = ray.get(partitions[0].describe.remote())
        log.info(
            "hub started",
            nodes=len(set(placement)),
            hub=self.hub,
            partitions=config.partitions,
            data_dir=config.data_dir,
            detached=detached,
        )
        return HubHandle(self.hub, partitions, started_info, [pools])

    def _start_pools(self, lifetime: str | None) -> Any:
        """Start the hub's pools actor (or find it running): the hub-wide owner of the warm
        worker pools, resource-shaped and shared (pools.py). Not waited for: until it
        answers, partitions run such activities as tasks."""
        from duraray.runtime.ray.actors import NAMESPACE
        from duraray.runtime.ray.pools import ActivityPools, pools_actor_name

        assert self.registry is not None
        return ActivityPools.options(
            name=pools_actor_name(self.hub),
            namespace=NAMESPACE,
            lifetime=lifetime,
            max_restarts=-1,
            max_task_retries=0,
            num_cpus=0,
            max_concurrency=10_000,
            get_if_exists=True,
        ).remote(self.hub, self.registry, self.config.activity_pool_idle_s, self.config.log_format)

    @staticmethod
    def _running_link_secret(names: list[str]) -> bytes | None:
        """The link secret of partitions of this hub that are still up (a relaunch after
        some of them died): new ones must share it, or their links would be refused."""
        import ray

        from duraray.runtime.ray.actors import NAMESPACE

        for name in names:
            try:
                # Typed Any: Ray's stubs do not model remote methods.
                actor: Any = ray.get_actor(name, namespace=NAMESPACE)
                secret: bytes | None = ray.get(actor.link_secret.remote(), timeout=30)
            except Exception:
                continue  # gone, or restarting: ask the next one
            if secret is not None:
                return secret
        return None

    def _check_data_dir(self, config: HubConfig, partition_dir: Any, local: list[int]) -> None:
        """Refuse a data dir that another process holds, before any actor starts (for the
        partitions placed on this node; the others check their own when they open it)."""
        for i in local:
            path = partition_dir(config.data_dir, self.hub, i)
            lock = os.path.join(path, "duraray.lock")
            if not os.path.exists(lock):
                continue
            # A hub stopped a moment ago may still be exiting: allow it a few seconds.
            deadline = time.monotonic() + 10
            fd = os.open(lock, os.O_RDWR)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise HubConfigurationError(
                                f"the data dir {path!r} of hub {self.hub!r} is in use by another "
                                "process: is the hub already running elsewhere on this data dir?"
                            ) from None
                        time.sleep(0.1)
            finally:
                os.close(fd)

    @staticmethod
    def stop(hub: str) -> bool:
        """Kill a hub's partition and worker actors; its data stays on disk."""
        import ray

        from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name
        from duraray.runtime.ray.shared_pool import worker_actor_name

        handle = PartitionManager.find(hub)
        if handle is None:
            return False
        for actor in handle.partitions:
            ray.kill(actor, no_restart=True)
        names = [partition_actor_name(hub, i) for i in range(handle.partition_count)]
        from duraray.runtime.ray.pools import pools_actor_name

        pools_id = None
        try:  # the workers of every pool are its children: they stop with it
            pools = ray.get_actor(pools_actor_name(hub), namespace=NAMESPACE)
        except ValueError:
            pass
        else:
            ray.kill(pools, no_restart=True)
            names.append(pools_actor_name(hub))
            pools_id = pools._actor_id.hex()
        try:  # what it asked of the autoscaler must not outlive the hub
            from duraray.runtime.ray.ledger import existing_ledger

            if (ledger := existing_ledger()) is not None:
                ray.get(ledger.retire.remote(hub, pools_id), timeout=10)
        except Exception:
            pass  # the hub's figure lapses in the ledger by itself
        # Shared workers still registered (dying with it, or of an older version). From 0;
        # a failed creation leaves a gap, so look a few numbers past the last one found.
        i, misses = 0, 0
        while misses < 8:
            try:
                worker = ray.get_actor(worker_actor_name(hub, i), namespace=NAMESPACE)
            except ValueError:
                misses += 1
            else:
                misses = 0
                ray.kill(worker, no_restart=True)
                names.append(worker_actor_name(hub, i))
            i += 1
        # Named actors are released asynchronously: wait until every name is free, so a
        # restart right after stop does not attach to dying actors (get_if_exists).
        deadline = time.monotonic() + 30
        while names and time.monotonic() < deadline:
            try:
                ray.get_actor(names[0], namespace=NAMESPACE)
            except ValueError:
                names.pop(0)
                continue
            time.sleep(0.05)
        return True


def attach_transport(hub: str, address: str | None) -> tuple[RayTransport, int]:
    """A transport to a hub already running on the Ray cluster at ``address``, and the
    hub's payload limit (``Client.attach``)."""
    ensure_ray(address)
    handle = PartitionManager.find(hub)
    if handle is None:
        raise HubConfigurationError(f"hub {hub!r} is not running on this Ray cluster")
    return RayTransport(handle), int(handle.info["max_payload_bytes"])
