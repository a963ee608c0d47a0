"""A partition's demand reports without a cluster: what reaches the pools actor, and when
(``runtime/ray/demand.py``), with explicit clock readings."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

from duraray.runtime.ray.demand import DEMAND_MIN_INTERVAL_S, Demand


class FakePools:
    def __init__(self) -> None:
        self.reports: list[int] = []
        self.report_demand = SimpleNamespace(remote=lambda index, cpus: self.reports.append(cpus))


def _core(waiting: Counter[str]) -> Any:
    # One CPU for each waiting activity: what the dispatch plan says of a CPU-bound one.
    return SimpleNamespace(
        dispatch=SimpleNamespace(cpus_of=lambda name: 1.0),
        gate=SimpleNamespace(waiting_by_name=waiting),
    )


def test_a_backlog_after_a_report_of_zero_is_reported_by_the_idle_loop() -> None:
    """Reported 0; a backlog comes within a second and no batch follows (its activities
    wait for CPUs the cluster lacks): the next idle pass reports it."""
    pools = FakePools()
    demand = Demand(0, cap=10, find_pools=lambda: pools)
    waiting: Counter[str] = Counter()
    core = _core(waiting)
    demand.report(core, 100.0)
    assert [0] == pools.reports
    waiting["crunch"] = 4
    demand.report(core, 100.0 + DEMAND_MIN_INTERVAL_S / 2)  # after its batch: too soon
    assert [0] == pools.reports
    demand.report_idle(core, 100.0 + 1.5 * DEMAND_MIN_INTERVAL_S)
    assert [0, 4] == pools.reports


def test_an_idle_partition_with_nothing_to_say_calls_nobody() -> None:
    pools = FakePools()
    demand = Demand(0, cap=10, find_pools=lambda: pools)
    core = _core(Counter())
    demand.report_idle(core, 100.0)  # never reported: it says 0 once
    for t in range(1, 200):
        demand.report_idle(core, 100.0 + t)
    assert [0] == pools.reports


def test_an_idle_pass_never_fails_the_partition() -> None:
    class Broken:
        @property
        def waiting_by_name(self) -> Any:
            raise RuntimeError("boom")

    demand = Demand(0, cap=10, find_pools=FakePools)
    demand.reported = 0
    core = SimpleNamespace(dispatch=SimpleNamespace(cpus_of=lambda name: 1.0), gate=Broken())
    demand.report_idle(core, 100.0)  # logged, not raised
