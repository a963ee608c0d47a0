"""A fair share of each batch (engine/lanes.py): one instance's flood of activity results
does not delay the rest of its partition."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any

import pytest
from partition_driver import execute_activity, make_registry

from duraray import when_all
from duraray.orchestrations import history as h
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.intake import IntakeItem, Request, Results
from duraray.runtime.engine.lanes import FAIR_SHARE, SHARED_WINDOW_S, ResultLane
from duraray.runtime.engine.records import ActivityResult, ClientRequest


def _results(instance: str, n: int, start: int = 0) -> Results:
    return Results([ActivityResult(instance, "e1", task_id) for task_id in range(start, start + n)])


def _batch(mono: float) -> Batch:
    return Batch(now=datetime(2026, 1, 1, tzinfo=UTC), mono=mono)


def _drain(
    lane: ResultLane, intake: deque[IntakeItem], mono: float, limit: int = 5000
) -> list[Any]:
    """What one batch applies: (instance, task id) of results, or the item itself."""
    applied: list[Any] = []

    def apply(b: Batch, item: IntakeItem) -> None:
        if isinstance(item, Results):
            applied.extend((r.instance_id, r.task_id) for r in item.results)
        else:
            applied.append(item)

    taken: list[IntakeItem] = []
    count = lane.drain(_batch(mono), intake, apply, taken, limit)
    assert count == len(applied)
    return applied


def test_alone_a_flood_takes_whole_batches() -> None:
    """Nobody else has work: a fan-out's results are applied as they come, up to the
    batch limit (counted per result); the rest wait, first in line for the next batch."""
    lane = ResultLane()
    intake: deque[IntakeItem] = deque([_results("big", 300), _results("big", 300, 300)])
    assert 500 == len(_drain(lane, intake, mono=0.0, limit=500))
    assert (100, 0) == (len(lane), len(intake))
    assert [("big", n) for n in range(500, 600)] == _drain(lane, intake, mono=0.001, limit=500)
    assert 0 == len(lane)


def test_shared_a_flood_gets_its_share_and_the_rest_is_applied_at_once() -> None:
    """A small instance's result and a client request queued behind 1,000 results of a
    fan-out are applied in the next batch; the fan-out gets FAIR_SHARE per batch, in
    arrival order, until it is through."""
    lane = ResultLane()
    request = Request(ClientRequest("get_state", {"instance_id": "x"}))
    _drain(lane, deque([_results("small", 1)]), mono=0.0)  # someone else is active
    intake: deque[IntakeItem] = deque([_results("big", 1000), _results("small", 1, 1), request])
    first = _drain(lane, intake, mono=0.001)
    assert [("big", n) for n in range(FAIR_SHARE)] + [("small", 1), request] == first
    assert 1000 - FAIR_SHARE == len(lane)
    order: list[Any] = []
    mono = 0.002
    while len(lane):
        got = _drain(lane, intake, mono=mono)
        assert len(got) <= FAIR_SHARE
        order += got
        mono += 0.001
    assert [("big", n) for n in range(FAIR_SHARE, 1000)] == order


def test_held_results_go_before_newer_ones_of_the_same_instance() -> None:
    lane = ResultLane()
    _drain(lane, deque([Request(ClientRequest("get_state", {}))]), mono=0.0)
    _drain(lane, deque([_results("big", FAIR_SHARE + 5)]), mono=0.001)
    got = _drain(lane, deque([_results("big", 3, FAIR_SHARE + 5)]), mono=0.002)
    assert [("big", n) for n in range(FAIR_SHARE, FAIR_SHARE + 8)] == got


def test_a_partition_stops_counting_as_shared_when_only_the_flood_is_left() -> None:
    lane = ResultLane()
    _drain(lane, deque([_results("small", 1)]), mono=0.0)
    assert FAIR_SHARE == len(_drain(lane, deque([_results("big", 500)]), mono=0.001))
    # Only the flood had work since: past the window, whole batches again.
    assert 500 - FAIR_SHARE == len(_drain(lane, deque(), mono=0.001 + SHARED_WINDOW_S))


def fan(ctx: Any, n: int) -> Any:
    return sum((yield when_all([ctx.call_activity("inc", input=i) for i in range(n)])))


def one(ctx: Any, x: int) -> Any:
    return (yield ctx.call_activity("inc", input=x))


def inc(ctx: Any, x: int) -> int:
    return x + 1


@pytest.mark.parametrize("lmdb", [False, True], ids=["memory", "lmdb"])
def test_a_small_instance_is_served_while_a_flood_is_held_and_a_crash_loses_nothing(
    cluster_factory, lmdb
):
    """With its results delivered all at once, a 600-activity fan-out is held back to its
    share per batch; a small instance started meanwhile completes before the fan-out does;
    a crash while results are held runs their activities again, and the sums come out
    right."""
    cluster = cluster_factory(
        make_registry(inc=inc, fan=fan, one=one), hold_activities=True, lmdb=lmdb
    )
    cluster.start("fan", "f", 600)
    cluster.run()
    core = cluster.cores[0]
    tasks, cluster.held[:] = list(cluster.held), []
    assert 600 == len(tasks)
    cluster.start("one", "o", 1)
    cluster.run()  # the small instance's start: the partition counts as shared
    core.submit_activity_results([execute_activity(cluster.registry, t) for t in tasks])
    [small] = cluster.held
    cluster.execute(small)
    cluster.held.clear()
    cluster.batch(0)
    assert 600 - FAIR_SHARE == core.stats()["results_held"]  # the flood held back ...
    assert h.OrchestrationStatus.COMPLETED == core.instances.get_record("o").status  # not o
    assert 2 == cluster.output("o")
    cluster.reopen(0)  # a crash: held results are lost, their activities run again
    for _ in range(50):
        cluster.run()
        if not cluster.held:
            break
        for task in list(cluster.held):
            cluster.execute(task)
        cluster.held.clear()
    assert sum(range(1, 601)) == cluster.output("f")
    assert 0 == cluster.cores[0].stats()["results_held"]


def test_many_held_instances_never_shut_the_intake_out() -> None:
    """With more flooding instances than a batch has shares for, held results take at
    most half a batch, in turns; a request behind them is applied in the next batch."""
    lane = ResultLane()
    request = Request(ClientRequest("get_state", {"instance_id": "x"}))
    _drain(lane, deque([Request(ClientRequest("get_state", {}))]), mono=0.0)
    floods: deque[IntakeItem] = deque(_results(f"big{i}", 300) for i in range(400))
    _drain(lane, floods, mono=0.001, limit=5000)
    assert len(lane) > 5000
    served = _drain(lane, deque([request]), mono=0.002, limit=5000)
    assert request in served
    assert len(served) <= 5000 // 2 + 1
    # Every instance gets its turn: the next batch starts where this one stopped.
    turns = {iid for iid, _ in (x for x in served if isinstance(x, tuple))}
    later = _drain(lane, deque(), mono=0.003, limit=5000)
    assert later[0][0] not in turns
