"""What a partition's activities ask of the cluster, told to Ray's autoscaler.

Ray's autoscaler sees pending tasks and actors, but not the activities a partition holds
back: those waiting for a slot (``max_activities_in_flight``) or for a probe of their
kind. ``Demand`` adds up the CPUs this partition's activities want, those out as
CPU-holding tasks plus those waiting, each at what the dispatch plan would route it with
(a cheap activity on the shared pool wants none), and reports the figure to the hub's
pools actor, which reports the hub's total to the cluster's demand ledger
(``ActivityPools.report_demand``, ``ledger.py``), which publishes the sum over all hubs
with ``request_resources``: an autoscaling cluster grows for a large fan-out of CPU-bound
activities and shrinks when it is done. An unchanged figure is reported again every
``DEMAND_REPORT_S``, which keeps it from lapsing in the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import structlog

from duraray.runtime.engine.partition import PartitionCore

#: Seconds after which an unchanged demand is reported again (the pools actor may have
#: restarted and lost it).
DEMAND_REPORT_S = 30.0

log = structlog.get_logger("duraray.partition")
#: Least seconds between two reports of a changed demand (a fan-out changes it every
#: batch; the autoscaler acts on a scale of seconds).
DEMAND_MIN_INTERVAL_S = 1.0


class Demand:
    """The CPU demand of one partition's activities (see the module docstring)."""

    def __init__(self, index: int, cap: int, find_pools: Callable[[], Any]) -> None:
        self._index = index
        self._cap = cap
        self._find_pools = find_pools
        self.cpus_out = 0.0  # CPUs held by the partition's activities out as tasks
        self.tasks_out = 0  # and how many they are
        #: the demand last reported (None: none yet, so the first report always goes out:
        #: an earlier process of this partition may have left another figure published)
        self.reported: int | None = None
        self._reported_at = -math.inf
        self._no_pools_until = -math.inf  # no pools actor found: look again after this

    def task_started(self, cpus: float) -> None:
        """An activity went out as a task holding ``cpus``."""
        self.cpus_out += cpus
        self.tasks_out += 1

    def task_done(self, cpus: float, _job: object = None) -> None:
        """That task ended (a done-callback: the job is ignored)."""
        self.cpus_out = max(0.0, self.cpus_out - cpus)
        self.tasks_out = max(0, self.tasks_out - 1)

    def wanted(self, core: PartitionCore) -> int:
        """CPUs wanted now: those of the activities out as tasks, plus those of the
        waiting ones at their routes, counting at most ``max_activities_in_flight``
        activities in all (what the partition could have out at once)."""
        # Runs on the actor's event loop between batches, never during one: what it reads
        # does not change under it. Activities held for a probe count nothing (their cost,
        # CPU-bound or not, is unknown until a probe reports).
        plan = core.dispatch
        waiting = core.gate.waiting_by_name
        room = max(0, self._cap - self.tasks_out)
        cpus = self.cpus_out
        for name, count in waiting.items():
            if room <= 0:
                break
            take = min(count, room)
            cpus += take * plan.cpus_of(name)
            room -= take
        return math.ceil(cpus)

    def report_idle(self, core: PartitionCore, now: float) -> None:
        """The partition is idle: report if a figure other than 0 was published (the
        backlog may be gone: the autoscaler may shrink the cluster) or never reported,
        or if a backlog is waiting that was not reported (its change came within
        ``DEMAND_MIN_INTERVAL_S`` of the last report and no batch followed: all of it
        waits for CPUs the cluster lacks, which the autoscaler must see)."""
        try:
            if self.reported == 0 and not self.wanted(core):
                return  # idle and nothing to say: no call at all
        except Exception:
            log.warning("autoscaler demand not reported", exc_info=True)
            return
        self.report(core, now)

    def report(self, core: PartitionCore, now: float) -> None:
        """Report the demand if it changed (at most once a second: the autoscaler acts
        on a scale of seconds, and the idle loop reports what is left over) or has not
        been reported for a while. A hint: nothing here may fail the partition."""
        try:
            demand = self.wanted(core)
            since = now - self._reported_at
            if demand == self.reported:
                if since < DEMAND_REPORT_S:
                    return
            elif since < DEMAND_MIN_INTERVAL_S:
                return
            if now < self._no_pools_until:
                return
            pools = self._find_pools()
            if pools is None:
                # Not started yet (the hub launches it once the partitions answer).
                self._no_pools_until = now + DEMAND_MIN_INTERVAL_S
                return
            pools.report_demand.remote(self._index, demand)
            self.reported, self._reported_at = demand, now
        except Exception:
            log.warning("autoscaler demand not reported", exc_info=True)
