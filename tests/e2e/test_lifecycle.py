"""End to end: suspend, resume, terminate, rewind, restart and purge of instances."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import duraray as dr

from .helpers import TIMEOUT, CallCounter, poll

app = dr.App("e2e-lifecycle")
calls = CallCounter()

Status = dr.OrchestrationStatus


@app.activity
def fails_once(ctx: dr.ActivityContext, item: int) -> int:
    """Item 3 fails on its first execution in each orchestration, then succeeds."""
    count = calls.hit((ctx.orchestration_id, item))
    if item == 3 and count == 1:
        raise RuntimeError(f"item {item} failed once")
    return item * 10


class Gate:
    """Lets a test hold an activity mid-execution: ``entered`` is set when it starts."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


gates: dict[str, Gate] = {}


@app.activity
def gated(ctx: dr.ActivityContext, value: int) -> int:
    gate = gates[ctx.orchestration_id]
    gate.entered.set()
    gate.release.wait(TIMEOUT)
    calls.hit((ctx.orchestration_id, "gated"))
    return value


@app.activity
def fails_three_times(ctx: dr.ActivityContext) -> str:
    count = calls.hit((ctx.orchestration_id, "flaky"))
    if count <= 3:
        raise RuntimeError(f"attempt {count} failed")
    return f"attempt {count}"


@app.orchestration
def through_the_gate(ctx: dr.OrchestrationContext, value: int):
    return (yield ctx.call_activity(gated, input=value))


@app.orchestration
def retried_then_failed(ctx: dr.OrchestrationContext):
    policy = dr.RetryPolicy(timedelta(seconds=1), 3)
    return (yield ctx.call_activity(fails_three_times, retry_policy=policy))


@app.orchestration
def grandparent(ctx: dr.OrchestrationContext):
    return (yield ctx.call_sub_orchestrator(parent_of_waiter))


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext, label=None):
    calls.hit((ctx.instance_id, "runs"))
    got = yield ctx.wait_for_external_event("go")
    return [label, got]


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value):
    calls.hit((ctx.instance_id, "runs"))
    return value


@app.orchestration
def fail_now(ctx: dr.OrchestrationContext):
    raise RuntimeError("failed on purpose")


@app.orchestration
def wait_timer(ctx: dr.OrchestrationContext):
    yield ctx.create_timer(timedelta(minutes=1))
    return "timer fired"


@app.orchestration
def parent_of_waiter(ctx: dr.OrchestrationContext):
    return (yield ctx.call_sub_orchestrator(wait_go, input="child"))


@app.orchestration
def parent_of_echo(ctx: dr.OrchestrationContext):
    return (yield ctx.call_sub_orchestrator(echo, input="child output"))


@app.orchestration
def fan_out_fails_once(ctx: dr.OrchestrationContext):
    return (yield dr.when_all([ctx.call_activity(fails_once, input=i) for i in range(5)]))


@app.orchestration
def sequence_fails_once(ctx: dr.OrchestrationContext):
    first = yield ctx.call_activity(fails_once, input=1)
    second = yield ctx.call_activity(fails_once, input=3)
    third = yield ctx.call_activity(fails_once, input=4)
    return [first, second, third]


@app.orchestration
def parent_of_fan_out(ctx: dr.OrchestrationContext):
    return (yield ctx.call_sub_orchestrator(fan_out_fails_once))


@app.activity
def fails_first_time(ctx: dr.ActivityContext) -> str:
    if calls.hit((ctx.orchestration_id, "first-time")) == 1:
        raise RuntimeError("first time fails")
    return "second time works"


@app.orchestration
def parent_fails_while_child_runs(ctx: dr.OrchestrationContext):
    child_task = ctx.call_sub_orchestrator(wait_go, input="child")
    mine = yield ctx.call_activity(fails_first_time)
    return [mine, (yield child_task)]


def _child_of(parent: str) -> str:
    # The deterministic default id of the first sub-orchestration a parent calls.
    return f"{parent}:0000"


def _wait_exists(client: dr.Client, iid: str) -> dr.OrchestrationState:
    return poll(lambda: client.get_orchestration_state(iid), lambda s: s is not None)


# -- suspend / resume ---------------------------------------------------------------------


def test_suspend_holds_events_until_resume(client):
    """A suspended instance is SUSPENDED, applies an event raised meanwhile only after resume, then completes."""
    iid = client.schedule_new_orchestration(wait_go, input="s")
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    client.suspend_orchestration(iid, reason="maintenance")
    expected = Status.SUSPENDED
    assert expected == client.get_orchestration_state(iid).runtime_status
    client.raise_orchestration_event(iid, "go", data="held")
    with pytest.raises(TimeoutError):
        client.wait_for_orchestration_completion(iid, timeout=0.3)
    assert expected == client.get_orchestration_state(iid).runtime_status
    raised = [e for e in client.get_orchestration_history(iid) if isinstance(e, dr.EventRaised)]
    expected = []
    assert expected == raised
    client.resume_orchestration(iid, reason="done")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_output = ["s", "held"]
    assert expected_output == state.output
    kinds = [type(e).__name__ for e in client.get_orchestration_history(iid)]
    assert kinds.index("ExecutionSuspended") < kinds.index("ExecutionResumed")
    assert kinds.index("ExecutionResumed") < kinds.index("EventRaised")


def test_suspend_holds_a_due_timer_until_resume(manual_client, manual_clock):
    """A timer that falls due while the instance is suspended is applied only after resume."""
    iid = manual_client.schedule_new_orchestration(wait_timer)
    manual_client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    manual_client.suspend_orchestration(iid)
    manual_clock.advance(timedelta(minutes=2))
    assert manual_client.hub_runtime.wait_idle(TIMEOUT)
    expected = Status.SUSPENDED
    assert expected == manual_client.get_orchestration_state(iid).runtime_status
    manual_client.resume_orchestration(iid)
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_output = "timer fired"
    assert expected_output == state.output


def test_suspend_and_resume_are_idempotent(client):
    """Suspending a suspended instance and resuming a running one change nothing."""
    iid = client.schedule_new_orchestration(wait_go)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    client.resume_orchestration(iid)
    expected = Status.RUNNING
    assert expected == client.get_orchestration_state(iid).runtime_status
    client.suspend_orchestration(iid)
    client.suspend_orchestration(iid)
    history = client.get_orchestration_history(iid)
    expected = 1
    assert expected == sum(isinstance(e, dr.ExecutionSuspended) for e in history)
    client.resume_orchestration(iid)
    client.raise_orchestration_event(iid, "go", data=1)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)


def test_suspend_of_finished_or_unknown_instance(client):
    """Suspending a completed instance raises InstanceStateError; an unknown one InstanceNotFoundError."""
    iid = client.schedule_new_orchestration(echo, input=1)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    with pytest.raises(dr.InstanceStateError):
        client.suspend_orchestration(iid)
    with pytest.raises(dr.InstanceStateError):
        client.resume_orchestration(iid)
    with pytest.raises(dr.InstanceNotFoundError):
        client.suspend_orchestration("missing")
    with pytest.raises(dr.InstanceNotFoundError):
        client.resume_orchestration("missing")


def test_activity_result_during_suspension_is_held(client):
    """An activity that finishes while its instance is suspended is applied only after resume."""
    iid = "gated-suspend"
    gates[iid] = Gate()
    client.schedule_new_orchestration(through_the_gate, input=3, instance_id=iid)
    assert gates[iid].entered.wait(TIMEOUT)
    client.suspend_orchestration(iid)
    gates[iid].release.set()
    poll(lambda: calls[(iid, "gated")], lambda n: n == 1)
    assert client.hub_runtime.wait_idle(TIMEOUT)
    state = client.get_orchestration_state(iid)
    expected = (Status.SUSPENDED, None)
    assert expected == (state.runtime_status, state.output)
    client.resume_orchestration(iid)
    done = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_done = (Status.COMPLETED, 3)
    assert expected_done == (done.runtime_status, done.output)


def test_suspend_before_a_delayed_start(manual_client, manual_clock):
    """An instance suspended while PENDING does not start when due; resume then starts it."""
    due = manual_clock.now() + timedelta(minutes=1)
    iid = manual_client.schedule_new_orchestration(echo, input="x", start_at=due)
    manual_client.suspend_orchestration(iid)
    manual_clock.advance(timedelta(minutes=2))
    assert manual_client.hub_runtime.wait_idle(TIMEOUT)
    expected = Status.SUSPENDED
    assert expected == manual_client.get_orchestration_state(iid).runtime_status
    expected = 0
    assert expected == calls[(iid, "runs")]
    manual_client.resume_orchestration(iid)
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_output = "x"
    assert expected_output == state.output


def test_suspend_and_resume_before_a_delayed_start(manual_client, manual_clock):
    """An instance suspended and resumed before its start time is PENDING again and starts when due."""
    due = manual_clock.now() + timedelta(minutes=1)
    iid = manual_client.schedule_new_orchestration(echo, input="y", start_at=due)
    manual_client.suspend_orchestration(iid)
    manual_client.resume_orchestration(iid)
    expected = Status.PENDING
    assert expected == manual_client.get_orchestration_state(iid).runtime_status
    manual_clock.advance(timedelta(minutes=1))
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_output = "y"
    assert expected_output == state.output


# -- terminate ----------------------------------------------------------------------------


def test_terminate_with_output(client):
    """Terminating a waiting instance with output "reason" makes it TERMINATED with serialized output '"reason"'."""
    iid = client.schedule_new_orchestration(wait_go)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    client.terminate_orchestration(iid, output="reason")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.TERMINATED
    assert expected == state.runtime_status
    expected_output = '"reason"'
    assert expected_output == state.serialized_output
    assert any(isinstance(e, dr.ExecutionTerminated) for e in client.get_orchestration_history(iid))
    with pytest.raises(dr.InstanceStateError):
        client.raise_orchestration_event(iid, "go")


def test_terminating_a_terminal_instance_is_a_no_op(client):
    """Terminating an instance that already completed changes neither its status nor its output."""
    iid = client.schedule_new_orchestration(echo, input="kept")
    before = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    client.terminate_orchestration(iid, output="too late")
    after = client.get_orchestration_state(iid)
    expected = (Status.COMPLETED, "kept", before.last_updated_at)
    assert expected == (after.runtime_status, after.output, after.last_updated_at)


def test_terminate_with_unserializable_output_is_rejected(client):
    """A termination output msgpack cannot carry raises SerializationError and the instance keeps running."""
    iid = client.schedule_new_orchestration(wait_go)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    with pytest.raises(dr.SerializationError):
        client.terminate_orchestration(iid, output=object())
    expected = Status.RUNNING
    assert expected == client.get_orchestration_state(iid).runtime_status


def test_terminate_unknown_instance(client):
    """Terminating an unknown instance raises InstanceNotFoundError."""
    with pytest.raises(dr.InstanceNotFoundError):
        client.terminate_orchestration("missing")


def test_terminate_a_suspended_instance(client):
    """Terminating a suspended instance terminates it."""
    iid = client.schedule_new_orchestration(wait_go)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    client.suspend_orchestration(iid)
    client.terminate_orchestration(iid, output="stop")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = (Status.TERMINATED, "stop")
    assert expected == (state.runtime_status, state.output)


def test_recursive_terminate_reaches_the_sub_orchestration(client):
    """Terminating a parent (recursive by default) also terminates its running sub-orchestration."""
    parent = client.schedule_new_orchestration(parent_of_waiter)
    child = _child_of(parent)
    client.wait_for_orchestration_start(_wait_exists(client, child).instance_id, timeout=TIMEOUT)
    client.terminate_orchestration(parent, output="all of it")
    expected = Status.TERMINATED
    assert (
        expected == client.wait_for_orchestration_completion(parent, timeout=TIMEOUT).runtime_status
    )
    child_state = client.wait_for_orchestration_completion(child, timeout=TIMEOUT)
    assert expected == child_state.runtime_status
    expected_output = "all of it"
    assert expected_output == child_state.output


def test_recursive_terminate_reaches_grandchildren(client):
    """A recursive terminate walks down every level of running sub-orchestrations."""
    top = client.schedule_new_orchestration(grandparent)
    middle = _child_of(top)
    bottom = _child_of(middle)
    client.wait_for_orchestration_start(bottom, timeout=TIMEOUT)
    client.terminate_orchestration(top)
    expected = [Status.TERMINATED] * 3
    assert expected == [
        client.wait_for_orchestration_completion(i, timeout=TIMEOUT).runtime_status
        for i in (top, middle, bottom)
    ]


def test_activity_result_after_terminate_is_ignored(client):
    """An activity finishing after its instance was terminated does not change the instance."""
    iid = "gated-terminate"
    gates[iid] = Gate()
    client.schedule_new_orchestration(through_the_gate, input=3, instance_id=iid)
    assert gates[iid].entered.wait(TIMEOUT)
    client.terminate_orchestration(iid, output="stopped")
    gates[iid].release.set()
    poll(lambda: calls[(iid, "gated")], lambda n: n == 1)
    assert client.hub_runtime.wait_idle(TIMEOUT)
    state = client.get_orchestration_state(iid)
    expected = (Status.TERMINATED, "stopped")
    assert expected == (state.runtime_status, state.output)
    history = client.get_orchestration_history(iid)
    assert not any(isinstance(e, dr.TaskCompleted) for e in history)


def test_non_recursive_terminate_leaves_the_child_running(client):
    """terminate_orchestration(recursive=False) terminates the parent only."""
    parent = client.schedule_new_orchestration(parent_of_waiter)
    child = _child_of(parent)
    client.wait_for_orchestration_start(_wait_exists(client, child).instance_id, timeout=TIMEOUT)
    client.terminate_orchestration(parent, recursive=False)
    client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = Status.RUNNING
    assert expected == client.get_orchestration_state(child).runtime_status
    client.raise_orchestration_event(child, "go", data=5)
    state = client.wait_for_orchestration_completion(child, timeout=TIMEOUT)
    expected_output = ["child", 5]
    assert expected_output == state.output
    expected = Status.TERMINATED
    assert expected == client.get_orchestration_state(parent).runtime_status


def test_terminated_sub_orchestration_fails_the_parent_task(client):
    """Terminating a child alone surfaces in the parent as a failed sub-orchestration task."""
    parent = client.schedule_new_orchestration(parent_of_waiter)
    child = _child_of(parent)
    client.wait_for_orchestration_start(_wait_exists(client, child).instance_id, timeout=TIMEOUT)
    client.terminate_orchestration(child)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status
    assert "terminated" in state.failure_details.message


# -- restart ------------------------------------------------------------------------------


def test_restart_reruns_with_the_original_input(client):
    """restart_orchestration re-runs a completed instance under the same id with its original input."""
    iid = client.schedule_new_orchestration(echo, input={"n": 1}, tags={"k": "v"}, version="3")
    first = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    returned = client.restart_orchestration(iid)
    assert iid == returned
    second = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ({"n": 1}, {"k": "v"}, "3")
    assert expected == (second.output, second.tags, second.version)
    expected = 2
    assert expected == calls[(iid, "runs")]
    assert second.created_at >= first.created_at


def test_restart_with_new_instance_id(client):
    """restart_with_new_instance_id=True returns a new id that runs with the same input."""
    iid = client.schedule_new_orchestration(echo, input="again")
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    new_id = client.restart_orchestration(iid, restart_with_new_instance_id=True)
    assert new_id != iid
    state = client.wait_for_orchestration_completion(new_id, timeout=TIMEOUT)
    expected = ("again", "echo")
    assert expected == (state.output, state.name)
    expected = Status.COMPLETED
    assert expected == client.get_orchestration_state(iid).runtime_status


def test_restart_of_a_parent_reruns_its_child(client):
    """Restarting a completed parent replaces its finished child under the same default id."""
    parent = client.schedule_new_orchestration(parent_of_echo)
    client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    client.restart_orchestration(parent)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = "child output"
    assert expected == state.output
    expected = 2
    assert expected == calls[(_child_of(parent), "runs")]


def test_restart_of_a_failed_instance(client):
    """A FAILED instance can be restarted; it runs its code again."""
    iid = client.schedule_new_orchestration(fail_now)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    client.restart_orchestration(iid)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status


def test_restart_of_running_or_unknown_instance_is_rejected(client):
    """Restarting a running instance raises InstanceStateError; an unknown id InstanceNotFoundError."""
    iid = client.schedule_new_orchestration(wait_go)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    with pytest.raises(dr.InstanceStateError):
        client.restart_orchestration(iid)
    with pytest.raises(dr.InstanceNotFoundError):
        client.restart_orchestration("missing")
    expected = 1
    assert expected == calls[(iid, "runs")]


# -- rewind -------------------------------------------------------------------------------


def test_rewind_reruns_only_the_failed_activity_of_a_fan_out(client):
    """Rewinding a FAILED fan-out re-runs only the activity that failed, and the instance completes."""
    iid = client.schedule_new_orchestration(fan_out_fails_once)
    failed = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == failed.runtime_status
    client.rewind_orchestration(iid, reason="fixed")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_state = (Status.COMPLETED, [0, 10, 20, 30, 40])
    assert expected_state == (state.runtime_status, state.output)
    expected_counts = {0: 1, 1: 1, 2: 1, 3: 2, 4: 1}
    assert expected_counts == {i: calls[(iid, i)] for i in range(5)}
    assert state.failure_details is None
    assert any(isinstance(e, dr.ExecutionRewound) for e in client.get_orchestration_history(iid))


def test_rewind_of_a_sequence_resumes_after_the_last_success(client):
    """Rewinding a failed sequence re-runs the failed step and continues; earlier steps do not re-run."""
    iid = client.schedule_new_orchestration(sequence_fails_once)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    client.rewind_orchestration(iid)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = [10, 30, 40]
    assert expected == state.output
    expected_counts = {1: 1, 3: 2, 4: 1}
    assert expected_counts == {i: calls[(iid, i)] for i in (1, 3, 4)}


def test_rewind_reaches_a_failed_sub_orchestration(client):
    """Rewinding a parent whose child failed rewinds the child, and both complete."""
    parent = client.schedule_new_orchestration(parent_of_fan_out)
    child = _child_of(parent)
    failed = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == failed.runtime_status
    assert expected == client.get_orchestration_state(child).runtime_status
    client.rewind_orchestration(parent)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected_output = [0, 10, 20, 30, 40]
    assert expected_output == state.output
    expected = Status.COMPLETED
    assert expected == client.get_orchestration_state(child).runtime_status
    expected_counts = {0: 1, 1: 1, 2: 1, 3: 2, 4: 1}
    assert expected_counts == {i: calls[(child, i)] for i in range(5)}


def test_rewind_after_exhausted_retries(client):
    """Rewinding an instance whose retries ran out runs the activity again and completes."""
    iid = client.schedule_new_orchestration(retried_then_failed)
    failed = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == failed.runtime_status
    expected = 3
    assert expected == calls[(iid, "flaky")]
    client.rewind_orchestration(iid)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = (Status.COMPLETED, "attempt 4")
    assert expected == (state.runtime_status, state.output)


def test_rewind_hears_from_a_child_that_finished_after_the_parent_failed(client):
    """A child that completes after its parent failed reports again when the parent is rewound."""
    parent = client.schedule_new_orchestration(parent_fails_while_child_runs)
    child = _child_of(parent)
    failed = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == failed.runtime_status
    client.raise_orchestration_event(child, "go", data="late")
    client.wait_for_orchestration_completion(child, timeout=TIMEOUT)
    client.rewind_orchestration(parent)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = (Status.COMPLETED, ["second time works", ["child", "late"]])
    assert expected == (state.runtime_status, state.output)
    expected = 1
    assert expected == calls[(child, "runs")]


def test_rewind_of_a_parent_whose_child_was_terminated_fails_again(client):
    """Rewinding a parent whose child was terminated cannot revive the child: the parent fails again instead of hanging."""
    parent = client.schedule_new_orchestration(parent_of_waiter)
    child = _child_of(parent)
    client.wait_for_orchestration_start(child, timeout=TIMEOUT)
    client.terminate_orchestration(child)
    client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    client.rewind_orchestration(parent)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status
    assert "cannot be rewound" in state.failure_details.message
    expected = Status.TERMINATED
    assert expected == client.get_orchestration_state(child).runtime_status


def test_rewind_of_a_terminated_instance_is_rejected(client):
    """Only FAILED instances can be rewound: a TERMINATED one raises InstanceStateError."""
    iid = client.schedule_new_orchestration(wait_go)
    client.terminate_orchestration(iid)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    with pytest.raises(dr.InstanceStateError):
        client.rewind_orchestration(iid)


def test_rewind_of_completed_or_unknown_instance_is_rejected(client):
    """Rewinding a COMPLETED instance raises InstanceStateError; an unknown id InstanceNotFoundError."""
    iid = client.schedule_new_orchestration(echo, input=1)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    with pytest.raises(dr.InstanceStateError):
        client.rewind_orchestration(iid)
    with pytest.raises(dr.InstanceNotFoundError):
        client.rewind_orchestration("missing")
    running = client.schedule_new_orchestration(wait_go)
    client.wait_for_orchestration_start(running, timeout=TIMEOUT)
    with pytest.raises(dr.InstanceStateError):
        client.rewind_orchestration(running)


# -- purge --------------------------------------------------------------------------------


def test_purge_of_a_completed_instance(client):
    """Purging a completed instance deletes one instance; its state is then None."""
    iid = client.schedule_new_orchestration(echo, input=1)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    result = client.purge_orchestration(iid)
    expected = dr.PurgeResult(deleted_instance_count=1)
    assert expected == result
    assert client.get_orchestration_state(iid) is None
    with pytest.raises(dr.InstanceNotFoundError):
        client.get_orchestration_history(iid)
    expected_again = 0
    assert expected_again == client.purge_orchestration(iid).deleted_instance_count


def test_purge_of_a_running_instance_deletes_nothing(client):
    """Purging a running instance deletes nothing and the instance keeps running."""
    iid = client.schedule_new_orchestration(wait_go)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    expected = 0
    assert expected == client.purge_orchestration(iid).deleted_instance_count
    client.raise_orchestration_event(iid, "go", data=1)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.COMPLETED
    assert expected == state.runtime_status


def test_purge_of_an_unknown_instance_deletes_nothing(client):
    """Purging an unknown id reports zero deleted instances."""
    expected = 0
    assert expected == client.purge_orchestration("missing").deleted_instance_count


def test_recursive_purge_deletes_sub_orchestrations(client):
    """Purging a parent (recursive by default) also deletes its sub-orchestration."""
    parent = client.schedule_new_orchestration(parent_of_echo)
    client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    child = _child_of(parent)
    assert client.get_orchestration_state(child) is not None
    expected = 2
    assert expected == client.purge_orchestration(parent).deleted_instance_count
    assert client.get_orchestration_state(parent) is None
    assert client.get_orchestration_state(child) is None


def test_non_recursive_purge_keeps_sub_orchestrations(client):
    """purge_orchestration(recursive=False) deletes only the parent."""
    parent = client.schedule_new_orchestration(parent_of_echo)
    client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    child = _child_of(parent)
    expected = 1
    assert expected == client.purge_orchestration(parent, recursive=False).deleted_instance_count
    assert client.get_orchestration_state(child) is not None


def test_purge_by_created_range_and_status(manual_client, manual_clock):
    """purge_orchestrations_by(created range, [FAILED]) deletes only the matching terminal instances."""
    c = manual_client
    ids: dict[str, str] = {}
    ids["failed-before"] = c.schedule_new_orchestration(fail_now, instance_id="failed-before")
    manual_clock.advance(timedelta(hours=1))
    start = manual_clock.now()
    ids["failed-in-1"] = c.schedule_new_orchestration(fail_now, instance_id="failed-in-1")
    ids["completed-in"] = c.schedule_new_orchestration(echo, input=1, instance_id="completed-in")
    ids["running-in"] = c.schedule_new_orchestration(wait_go, instance_id="running-in")
    manual_clock.advance(timedelta(minutes=30))
    ids["failed-in-2"] = c.schedule_new_orchestration(fail_now, instance_id="failed-in-2")
    end = manual_clock.now()
    manual_clock.advance(timedelta(hours=1))
    ids["failed-after"] = c.schedule_new_orchestration(fail_now, instance_id="failed-after")
    for iid in ids.values():
        if iid != "running-in":
            c.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    result = c.purge_orchestrations_by(
        created_time_from=start, created_time_to=end, runtime_status=[Status.FAILED]
    )
    expected = 2
    assert expected == result.deleted_instance_count
    remaining = sorted(s.instance_id for s in c.get_all_instances())
    expected_remaining = ["completed-in", "failed-after", "failed-before", "running-in"]
    assert expected_remaining == remaining
    everything = c.purge_orchestrations_by()
    expected_all_terminal = 3
    assert expected_all_terminal == everything.deleted_instance_count
    expected_left = ["running-in"]
    assert expected_left == [s.instance_id for s in c.get_all_instances()]
