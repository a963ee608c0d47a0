"""The composition root of a partition core: its components, built and wired once.

Each component owns its state and gets the others it needs here, in dependency order
(docs/ARCHITECTURE.md, "The partition core"): nothing else constructs them, and no
component reaches into another's fields. ``PartitionCore`` holds the result and runs
the batch over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.orchestrations.executor import ExecutorOptions
from duraray.runtime.engine import codec
from duraray.runtime.engine.actions import Actions
from duraray.runtime.engine.client_ops import ClientOps
from duraray.runtime.engine.clock import Clock
from duraray.runtime.engine.costs import LearnedCosts
from duraray.runtime.engine.dispatch import DispatchPlan
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.episodes import Episodes
from duraray.runtime.engine.gate import ActivityGate
from duraray.runtime.engine.instances import ExecutorFactory, InstanceTable
from duraray.runtime.engine.lifecycle import Lifecycle
from duraray.runtime.engine.outbox import Outbox
from duraray.runtime.engine.poison import ParkedItems, PoisonHandler
from duraray.runtime.engine.store import PartitionStore
from duraray.runtime.engine.timers import Timers
from duraray.runtime.engine.waits import Waits
from duraray.runtime.engine.watchdog import EpisodeWatch
from duraray.runtime.engine.work import Work


@dataclass(frozen=True, slots=True)
class Components:
    """Every component of one partition core."""

    dispatch: DispatchPlan
    gate: ActivityGate
    costs: LearnedCosts
    outbox: Outbox
    timers: Timers
    waits: Waits
    instances: InstanceTable
    entities: EntityHost
    actions: Actions
    lifecycle: Lifecycle
    episodes: Episodes
    parked: ParkedItems
    poison: PoisonHandler
    client_ops: ClientOps
    work: Work
    watch: EpisodeWatch


def executor_options(config: HubConfig) -> ExecutorOptions:
    """The replay executor's options from the hub's configuration."""
    return ExecutorOptions(
        maximum_timer_interval=config.maximum_timer_interval,
        # None (the default) is off here (on Ray: the checks cost a partition's
        # throughput); the in-process runtime turns None into True before it gets here.
        determinism_warnings=config.determinism_warnings is True,
        determinism_hook=config.determinism_warnings is True,
    )


def compose(
    *,
    hub: str,
    index: int,
    store: PartitionStore,
    registry: Registry,
    config: HubConfig,
    clock: Clock,
    counters: dict[str, float],
    dispatch: DispatchPlan | None,
    gate: ActivityGate | None,
    stats: Callable[[], dict[str, Any]],
) -> Components:
    """Build and wire the components of partition ``index`` over ``store``.

    They share ``counters``, which is changed in place and never replaced. ``dispatch``
    and ``gate`` are taken over from an earlier core of the partition (what they hold is
    memory only), else new ones are made.
    """
    if gate is None:
        gate = ActivityGate(config.max_activities_in_flight)
    # Which activities run inline, in batches or alone (see dispatch.py); its learned
    # costs are kept in ``meta`` so a restart does not start from nothing.
    if dispatch is None:
        dispatch = DispatchPlan(
            registry,
            inline=config.inline_activities,
            inline_max_s=config.inline_activity_max_ms / 1000,
        )
    outbox = Outbox(index, config.partitions, config.resend_interval, counters)
    # Reports orchestrator episodes that block the batch thread (watchdog.py).
    watch = EpisodeWatch(
        hub=hub, partition=index, threshold=config.blocking_episode_warning_s, clock=clock
    )
    timers = Timers()
    waits = Waits()
    # Payloads made inside the hub (activity inputs, outputs, custom status, sent events)
    # obey the same max_payload_bytes as the client's.
    executors = ExecutorFactory(
        registry.orchestrations,
        codec.Converter(config.max_payload_bytes),
        registry.name_of,
        executor_options(config),
    )
    instances = InstanceTable(
        store, executors, max_cached=config.max_cached_orchestrations, counters=counters
    )
    entities = EntityHost(
        store=store,
        registry=registry,
        config=config,
        outbox=outbox,
        timers=timers,
        clock=clock,
        counters=counters,
    )
    actions = Actions(index, outbox, timers, entities)
    lifecycle = Lifecycle(
        table=instances,
        actions=actions,
        outbox=outbox,
        timers=timers,
        entities=entities,
        clock=clock,
    )
    episodes = Episodes(
        config=config,
        table=instances,
        actions=actions,
        lifecycle=lifecycle,
        entities=entities,
        outbox=outbox,
        dispatch=dispatch,
        activity_names=registry.activities,
        clock=clock,
        counters=counters,
        watch=watch,
    )
    parked = ParkedItems(store, index)
    poison = PoisonHandler(
        table=instances,
        lifecycle=lifecycle,
        outbox=outbox,
        timers=timers,
        parked=parked,
        counters=counters,
    )
    client_ops = ClientOps(
        index=index,
        partitions=config.partitions,
        request_dedup_seconds=config.request_dedup_seconds,
        store=store,
        table=instances,
        episodes=episodes,
        lifecycle=lifecycle,
        entities=entities,
        timers=timers,
        waits=waits,
        counters=counters,
        stats=stats,
        parked=parked,
        watch=watch,
    )
    work = Work(
        gate=gate,
        client_ops=client_ops,
        outbox=outbox,
        timers=timers,
        table=instances,
        episodes=episodes,
        lifecycle=lifecycle,
        entities=entities,
    )
    return Components(
        dispatch=dispatch,
        gate=gate,
        costs=LearnedCosts(store, dispatch),
        outbox=outbox,
        timers=timers,
        waits=waits,
        instances=instances,
        entities=entities,
        actions=actions,
        lifecycle=lifecycle,
        episodes=episodes,
        parked=parked,
        poison=poison,
        client_ops=client_ops,
        work=work,
        watch=watch,
    )
