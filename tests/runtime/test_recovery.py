"""Crash recovery of PartitionCore on LMDB: nothing committed is lost, nothing is applied twice.

A "crash" throws a core away together with its intake (messages, results and requests that
reached it but were not yet committed) and opens a new core on the same LMDB directory,
either (a) after a batch committed but before its effects were released, or (b) during a
batch whose commit fails. The workload then runs to quiescence, with clients retrying
unanswered requests and senders resending unacknowledged messages, and every instance
must complete with the right output and each activity result recorded exactly once, even
though activities may have executed more than once.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from partition_driver import Cluster, completions, make_registry

from duraray import when_all
from duraray.config import HubConfig
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec

Status = h.OrchestrationStatus


def inc(ctx, x):
    return x + 1


def double(ctx, x):
    return x * 2


def child(ctx, x):
    value = yield ctx.call_activity("inc", input=x)
    ctx.send_event(ctx.parent_instance_id, "ping", data=value)
    return value * 10


def workflow(ctx, x):
    for _ in range(3):
        x = yield ctx.call_activity("inc", input=x)
    fan = yield when_all([ctx.call_activity("double", input=x + i) for i in range(3)])
    sub = yield ctx.call_sub_orchestrator("child", input=x)
    ping = yield ctx.wait_for_external_event("ping")
    return [x, fan, sub, ping]


def ticker(ctx, state):
    generation, total = state
    yield ctx.create_timer(timedelta(seconds=10))
    total = yield ctx.call_activity("inc", input=total)
    if generation < 2:
        ctx.continue_as_new([generation + 1, total])
        return None
    return total


REGISTRY = make_registry(inc=inc, double=double, child=child, workflow=workflow, ticker=ticker)
TICKERS = 3  # each: three generations of a durable timer and an activity


def expected_output(x: int) -> list[object]:
    top = x + 3
    return [top, [2 * top, 2 * (top + 1), 2 * (top + 2)], (top + 1) * 10, top + 1]


class CrashPlan:
    """Crashes to inject from ``Cluster.run``'s batch hook: (batch, core, mode) each once."""

    def __init__(self, cluster: Cluster, crashes: list[tuple[int, int, str]]) -> None:
        self.cluster = cluster
        self.todo = sorted(crashes)
        self.done: list[tuple[int, int, str]] = []

    def __call__(self, batch: int, index: int) -> None:
        for crash in self.todo:
            at, core, mode = crash
            if at <= batch and core % self.cluster.partitions == index:
                self.todo.remove(crash)
                self.done.append(crash)
                if mode == "after":
                    self.cluster.crash_after_commit(index)
                elif mode == "before":
                    self.cluster.crash_before_commit(index)
                else:  # "kill": between batches, losing only what waits in the intake
                    self.cluster.reopen(index)
                return


def run_workload(cluster: Cluster, count: int, crashes: list[tuple[int, int, str]]) -> CrashPlan:
    """Start ``count`` workflows and the tickers, then run through the planned crashes."""
    for x in range(count):
        cluster.start("workflow", f"w{x}", x)
    for x in range(TICKERS):
        cluster.start("ticker", f"t{x}", [0, 100 * x])
    plan = CrashPlan(cluster, crashes)
    cluster.run(on_batch=plan)
    return plan


def check_exactly_once(cluster: Cluster, count: int) -> tuple[int, int]:
    """Assert the invariants; returns (activity results recorded, activity executions)."""
    recorded = 0
    for x in range(count):
        iid = f"w{x}"
        state = cluster.state(iid)
        expected_status = Status.COMPLETED
        assert expected_status == state.status, f"{iid}: {state.failure}"
        assert expected_output(x) == codec.decode(state.output)
        history = cluster.history(iid)
        (created,) = [e for e in history if isinstance(e, h.SubOrchestrationInstanceCreated)]
        pings = [e for e in history if isinstance(e, h.EventRaised) and e.name == "ping"]
        expected_pings = 1
        assert expected_pings == len(pings)
        for instance in (iid, created.instance_id):
            events = cluster.history(instance)
            scheduled = [e.event_id for e in events if isinstance(e, h.TaskScheduled)]
            expected = Counter(scheduled)  # one completion per scheduled task, no more
            assert expected == completions(events), instance
            assert all(cluster.executions[(instance, task)] >= 1 for task in scheduled)
            recorded += len(scheduled)
    for x in range(TICKERS):
        history = cluster.history(f"t{x}")  # the last generation's
        expected_total = 100 * x + 3
        assert expected_total == codec.decode(cluster.state(f"t{x}").output)
        expected_completions = Counter([1])
        assert expected_completions == completions(history)
    assert not any(core.store.count("outbox") for core in cluster.cores)
    assert not any(core.store.count("timers") for core in cluster.cores)
    assert not any(core.store.count("activities") for core in cluster.cores)
    return recorded, sum(cluster.executions.values())


def crash_schedule(
    partitions: int, mode: str, every: int, count: int
) -> list[tuple[int, int, str]]:
    """Every ``every``-th batch, rotating over the cores; "mixed" cycles through the modes."""
    modes = ["after", "before", "kill"] if mode == "mixed" else [mode]
    return [(every * (k + 1), k, modes[k % len(modes)]) for k in range(count)]


def test_workload_without_crashes_runs_each_activity_once(tmp_path):
    """Without crashes every activity executes exactly once and is recorded once."""
    with Cluster(REGISTRY, partitions=3, data_dir=tmp_path, auto_advance=True) as cluster:
        run_workload(cluster, 20, [])
        recorded, executed = check_exactly_once(cluster, 20)
    expected = 20 * 7
    assert expected == recorded
    expected_executions = expected + TICKERS * 3
    assert expected_executions == executed


@pytest.mark.parametrize("partitions", [2, 3, 4])
@pytest.mark.parametrize("mode", ["after", "before", "mixed"])
def test_crashes_lose_nothing_and_record_each_result_once(tmp_path, partitions, mode):
    """Fifty workflows survive repeated crashes: all complete, each activity result recorded once."""
    # Small batches give many batches, hence many crash points between related steps.
    config = HubConfig(max_batch_items=10)
    with Cluster(
        REGISTRY, partitions=partitions, config=config, data_dir=tmp_path, auto_advance=True
    ) as cluster:
        crashes = crash_schedule(partitions, mode, every=3, count=12)
        plan = run_workload(cluster, 50, crashes)
        recorded, executed = check_exactly_once(cluster, 50)
    expected_crashes = len(crashes)
    assert expected_crashes == len(plan.done)
    expected = 50 * 7
    assert expected == recorded
    assert executed >= recorded  # at-least-once execution, exactly-once recording


def test_lost_results_are_re_dispatched_and_executed_again(tmp_path):
    """Results lost with a crashed core's batch are re-dispatched on recovery and executed again."""
    with Cluster(REGISTRY, partitions=2, data_dir=tmp_path, auto_advance=True) as cluster:
        run_workload(cluster, 10, crash_schedule(2, "before", every=4, count=6))
        recorded, executed = check_exactly_once(cluster, 10)
    assert executed > recorded


@settings(max_examples=25, deadline=None)
@given(
    partitions=st.integers(min_value=2, max_value=4),
    crashes=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40),
            st.integers(min_value=0, max_value=3),
            st.sampled_from(["after", "before", "kill"]),
        ),
        max_size=4,
    ),
    max_batch_items=st.sampled_from([3, 100]),
)
def test_any_crash_points_keep_exactly_once(partitions, crashes, max_batch_items):
    """Whatever batch, core and side of the commit a crash hits, the invariants hold."""
    config = HubConfig(max_batch_items=max_batch_items)
    with (
        tempfile.TemporaryDirectory() as data_dir,
        Cluster(
            REGISTRY,
            partitions=partitions,
            config=config,
            data_dir=Path(data_dir),
            auto_advance=True,
        ) as cluster,
    ):
        run_workload(cluster, 6, crashes)
        check_exactly_once(cluster, 6)


# -- client operations and instance trees through crashes -----------------------------------


def waiter(ctx, n):
    got = []
    for _ in range(n):
        value = yield ctx.wait_for_external_event("e")
        got.append((yield ctx.call_activity("inc", input=value)))
    return got


FAILING: set[int] = set()


def flaky(ctx, x):
    if x in FAILING:
        raise ValueError(f"flaky({x})")
    return x


def leaf(ctx, x):
    yield ctx.create_timer(timedelta(seconds=5))
    return (yield ctx.call_activity("flaky", input=x))


def branch(ctx, x):
    return sum(
        (yield when_all([ctx.call_sub_orchestrator("leaf", input=x * 10 + i) for i in range(2)]))
    )


def tree(ctx, x):
    own = yield ctx.call_activity("flaky", input=x)
    return own + (yield ctx.call_sub_orchestrator("branch", input=x))


OPS_REGISTRY = make_registry(
    inc=inc, waiter=waiter, flaky=flaky, leaf=leaf, branch=branch, tree=tree
)
CRASHES = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=60),
        st.integers(min_value=0, max_value=3),
        st.sampled_from(["after", "before", "kill"]),
    ),
    max_size=6,
)


@settings(max_examples=25, deadline=None)
@given(
    partitions=st.integers(min_value=1, max_value=3),
    ops=st.lists(st.sampled_from(["e", "suspend", "resume"]), min_size=1, max_size=10),
    crashes=CRASHES,
    delayed=st.booleans(),
)
def test_client_operations_apply_once_through_crashes(partitions, ops, crashes, delayed):
    """A client's raise/suspend/resume calls, retried through crashes, each take effect once, in order."""
    config = HubConfig(max_batch_items=2)
    with (
        tempfile.TemporaryDirectory() as data_dir,
        Cluster(
            OPS_REGISTRY,
            partitions=partitions,
            config=config,
            data_dir=Path(data_dir),
            auto_advance=True,
        ) as cluster,
    ):
        plan = CrashPlan(cluster, crashes)
        start_at = {"start_at": cluster.now + timedelta(seconds=30)} if delayed else {}
        calls = [cluster.start("waiter", "w", ops.count("e"), **start_at)]
        cluster.run(on_batch=plan)
        for k, op in enumerate([*ops, "resume"]):  # one call at a time, like a real client
            data = {"name": "e", "data": codec.encode(k)} if op == "e" else {}
            op_name = "raise_event" if op == "e" else op
            calls.append(cluster.submit(op_name, instance_id="w", request_id=f"r{k}", **data))
            cluster.run(on_batch=plan)
        assert all(cluster.replies.get(token) for token in calls)
        state = cluster.state("w")
        expected_status = Status.COMPLETED
        assert expected_status == state.status
        expected = [k + 1 for k, op in enumerate(ops) if op == "e"]
        assert expected == codec.decode(state.output)
        assert set(completions(cluster.history("w")).values()) <= {1}


@settings(max_examples=25, deadline=None)
@given(
    partitions=st.integers(min_value=1, max_value=4),
    crashes=CRASHES,
    action=st.sampled_from(["rewind", "terminate"]),
)
def test_rewind_and_recursive_terminate_through_crashes(partitions, crashes, action):
    """Rewinding a failed tree completes it; terminating a running tree ends every member; crashes change neither."""
    FAILING.clear()
    FAILING.add(11)  # the second leaf of tree 1
    with (
        tempfile.TemporaryDirectory() as data_dir,
        Cluster(
            OPS_REGISTRY,
            partitions=partitions,
            config=HubConfig(max_batch_items=3),
            data_dir=Path(data_dir),
            auto_advance=True,
        ) as cluster,
    ):
        plan = CrashPlan(cluster, crashes)
        for x in (1, 2):
            cluster.start("tree", f"t{x}", x)
        if action == "terminate":
            with contextlib.suppress(AssertionError):  # stop mid-flight
                cluster.run(on_batch=plan, max_batches=6)
            cluster.submit("terminate", instance_id="t1", request_id="stop")
            cluster.run(on_batch=plan)
            for iid in ("t1", "t1:0001", "t1:0001:0000", "t1:0001:0001"):
                state = cluster.state(iid)
                assert state is None or state.status.is_terminal, iid
        else:
            cluster.run(on_batch=plan)
            expected_status = Status.FAILED
            assert expected_status == cluster.state("t1").status
            FAILING.clear()
            cluster.submit("rewind", instance_id="t1", request_id="again")
            cluster.run(on_batch=plan)
            expected_output = 1 + 10 + 11
            assert expected_output == cluster.output("t1")
        expected_output = 2 + 20 + 21
        assert expected_output == cluster.output("t2")
        for core in cluster.cores:
            assert not core.store.count("outbox")
            assert not core.store.count("activities")
            assert not core.store.count("timers")
