"""One request to the autoscaler for every hub on the cluster.

Ray's autoscaler keeps a single standing request per cluster: each call of
``ray.autoscaler.sdk.request_resources`` replaces the last, whoever made it. A hub's pools
actor used to call it with its own total, so two hubs on one cluster overwrote each
other's demand, and stopping one cleared the other's. Now every hub's pools actor reports
its total here instead (``DemandLedger.report``), to one detached actor per cluster, named
``LEDGER_NAME`` in duraray's namespace and created by whichever hub reports first, and
this actor publishes the sum.

A hub's figure lapses ``ENTRY_TTL_S`` after it was last reported (found by the next
report or sweep, at most ``SWEEP_S`` later): the partitions of a hub with demand report
it again every ``DEMAND_REPORT_S`` (``runtime/ray/demand.py``), so only a hub that died
without reporting 0 lapses, and its demand does not keep a cluster grown forever. A hub
that stops retires its pools actor here (``retire``), so a report that actor sent just
before it died cannot bring the figure back.

The ledger asks for no CPU and runs on the head node: a worker node scaled down would
take it along, and a restarted ledger starts empty. Ray restarts it if its process dies;
it then publishes 0 at once (replacing what its last process left, which may name hubs
that are gone) and the hubs' next reports, within ``DEMAND_REPORT_S``, fill it again.
The name carries a version: a ledger left on the cluster by a version with other calls
is not reused. Another library calling ``request_resources`` itself (Ray Data does,
under autoscaling) still replaces the request until the sum next changes: Ray offers no
way to add to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import ray
import structlog

from duraray.runtime.ray.shared_pool import NAMESPACE

#: The cluster's ledger actor, in duraray's namespace (versioned: see the module).
LEDGER_NAME = "duraray-autoscaler-demand-v1"
#: Seconds after its last report that a hub's figure lapses.
ENTRY_TTL_S = 120.0
#: How often lapsed figures are looked for when no report comes.
SWEEP_S = 30.0
#: The most CPUs published at once (the bundles travel in one message).
MAX_PUBLISHED_CPUS = 100_000

log = structlog.get_logger("duraray.ledger")


def _request_resources(cpus: int) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"CPU": 1}] * cpus)


class DemandLedgerImpl:
    """The CPUs each hub's activities want, and their sum published (see the module).

    ``publish`` and ``clock`` are for tests: by default ``request_resources`` with one
    one-CPU bundle per CPU, and the monotonic clock.
    """

    def __init__(
        self,
        publish: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish or _request_resources
        self._clock = clock
        self._by_hub: dict[str, tuple[int, float]] = {}  # hub -> (CPUs, reported at)
        # Pools actors of stopped hubs (actor id -> retired at): their late reports are
        # ignored. Kept for ENTRY_TTL_S.
        self._retired: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        # Nothing is known yet: whatever an earlier process of this ledger published
        # may name hubs that are gone, so it is replaced now; live hubs report again.
        self._published: int | None = None
        try:
            self._publish(0)
            self._published = 0
        except Exception as exc:  # a hint only: the first report tries again
            log.warning("autoscaler demand not published", error=str(exc))

    async def report(self, hub: str, cpus: int, reporter: str | None = None) -> int:
        """Hub ``hub``'s activities want ``cpus`` CPUs now (0: none, the hub is idle or
        stopping), as reported by ``reporter`` (its pools actor's id; ignored once that
        actor is retired). Publishes the new sum if it changed; returns the sum."""
        _check_hub(hub)
        cpus = max(0, int(cpus))
        if reporter is None or reporter not in self._retired:
            if cpus:
                self._by_hub[hub] = (cpus, self._clock())
            else:
                self._by_hub.pop(hub, None)
        return await self._publish_total()

    async def retire(self, hub: str, reporter: str | None = None) -> int:
        """Hub ``hub`` stopped: drop its figure, and ignore what its pools actor
        ``reporter`` may still have on the way. Returns the new sum."""
        _check_hub(hub)
        if reporter is not None:
            self._retired[reporter] = self._clock()
        self._by_hub.pop(hub, None)
        return await self._publish_total()

    async def entries(self) -> dict[str, int]:
        """The figure of each hub that has one (lapsed ones dropped)."""
        self._drop_lapsed()
        return {hub: cpus for hub, (cpus, _) in self._by_hub.items()}

    async def published(self) -> int | None:
        """The sum last published (None: nothing yet by this process)."""
        return self._published

    def _drop_lapsed(self) -> None:
        now = self._clock()
        for hub, (_, at) in list(self._by_hub.items()):
            if now - at > ENTRY_TTL_S:
                del self._by_hub[hub]
                log.warning("autoscaler demand of a silent hub dropped", hub=hub)
        for reporter, at in list(self._retired.items()):
            if now - at > ENTRY_TTL_S:
                del self._retired[reporter]

    async def _publish_total(self) -> int:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        async with self._lock:  # reports overlap: publish the latest sum, in order
            self._drop_lapsed()
            total = min(sum(cpus for cpus, _ in self._by_hub.values()), MAX_PUBLISHED_CPUS)
            if total != self._published:
                try:
                    await asyncio.to_thread(self._publish, total)
                except Exception as exc:  # a hint only: the next report tries again
                    log.warning("autoscaler demand not published", error=str(exc))
                    return total
                self._published = total
            return total

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await self._publish_total()
            except Exception:  # never let the sweeper die of one bad round
                log.exception("autoscaler demand sweep failed")


def _check_hub(hub: object) -> None:
    if not isinstance(hub, str) or not hub:
        raise ValueError(f"hub must be a non-empty string, got {hub!r}")


DemandLedger = ray.remote(DemandLedgerImpl)


def _head_node() -> str | None:
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeID"])
    return None


def find_ledger() -> Any:
    """The cluster's ledger actor, created if it does not exist yet (detached, no CPU,
    on the head node if it can run there)."""
    options: dict[str, Any] = {
        "name": LEDGER_NAME,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
    }
    head = _head_node()
    if head is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)
    return DemandLedger.options(**options).remote()


def existing_ledger() -> Any:
    """The cluster's ledger actor if one exists, else None (nothing is created)."""
    try:
        return ray.get_actor(LEDGER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
