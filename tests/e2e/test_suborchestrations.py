"""End to end: sub-orchestrations: outputs, ids, failures, retries and fan-out."""

from __future__ import annotations

from datetime import timedelta

import duraray as dr
from duraray.testing import ManualClock, run_in_process

from .helpers import TIMEOUT, CallCounter

app = dr.App("e2e-suborchestrations")
calls = CallCounter()

Status = dr.OrchestrationStatus


@app.activity
def always_fails(ctx: dr.ActivityContext) -> None:
    calls.hit((ctx.orchestration_id, "always_fails"))
    raise RuntimeError("child boom")


@app.orchestration
def child(ctx: dr.OrchestrationContext, value):
    calls.hit((ctx.instance_id, "child runs"))
    return {
        "value": value,
        "me": ctx.instance_id,
        "parent": ctx.parent_instance_id,
        "version": ctx.version,
    }


@app.orchestration
def failing_child(ctx: dr.OrchestrationContext):
    yield ctx.call_activity(always_fails, retry_policy=dr.RetryPolicy(timedelta(seconds=1), 3))


@app.orchestration
def waiting_child(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def parent_by_name(ctx: dr.OrchestrationContext, value):
    return (yield ctx.call_sub_orchestrator("child", input=value))


@app.orchestration
def parent_with_id(ctx: dr.OrchestrationContext, child_id: str):
    return (yield ctx.call_sub_orchestrator(child, input=1, instance_id=child_id, version="9"))


@app.orchestration
def parent_catches(ctx: dr.OrchestrationContext):
    try:
        yield ctx.call_sub_orchestrator(failing_child)
    except dr.TaskFailedError as exc:
        return {"message": str(exc), "inner": exc.details.message}
    return "not reached"


@app.orchestration
def parent_retries(ctx: dr.OrchestrationContext):
    policy = dr.RetryPolicy(timedelta(seconds=1), 3)
    yield ctx.call_sub_orchestrator(failing_child, retry_policy=policy)


@app.orchestration
def parent_fans_out(ctx: dr.OrchestrationContext, count: int):
    return (yield dr.when_all([ctx.call_sub_orchestrator(child, input=i) for i in range(count)]))


@app.orchestration
def parent_reuses_running_id(ctx: dr.OrchestrationContext, child_id: str):
    try:
        yield ctx.call_sub_orchestrator(child, instance_id=child_id)
    except dr.TaskFailedError as exc:
        return exc.details.error_type
    return "not reached"


@app.orchestration
def looping_child(ctx: dr.OrchestrationContext, n: int):
    if n < 3:
        ctx.continue_as_new(n + 1)
        return None
    return n


@app.orchestration
def parent_of_loop(ctx: dr.OrchestrationContext):
    return (yield ctx.call_sub_orchestrator(looping_child, input=0))


@app.orchestration
def parent_signals_child(ctx: dr.OrchestrationContext):
    task = ctx.call_sub_orchestrator(waiting_child)
    ctx.send_event(f"{ctx.instance_id}:0000", "go", data="from parent")
    return (yield task)


def test_sub_orchestration_by_name_returns_its_output(client):
    """A sub-orchestration called by name returns its output; its parent id and default id are the parent's."""
    parent = client.schedule_new_orchestration(parent_by_name, input="x")
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    child_id = f"{parent}:0000"
    expected = {"value": "x", "me": child_id, "parent": parent, "version": None}
    assert expected == state.output
    child_state = client.get_orchestration_state(child_id)
    assert parent == child_state.parent_instance_id
    expected = Status.COMPLETED
    assert expected == child_state.runtime_status
    created = [
        e
        for e in client.get_orchestration_history(parent)
        if isinstance(e, dr.SubOrchestrationInstanceCreated)
    ]
    expected_ids = [child_id]
    assert expected_ids == [e.instance_id for e in created]


def test_sub_orchestration_with_explicit_id_and_version(client):
    """call_sub_orchestrator(instance_id=..., version=...) starts the child under that id and version."""
    parent = client.schedule_new_orchestration(parent_with_id, input="my-child")
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = {"value": 1, "me": "my-child", "parent": parent, "version": "9"}
    assert expected == state.output
    expected_version = "9"
    assert expected_version == client.get_orchestration_state("my-child").version


def test_default_child_id_is_stable_across_replays():
    """With every episode a replay, the default child id stays the same and the child runs once."""
    with run_in_process(
        app, clock=ManualClock(auto_advance=True), max_cached_orchestrations=0
    ) as client:
        parent = client.schedule_new_orchestration(parent_fans_out, input=3)
        state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
        expected_me = [f"{parent}:{i:04x}" for i in range(3)]
        assert expected_me == [o["me"] for o in state.output]
        expected_runs = [1, 1, 1]
        assert expected_runs == [calls[(c, "child runs")] for c in expected_me]


def test_child_failure_is_catchable_in_the_parent(client):
    """A failing sub-orchestration surfaces in the parent as a catchable TaskFailedError."""
    parent = client.schedule_new_orchestration(parent_catches)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = Status.COMPLETED
    assert expected == state.runtime_status
    assert state.output["message"].startswith("Sub-orchestration task #0 failed")
    assert "child boom" in state.output["inner"]
    child_state = client.get_orchestration_state(f"{parent}:0000")
    expected = Status.FAILED
    assert expected == child_state.runtime_status


def test_uncaught_child_failure_fails_the_parent(client):
    """A sub-orchestration failure the parent does not catch fails the parent, nesting the child's failure."""
    parent = client.schedule_new_orchestration(parent_retries)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status
    assert state.failure_details.is_caused_by("RuntimeError")


def test_retry_policy_on_a_sub_orchestration_reruns_the_child(client):
    """A 3-attempt retry policy on a child that runs a 3-attempt activity executes the activity 9 times."""
    parent = client.schedule_new_orchestration(parent_retries)
    client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    runs = {k: v for k, v in calls.snapshot().items() if k[0].startswith(f"{parent}:")}
    expected = 9
    assert expected == sum(runs.values())
    expected_children = 3
    assert expected_children == len(runs)


def test_fan_out_of_sub_orchestrations(client):
    """A when_all over ten sub-orchestrations returns their outputs in order."""
    parent = client.schedule_new_orchestration(parent_fans_out, input=10)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = list(range(10))
    assert expected == [o["value"] for o in state.output]


def test_child_id_of_a_running_instance_fails_the_call(client):
    """Starting a sub-orchestration under the id of a running instance fails that task in the parent."""
    busy = client.schedule_new_orchestration(waiting_child, instance_id="busy-child")
    client.wait_for_orchestration_start(busy, timeout=TIMEOUT)
    parent = client.schedule_new_orchestration(parent_reuses_running_id, input="busy-child")
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    assert "InstanceAlreadyExists" in state.output
    expected = Status.RUNNING
    assert expected == client.get_orchestration_state("busy-child").runtime_status


def test_child_that_continues_as_new_returns_its_final_output(client):
    """A child that continues as new reports its last generation's output to the parent."""
    parent = client.schedule_new_orchestration(parent_of_loop)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = 3
    assert expected == state.output


def test_parent_can_send_an_event_to_its_child(client):
    """An event sent by the parent right after starting its child reaches the child."""
    parent = client.schedule_new_orchestration(parent_signals_child)
    state = client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    expected = "from parent"
    assert expected == state.output
