"""End to end on LMDB (data_dir on disk, fsync on): the main scenarios, and data that outlives a hub.

Restart tests close the hub mid-run (leave the ``with`` block), open a new one on the same
data dir and check that waiting instances, timers, buffered events and finished instances
all come back.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import duraray as dr
from duraray.testing import ManualClock, run_in_process

from .helpers import TIMEOUT, CallCounter, poll

app = dr.App("e2e-durable")
calls = CallCounter()

Status = dr.OrchestrationStatus


@app.activity
def plus_one(ctx: dr.ActivityContext, value: int) -> int:
    return value + 1


@app.activity
def fails_once(ctx: dr.ActivityContext, item: int) -> int:
    if item == 2 and calls.hit((ctx.orchestration_id, "failed")) == 1:
        raise RuntimeError("boom")
    calls.hit((ctx.orchestration_id, item))
    return item


release_gate = threading.Event()
entered_gate = threading.Event()


@app.activity
def gated(ctx: dr.ActivityContext, item: int) -> int:
    entered_gate.set()
    release_gate.wait(TIMEOUT)
    calls.hit((ctx.orchestration_id, "gated", item))
    return item


@app.orchestration
def gated_fan_out(ctx: dr.OrchestrationContext, count: int):
    return (yield dr.when_all([ctx.call_activity(gated, input=i) for i in range(count)]))


@app.orchestration
def chain_of_ten(ctx: dr.OrchestrationContext, start: int):
    values = [start]
    for _ in range(10):
        values.append((yield ctx.call_activity(plus_one, input=values[-1])))
    return values


@app.orchestration
def fan_out_fails_once(ctx: dr.OrchestrationContext, count: int):
    return (yield dr.when_all([ctx.call_activity(fails_once, input=i) for i in range(count)]))


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext, label=None):
    got = yield ctx.wait_for_external_event("go")
    return [label, got]


@app.orchestration
def hour_timer(ctx: dr.OrchestrationContext):
    yield ctx.create_timer(timedelta(hours=1))
    return "woke up"


@app.orchestration
def count_to(ctx: dr.OrchestrationContext, n: int):
    yield ctx.call_activity(plus_one, input=n)
    if n < 5:
        ctx.continue_as_new(n + 1)
        return None
    return n


@app.orchestration
def parent(ctx: dr.OrchestrationContext):
    return (yield ctx.call_sub_orchestrator(wait_go, input="child"))


def _hub(data_dir, clock=None, **options):
    return run_in_process(
        app, data_dir=data_dir, clock=clock or ManualClock(auto_advance=True), **options
    )


def test_chain_and_history_on_disk(data_dir):
    """Ten chained activities complete on LMDB and the history reads back."""
    with _hub(data_dir) as client:
        assert client.hub_runtime.config.fsync, "these tests run with fsync on"
        iid = client.schedule_new_orchestration(chain_of_ten, input=1)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        expected = list(range(1, 12))
        assert expected == state.output
        history = client.get_orchestration_history(iid)
        expected_completed = 10
        assert expected_completed == sum(isinstance(e, dr.TaskCompleted) for e in history)


def test_rewind_on_disk(data_dir):
    """A failed fan-out rewinds on LMDB: only the failed activity runs again."""
    with _hub(data_dir) as client:
        iid = client.schedule_new_orchestration(fan_out_fails_once, input=5)
        failed = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        expected = Status.FAILED
        assert expected == failed.runtime_status
        client.rewind_orchestration(iid)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        expected = [0, 1, 2, 3, 4]
        assert expected == state.output
        expected_counts = [1, 1, 1, 1, 1]
        assert expected_counts == [calls[(iid, i)] for i in range(5)]


def test_continue_as_new_and_purge_on_disk(data_dir):
    """continue_as_new runs five generations on LMDB; purging the instance then removes it."""
    with _hub(data_dir) as client:
        iid = client.schedule_new_orchestration(count_to, input=0)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        expected = (5, 5)
        assert expected == (state.input, state.output)
        started = [
            e for e in client.get_orchestration_history(iid) if isinstance(e, dr.ExecutionStarted)
        ]
        expected = 1
        assert expected == len(started)
        expected_purged = 1
        assert expected_purged == client.purge_orchestration(iid).deleted_instance_count
        assert client.get_orchestration_state(iid) is None


def test_query_paging_on_disk(data_dir):
    """Paging over instances stored in LMDB yields each exactly once."""
    with _hub(data_dir) as client:
        ids = [client.schedule_new_orchestration(plus_one_orch, input=i) for i in range(12)]
        for iid in ids:
            client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        seen = [s.instance_id for s in client.get_all_instances(page_size=4)]
        assert sorted(ids) == sorted(seen)


@app.orchestration
def plus_one_orch(ctx: dr.OrchestrationContext, value: int):
    return (yield ctx.call_activity(plus_one, input=value))


def test_waiting_instance_survives_a_hub_restart(data_dir):
    """An instance waiting for an event when the hub stops completes when the event arrives after reopening."""
    with _hub(data_dir) as client:
        iid = client.schedule_new_orchestration(wait_go, input="persisted", instance_id="survivor")
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    with _hub(data_dir) as client:
        state = client.get_orchestration_state("survivor")
        expected = Status.RUNNING
        assert expected == state.runtime_status
        client.raise_orchestration_event("survivor", "go", data=42)
        done = client.wait_for_orchestration_completion("survivor", timeout=TIMEOUT)
        expected_output = ["persisted", 42]
        assert expected_output == done.output


def test_finished_instances_survive_a_hub_restart(data_dir):
    """Completed instances, their output and history are still there after reopening the data dir."""
    with _hub(data_dir) as client:
        iid = client.schedule_new_orchestration(chain_of_ten, input=1, instance_id="finished")
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        history = client.get_orchestration_history(iid)
    with _hub(data_dir) as client:
        state = client.get_orchestration_state("finished")
        expected = (Status.COMPLETED, list(range(1, 12)))
        assert expected == (state.runtime_status, state.output)
        assert history == client.get_orchestration_history("finished")
        expected_ids = ["finished"]
        assert expected_ids == [s.instance_id for s in client.query_instances().items]


def test_timer_survives_a_hub_restart(data_dir):
    """A durable timer pending when the hub stops fires after reopening once its time comes."""
    start = ManualClock().now()
    with _hub(data_dir, clock=ManualClock(start)) as client:
        iid = client.schedule_new_orchestration(hour_timer, instance_id="sleeper")
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    reopened_clock = ManualClock(start)
    with _hub(data_dir, clock=reopened_clock) as client:
        expected = Status.RUNNING
        assert expected == client.get_orchestration_state("sleeper").runtime_status
        reopened_clock.advance(timedelta(hours=1))
        state = client.wait_for_orchestration_completion("sleeper", timeout=TIMEOUT)
        expected = "woke up"
        assert expected == state.output


def test_suspended_instance_and_held_event_survive_a_restart(data_dir):
    """A suspended instance keeps its held event across a restart and completes after resume."""
    with _hub(data_dir) as client:
        iid = client.schedule_new_orchestration(wait_go, input="held", instance_id="paused")
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        client.suspend_orchestration(iid)
        client.raise_orchestration_event(iid, "go", data="kept")
    with _hub(data_dir) as client:
        expected = Status.SUSPENDED
        assert expected == client.get_orchestration_state("paused").runtime_status
        client.resume_orchestration("paused")
        state = client.wait_for_orchestration_completion("paused", timeout=TIMEOUT)
        expected_output = ["held", "kept"]
        assert expected_output == state.output


def test_delayed_start_survives_a_restart(data_dir):
    """An instance scheduled with start_at stays PENDING across a restart and starts when due."""
    start = ManualClock().now()
    with _hub(data_dir, clock=ManualClock(start)) as client:
        client.schedule_new_orchestration(
            wait_go, input="late", instance_id="later", start_at=start + timedelta(minutes=10)
        )
        client.raise_orchestration_event("later", "go", data="early event")
    clock = ManualClock(start)
    with _hub(data_dir, clock=clock) as client:
        expected = Status.PENDING
        assert expected == client.get_orchestration_state("later").runtime_status
        clock.advance(timedelta(minutes=10))
        state = client.wait_for_orchestration_completion("later", timeout=TIMEOUT)
        expected = ["late", "early event"]
        assert expected == state.output


def test_parent_and_child_survive_a_restart(data_dir):
    """A parent waiting on a waiting sub-orchestration completes after a restart once the child gets its event."""
    with _hub(data_dir) as client:
        pid = client.schedule_new_orchestration(parent, instance_id="family")
        client.wait_for_orchestration_start(pid, timeout=TIMEOUT)
        # The child starts through a partition message; waiting works before it exists.
        client.wait_for_orchestration_start("family:0000", timeout=TIMEOUT)
    with _hub(data_dir) as client:
        client.raise_orchestration_event("family:0000", "go", data=7)
        state = client.wait_for_orchestration_completion("family", timeout=TIMEOUT)
        expected = ["child", 7]
        assert expected == state.output


def test_app_run_in_process_on_disk(data_dir):
    """App.run(in_process=True, data_dir=...) runs the hub on LMDB and data persists to the next run."""
    with app.run(in_process=True, data_dir=data_dir) as client:
        iid = client.schedule_new_orchestration(chain_of_ten, input=5, instance_id="via-run")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        expected = list(range(5, 16))
        assert expected == state.output
    with app.run(in_process=True, data_dir=data_dir) as client:
        assert expected == client.get_orchestration_state("via-run").output


def test_reopening_with_another_partition_count_is_refused(data_dir):
    """Opening a data dir with a different partition count raises HubConfigurationError."""
    with _hub(data_dir) as client:
        client.schedule_new_orchestration(chain_of_ten, input=1)
    with pytest.raises(dr.HubConfigurationError), _hub(data_dir, partitions=2):
        pass


def test_activities_pending_at_shutdown_run_after_reopening(data_dir):
    """Activities dispatched but not recorded when the hub stops are dispatched again after reopening."""
    with _hub(data_dir, activity_threads=1) as client:
        iid = client.schedule_new_orchestration(gated_fan_out, input=4, instance_id="interrupted")
        assert entered_gate.wait(TIMEOUT)
        # One activity runs, the rest wait in the pool, which the hub cancels on exit.
        release_gate.set()
    with _hub(data_dir) as client:
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        expected = [0, 1, 2, 3]
        assert expected == state.output
    counts = [calls[(iid, "gated", i)] for i in range(4)]
    assert all(1 <= n <= 2 for n in counts), counts


# Two versions of one hub's code: same hub name, same orchestration name, different actions.
versions_v1 = dr.App("e2e-durable-versions")
versions_v2 = dr.App("e2e-durable-versions")


@versions_v1.activity(name="step")
@versions_v2.activity(name="step")
def step(ctx: dr.ActivityContext, value: str) -> str:
    return value


@versions_v1.activity(name="other_step")
@versions_v2.activity(name="other_step")
def other_step(ctx: dr.ActivityContext, value: str) -> str:
    return value


@versions_v1.orchestration(name="versioned")
def versioned_v1(ctx: dr.OrchestrationContext):
    first = yield ctx.call_activity("step", input="a")
    go = yield ctx.wait_for_external_event("go")
    return [first, go]


@versions_v2.orchestration(name="versioned")
def versioned_v2(ctx: dr.OrchestrationContext):
    first = yield ctx.call_activity("other_step", input="a")
    go = yield ctx.wait_for_external_event("go")
    return [first, go]


def test_changed_code_fails_a_running_instance_with_non_determinism(data_dir):
    """An instance started by one version of the code fails with NonDeterminismError when replayed by a changed version."""
    with run_in_process(versions_v1, data_dir=data_dir) as client:
        iid = client.schedule_new_orchestration("versioned", instance_id="v1-instance")
        poll(
            lambda: client.get_orchestration_history(iid),
            lambda history: any(isinstance(e, dr.TaskCompleted) for e in history),
        )
    with run_in_process(versions_v2, data_dir=data_dir) as client:
        client.raise_orchestration_event(iid, "go", data=1)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = dr.OrchestrationStatus.FAILED
    assert expected == state.runtime_status
    assert state.failure_details.is_caused_by(dr.NonDeterminismError), state.failure_details
    assert "step" in state.failure_details.message
    assert "other_step" in state.failure_details.message


def test_unchanged_code_resumes_a_running_instance(data_dir):
    """The same instance resumes fine when the reopened hub runs the same code."""
    with run_in_process(versions_v1, data_dir=data_dir) as client:
        iid = client.schedule_new_orchestration("versioned", instance_id="v1-instance")
        poll(
            lambda: client.get_orchestration_history(iid),
            lambda history: any(isinstance(e, dr.TaskCompleted) for e in history),
        )
    with run_in_process(versions_v1, data_dir=data_dir) as client:
        client.raise_orchestration_event(iid, "go", data=1)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ["a", 1]
    assert expected == state.output
