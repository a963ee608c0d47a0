"""Backpressure on activities (engine/gate.py): at most ``max_activities_in_flight`` of a
partition out at once, the rest waiting in the partition and released round-robin."""

from __future__ import annotations

from typing import Any

import pytest
from partition_driver import make_registry

from duraray import when_all
from duraray.config import HubConfig
from duraray.orchestrations import history as h
from duraray.runtime.engine.gate import ActivityGate
from duraray.runtime.engine.records import ActivityResult, ActivityTask

Status = h.OrchestrationStatus


def _task(instance: str, task_id: int) -> ActivityTask:
    return ActivityTask(instance, "e1", task_id, "inc", None, 0)


def _result(task: ActivityTask) -> ActivityResult:
    return ActivityResult(task.instance_id, task.execution_id, task.task_id)


def test_the_gate_lets_out_at_most_its_limit_round_robin_over_instances() -> None:
    """A big fan-out and a small instance: the limit holds, and the small instance's
    activity goes out at the next free slot, not behind the whole fan-out."""
    gate = ActivityGate(limit=2)
    big = [_task("big", n) for n in range(100)]
    out = gate.admit(big, lambda task: True)
    assert [0, 1] == [t.task_id for t in out]
    assert (2, 98) == (gate.in_flight, gate.waiting)
    assert [] == gate.admit([_task("small", 0)], lambda task: True)  # no slot free
    gate.finished(_result(out[0]))
    gate.finished(_result(out[0]))  # a duplicate result frees nothing more
    [nxt] = gate.admit([], lambda task: True)
    assert ("big", 2) == (nxt.instance_id, nxt.task_id)  # big's turn came first ...
    gate.finished(_result(out[1]))
    [nxt] = gate.admit([], lambda task: True)
    assert "small" == nxt.instance_id  # ... then small's, round-robin


def test_activities_of_an_ended_instance_are_dropped_while_they_wait() -> None:
    gate = ActivityGate(limit=1)
    first, *_ = gate.admit([_task("gone", n) for n in range(5)], lambda task: True)
    gate.finished(_result(first))
    assert [] == gate.admit([], lambda task: task.instance_id != "gone")
    assert 0 == gate.waiting


def test_within_the_limit_nothing_waits() -> None:
    gate = ActivityGate(limit=10)
    tasks = [_task("i", n) for n in range(10)]
    assert tasks == gate.admit(tasks, lambda task: False)  # not even asked
    assert (10, 0) == (gate.in_flight, gate.waiting)


def inc(ctx: Any, x: int) -> int:
    return x + 1


def fan(ctx: Any, n: int) -> Any:
    return sum((yield when_all([ctx.call_activity("inc", input=i) for i in range(n)])))


def one(ctx: Any, x: int) -> Any:
    return (yield ctx.call_activity("inc", input=x))


@pytest.mark.parametrize("lmdb", [False, True], ids=["memory", "lmdb"])
def test_a_fan_out_beyond_the_limit_completes_with_the_limit_kept(cluster_factory, lmdb):
    """A fan-out of 50 with a limit of 4: never more than 4 activities out, each run
    once, the sum right; a small instance started later is served within a round; the
    waiting activities survive a restart of the partition (their rows are durable)."""
    config = HubConfig(max_activities_in_flight=4)
    cluster = cluster_factory(
        make_registry(inc=inc, fan=fan, one=one), config=config, hold_activities=True, lmdb=lmdb
    )
    cluster.start("fan", "f", 50)
    cluster.run()
    assert 4 == len(cluster.held)
    assert 46 == cluster.cores[0].stats()["activities_waiting"]
    cluster.start("one", "o", 1)
    cluster.run()
    cluster.reopen(0)  # a crash: the waiting activities are found again in the store
    cluster.held.clear()  # and those out were lost with it (recovery sends them again)
    most = 0
    for _ in range(200):
        cluster.run()
        most = max(most, len(cluster.held))
        if not cluster.held:
            break
        cluster.execute(cluster.held.pop(0))
    assert most <= 4
    assert 2 == cluster.output("o")
    assert sum(range(1, 51)) == cluster.output("f")
    assert 0 == cluster.cores[0].stats()["activities_waiting"]


def test_terminating_a_fan_out_drops_its_waiting_activities(cluster_factory):
    """Activities still waiting for a slot when their instance is terminated never run."""
    config = HubConfig(max_activities_in_flight=2)
    cluster = cluster_factory(make_registry(inc=inc, fan=fan), config=config, hold_activities=True)
    cluster.start("fan", "f", 20)
    cluster.run()
    cluster.call("terminate", instance_id="f")
    for task in list(cluster.held):
        cluster.execute(task)
    cluster.held.clear()
    cluster.run()
    assert [] == cluster.held
    assert 2 == sum(cluster.executions.values())
    assert Status.TERMINATED == cluster.state("f").status


def test_the_gate_counts_waiting_activities_by_name() -> None:
    """What the autoscaler is told waits: the count of each activity held back."""
    gate = ActivityGate(limit=1)
    tasks = [_task("i", n) for n in range(3)] + [ActivityTask("j", "e1", 0, "other", None, 0)]
    [first] = gate.admit(tasks, lambda task: True)
    assert {"inc": 2, "other": 1} == dict(gate.waiting_by_name)
    gate.finished(_result(first))
    gate.admit([], lambda task: True)
    assert 2 == sum(gate.waiting_by_name.values())


def test_slots_of_activities_that_did_not_go_out_are_given_back() -> None:
    """Released activities whose dispatch failed give their slots back: when they are
    admitted again they go out, instead of waiting behind their own slots for ever."""
    gate = ActivityGate(limit=2)
    out = gate.admit([_task("i", 0), _task("i", 1)], lambda task: True)
    gate.give_back(out)
    assert out == gate.admit(out, lambda task: True)
    assert (2, 0) == (gate.in_flight, gate.waiting)


def test_an_ended_instance_frees_its_waiting_activities_at_once(cluster_factory):
    """Terminating a fan-out whose activities wait for slots drops them from memory in
    the same batch, not one by one as slots free."""
    config = HubConfig(max_activities_in_flight=2)
    cluster = cluster_factory(make_registry(inc=inc, fan=fan), config=config, hold_activities=True)
    cluster.start("fan", "f", 30)
    cluster.run()
    assert 28 == cluster.cores[0].stats()["activities_waiting"]
    cluster.call("terminate", instance_id="f")
    assert 0 == cluster.cores[0].stats()["activities_waiting"]
    assert {} == dict(cluster.cores[0].gate.waiting_by_name)


def test_forget_keeps_the_new_generation_of_a_continue_as_new() -> None:
    gate = ActivityGate(limit=1)
    old = [ActivityTask("i", "e1", n, "inc", None, 0) for n in range(3)]
    new = [ActivityTask("i", "e2", n, "inc", None, 0) for n in range(2)]
    gate.admit(old + new, lambda task: True)
    gate.forget("i", keep_execution="e2")
    assert (2, {"inc": 2}) == (gate.waiting, dict(gate.waiting_by_name))
    gate.forget("i")
    assert (0, {}) == (gate.waiting, dict(gate.waiting_by_name))
