"""What a partition's activities ask of the cluster, told to Ray's autoscaler.

Ray's autoscaler sees pending tasks and actors, but not the activities a partition holds
back: those waiting for a slot (``max_activities_in_flight``) or for a probe of their
kind. ``Demand`` adds up the CPUs this partition's activities want, those out as
CPU-holding tasks plus those waiting, each at what the dispatch plan would route it with
(a cheap activity on the shared pool wants none), and reports the figure to the hub's
pools actor, which publishes the hub's total with ``request_resources``
(``ActivityPools.report_demand``): an autoscaling cluster grows for a large fan-out and
shrinks when it is done.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from duraray.runtime.engine.partition import PartitionCore

#: Seconds after which an unchanged demand is reported again (the pools actor may have
#: restarted and lost it).
DEMAND_REPORT_S = 30.0
#: Least seconds between two reports of a changed demand (a fan-out changes it every
#: batch; the autoscaler acts on a scale of seconds), except to or from zero.
DEMAND_MIN_INTERVAL_S = 1.0


class Demand:
    """The CPU demand of one partition's activities (see the module docstring)."""

    def __init__(self, index: int, cap: int, find_pools: Callable[[], Any]) -> None:
        self._index = index
        self._cap = cap
        self._find_pools = find_pools
        self.cpus_out = 0.0  # CPUs held by the partition's activities out as tasks
        self.tasks_out = 0  # and how many they are
        self.reported = 0
        self._reported_at = -math.inf

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
        plan = core.dispatch
        waiting = core.gate.waiting_by_name.copy()
        waiting.update(plan.held_by_name)
        room = max(0, self._cap - self.tasks_out)
        cpus = self.cpus_out
        for name, count in waiting.items():
            if room <= 0:
                break
            take = min(count, room)
            cpus += take * plan.cpus_of(name)
            room -= take
        return math.ceil(cpus)

    def report(self, core: PartitionCore, now: float) -> None:
        """Report the demand if it changed (or has not been reported for a while)."""
        demand = self.wanted(core)
        since = now - self._reported_at
        if demand == self.reported:
            if since < DEMAND_REPORT_S:
                return
        elif since < DEMAND_MIN_INTERVAL_S and demand and self.reported:
            return  # reported again soon: the idle loop or the next dispatch
        pools = self._find_pools()
        if pools is None:
            return
        pools.report_demand.remote(self._index, demand)
        self.reported, self._reported_at = demand, now
