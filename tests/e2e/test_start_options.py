"""End to end: instance id reuse, reuse policies and delayed starts (start_at)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import duraray as dr

from .helpers import TIMEOUT, CallCounter

app = dr.App("e2e-start-options")
runs = CallCounter()

Status = dr.OrchestrationStatus


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value):
    runs.hit(ctx.instance_id)
    return value


@app.orchestration
def wait_then_echo(ctx: dr.OrchestrationContext, value):
    runs.hit(ctx.instance_id)
    extra = yield ctx.wait_for_external_event("go")
    return [value, extra]


def test_existing_running_id_is_rejected(client):
    """Starting with the id of a running instance raises InstanceAlreadyExistsError and leaves it alone."""
    iid = client.schedule_new_orchestration(wait_then_echo, input="first", instance_id="dup")
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    with pytest.raises(dr.InstanceAlreadyExistsError):
        client.schedule_new_orchestration(wait_then_echo, input="second", instance_id="dup")
    client.raise_orchestration_event("dup", "go", data=1)
    state = client.wait_for_orchestration_completion("dup", timeout=TIMEOUT)
    expected = ["first", 1]
    assert expected == state.output


def test_existing_terminal_id_is_replaced(client):
    """Starting with the id of a finished instance replaces it with a new execution and input."""
    client.schedule_new_orchestration(echo, input="old", instance_id="reused")
    client.wait_for_orchestration_completion("reused", timeout=TIMEOUT)
    old_history = client.get_orchestration_history("reused")
    client.schedule_new_orchestration(echo, input="new", instance_id="reused")
    state = client.wait_for_orchestration_completion("reused", timeout=TIMEOUT)
    expected = "new"
    assert expected == state.output
    new_history = client.get_orchestration_history("reused")
    started = [e for e in new_history if isinstance(e, dr.ExecutionStarted)]
    expected = 1
    assert expected == len(started)
    old_started = next(e for e in old_history if isinstance(e, dr.ExecutionStarted))
    assert started[0].execution_id != old_started.execution_id
    expected = 2
    assert expected == runs["reused"]
    expected_ids = ["reused"]
    assert expected_ids == [s.instance_id for s in client.query_instances().items]


def test_reuse_policy_error_rejects_even_a_finished_instance(client):
    """ReuseIdPolicy.ERROR rejects any existing id, terminal or not."""
    client.schedule_new_orchestration(echo, input=1, instance_id="strict")
    client.wait_for_orchestration_completion("strict", timeout=TIMEOUT)
    with pytest.raises(dr.InstanceAlreadyExistsError):
        client.schedule_new_orchestration(
            echo, input=2, instance_id="strict", reuse_id_policy=dr.ReuseIdPolicy.ERROR
        )
    expected = 1
    assert expected == client.get_orchestration_state("strict").output


def test_reuse_policy_error_if_running_is_the_default(client):
    """ReuseIdPolicy.ERROR_IF_RUNNING rejects a running id and replaces a finished one."""
    policy = dr.ReuseIdPolicy.ERROR_IF_RUNNING
    client.schedule_new_orchestration(
        wait_then_echo, input=1, instance_id="eir", reuse_id_policy=policy
    )
    with pytest.raises(dr.InstanceAlreadyExistsError):
        client.schedule_new_orchestration(echo, input=2, instance_id="eir", reuse_id_policy=policy)
    client.terminate_orchestration("eir")
    client.wait_for_orchestration_completion("eir", timeout=TIMEOUT)
    client.schedule_new_orchestration(echo, input=3, instance_id="eir", reuse_id_policy=policy)
    state = client.wait_for_orchestration_completion("eir", timeout=TIMEOUT)
    expected = 3
    assert expected == state.output


def test_reuse_policy_ignore_if_running_keeps_the_running_instance(client):
    """ReuseIdPolicy.IGNORE_IF_RUNNING returns the running instance's id and does not touch it."""
    policy = dr.ReuseIdPolicy.IGNORE_IF_RUNNING
    client.schedule_new_orchestration(wait_then_echo, input="kept", instance_id="ign")
    client.wait_for_orchestration_start("ign", timeout=TIMEOUT)
    returned = client.schedule_new_orchestration(
        wait_then_echo, input="ignored", instance_id="ign", reuse_id_policy=policy
    )
    expected = "ign"
    assert expected == returned
    client.raise_orchestration_event("ign", "go", data=7)
    state = client.wait_for_orchestration_completion("ign", timeout=TIMEOUT)
    expected_output = ["kept", 7]
    assert expected_output == state.output
    expected = 1
    assert expected == runs["ign"]
    client.schedule_new_orchestration(
        echo, input="again", instance_id="ign", reuse_id_policy=policy
    )
    replaced = client.wait_for_orchestration_completion("ign", timeout=TIMEOUT)
    expected_replaced = "again"
    assert expected_replaced == replaced.output


def test_reuse_policy_terminate_if_running_starts_anew(client):
    """ReuseIdPolicy.TERMINATE_IF_RUNNING terminates the running instance and starts the new one."""
    client.schedule_new_orchestration(wait_then_echo, input="old", instance_id="tir")
    client.wait_for_orchestration_start("tir", timeout=TIMEOUT)
    client.schedule_new_orchestration(
        echo, input="new", instance_id="tir", reuse_id_policy=dr.ReuseIdPolicy.TERMINATE_IF_RUNNING
    )
    state = client.wait_for_orchestration_completion("tir", timeout=TIMEOUT)
    expected = Status.COMPLETED
    assert expected == state.runtime_status
    expected_output = "new"
    assert expected_output == state.output
    expected_name = "echo"
    assert expected_name == state.name


def test_start_at_keeps_the_instance_pending_until_due(manual_client, manual_clock):
    """start_at keeps the instance PENDING until the hub clock reaches it, then it runs."""
    due = manual_clock.now() + timedelta(seconds=3)
    iid = manual_client.schedule_new_orchestration(echo, input="late", start_at=due)
    state = manual_client.get_orchestration_state(iid)
    expected = Status.PENDING
    assert expected == state.runtime_status
    assert due == state.scheduled_start_at
    with pytest.raises(TimeoutError):
        manual_client.wait_for_orchestration_start(iid, timeout=0.2)
    manual_clock.advance(timedelta(seconds=2))
    with pytest.raises(TimeoutError):
        manual_client.wait_for_orchestration_start(iid, timeout=0.2)
    expected = 0
    assert expected == runs[iid]
    manual_clock.advance(timedelta(seconds=1))
    started = manual_client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    assert started.runtime_status in (Status.RUNNING, Status.COMPLETED)
    done = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_output = "late"
    assert expected_output == done.output


def test_start_at_as_a_delay_is_measured_on_the_hub_clock(manual_client, manual_clock):
    """A timedelta start_at counts from the hub's clock, so advancing that clock starts the instance."""
    iid = manual_client.schedule_new_orchestration(echo, input=1, start_at=timedelta(seconds=3))
    expected = Status.PENDING
    assert expected == manual_client.get_orchestration_state(iid).runtime_status
    manual_clock.advance(timedelta(seconds=3))
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_output = 1
    assert expected_output == state.output


def test_start_at_in_the_past_starts_at_once(manual_client, manual_clock):
    """A start_at that is already due starts the instance without moving the clock."""
    iid = manual_client.schedule_new_orchestration(
        echo, input=2, start_at=manual_clock.now() - timedelta(minutes=1)
    )
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = 2
    assert expected == state.output


def test_events_raised_to_a_pending_instance_wait_for_its_start(manual_client, manual_clock):
    """An event raised while the instance is PENDING is delivered once it starts."""
    due = manual_clock.now() + timedelta(minutes=1)
    iid = manual_client.schedule_new_orchestration(wait_then_echo, input="x", start_at=due)
    manual_client.raise_orchestration_event(iid, "go", data="early")
    expected = Status.PENDING
    assert expected == manual_client.get_orchestration_state(iid).runtime_status
    manual_clock.advance(timedelta(minutes=1))
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_output = ["x", "early"]
    assert expected_output == state.output


def test_terminating_a_pending_instance_means_it_never_runs(manual_client, manual_clock):
    """A delayed instance terminated before its start never runs its code."""
    due = manual_clock.now() + timedelta(minutes=1)
    iid = manual_client.schedule_new_orchestration(echo, input=1, start_at=due)
    manual_client.terminate_orchestration(iid, output="cancelled")
    manual_clock.advance(timedelta(minutes=2))
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.TERMINATED
    assert expected == state.runtime_status
    expected = 0
    assert expected == runs[iid]


def test_start_at_of_the_wrong_type_is_rejected(client):
    """A start_at that is neither a datetime nor a timedelta raises TypeError and stores nothing."""
    with pytest.raises(TypeError):
        client.schedule_new_orchestration(echo, input=1, instance_id="when", start_at=5)
    assert client.get_orchestration_state("when") is None
