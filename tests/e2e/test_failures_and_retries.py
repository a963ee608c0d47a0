"""End to end: activity failures, compensation, failed instances and retry policies."""

from __future__ import annotations

from datetime import timedelta

import pytest

import duraray as dr

from .helpers import TIMEOUT, CallCounter

app = dr.App("e2e-failures")
calls = CallCounter()

Status = dr.OrchestrationStatus


@app.activity
def always_fails(ctx: dr.ActivityContext, label: str | None = None) -> None:
    calls.hit((ctx.orchestration_id, "always_fails"))
    raise RuntimeError("boom")


@app.activity
def flaky(ctx: dr.ActivityContext, failures: int) -> str:
    attempt = calls.hit((ctx.orchestration_id, "flaky"))
    if attempt <= failures:
        raise RuntimeError(f"attempt {attempt} failed")
    return f"succeeded on attempt {attempt}"


@app.activity
def compensate(ctx: dr.ActivityContext, what: str) -> str:
    calls.hit((ctx.orchestration_id, "compensate"))
    return f"undid {what}"


@app.activity
def fails_on(ctx: dr.ActivityContext, args: list) -> int:
    value, bad = args
    calls.hit((ctx.orchestration_id, value))
    if value == bad:
        raise ValueError(f"item {value} is bad")
    return value


@app.orchestration
def compensating(ctx: dr.OrchestrationContext):
    try:
        yield ctx.call_activity(always_fails, input="charge")
    except dr.TaskFailedError as exc:
        undone = yield ctx.call_activity(compensate, input="charge")
        return {"message": exc.details.message, "undone": undone}
    return "not reached"


@app.orchestration
def uncaught(ctx: dr.OrchestrationContext):
    yield ctx.call_activity(always_fails)


@app.orchestration
def raises_itself(ctx: dr.OrchestrationContext):
    raise ValueError("bad input")


@app.orchestration
def yields_garbage(ctx: dr.OrchestrationContext):
    yield 42


@app.orchestration
def retried_always(ctx: dr.OrchestrationContext, attempts: int):
    policy = dr.RetryPolicy(timedelta(seconds=1), attempts)
    yield ctx.call_activity(always_fails, retry_policy=policy)


@app.orchestration
def retried_flaky(ctx: dr.OrchestrationContext, failures: int):
    policy = dr.RetryPolicy(timedelta(seconds=1), 3)
    return (yield ctx.call_activity(flaky, input=failures, retry_policy=policy))


@app.orchestration
def retried_with_backoff(ctx: dr.OrchestrationContext):
    policy = dr.RetryPolicy(
        first_retry_interval=timedelta(seconds=1),
        max_number_of_attempts=6,
        backoff_coefficient=2.0,
        max_retry_interval=timedelta(seconds=10),
    )
    yield ctx.call_activity(always_fails, retry_policy=policy)


@app.orchestration
def retried_with_timeout(ctx: dr.OrchestrationContext):
    policy = dr.RetryPolicy(
        first_retry_interval=timedelta(seconds=1),
        max_number_of_attempts=5,
        backoff_coefficient=2.0,
        retry_timeout=timedelta(seconds=14),
    )
    yield ctx.call_activity(always_fails, retry_policy=policy)


@app.orchestration
def calls_missing_activity(ctx: dr.OrchestrationContext):
    policy = dr.RetryPolicy(timedelta(seconds=1), 3)
    yield ctx.call_activity("no_such_activity", retry_policy=policy)


@app.orchestration
def fan_out_one_fails(ctx: dr.OrchestrationContext):
    tasks = [ctx.call_activity(fails_on, input=[i, 2]) for i in range(5)]
    try:
        yield dr.when_all(tasks)
    except dr.TaskFailedError as exc:
        return {"error": exc.details.message, "done": sum(t.is_complete for t in tasks)}
    return "not reached"


@app.orchestration
def any_with_failing_winner(ctx: dr.OrchestrationContext):
    failing = ctx.call_activity(always_fails)
    never = ctx.wait_for_external_event("never")
    winner = yield dr.when_any([failing, never])
    try:
        winner.get_result()
    except dr.TaskFailedError as exc:
        return ["winner failed", winner is failing, exc.details.message]
    return ["winner succeeded"]


def test_caught_failure_is_compensated(client):
    """An activity raising RuntimeError("boom") is catchable; compensation runs and the instance COMPLETES."""
    iid = client.schedule_new_orchestration(compensating)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.COMPLETED
    assert expected == state.runtime_status
    expected_output = {"message": "boom", "undone": "undid charge"}
    assert expected_output == state.output
    expected = 1
    assert expected == calls[(iid, "compensate")]


def test_uncaught_failure_fails_the_instance(client):
    """An uncaught activity failure FAILS the instance with TaskFailedError, the inner "boom" and a stack trace."""
    iid = client.schedule_new_orchestration(uncaught)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status
    details = state.failure_details
    assert details is not None
    assert "TaskFailedError" in details.error_type
    assert "boom" in details.message
    assert details.stack_trace
    assert details.inner is not None
    expected_inner = "RuntimeError"
    assert expected_inner == details.inner.error_type
    assert "boom" in details.inner.stack_trace
    assert state.output is None


def test_raise_if_failed(client):
    """raise_if_failed raises OrchestrationFailedError carrying the failure details."""
    iid = client.schedule_new_orchestration(uncaught)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    with pytest.raises(dr.OrchestrationFailedError, match="boom") as info:
        state.raise_if_failed()
    assert state.failure_details == info.value.details
    ok = client.schedule_new_orchestration(compensating)
    client.wait_for_orchestration_completion(ok, timeout=TIMEOUT).raise_if_failed()


def test_orchestrator_exception_fails_the_instance(client):
    """An exception raised by orchestrator code fails the instance with that error type."""
    iid = client.schedule_new_orchestration(raises_itself)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ("ValueError", "bad input")
    assert expected == (state.failure_details.error_type, state.failure_details.message)


def test_yielding_a_non_task_fails_the_instance(client):
    """Yielding something that is not a task fails the instance with a TypeError that says so."""
    iid = client.schedule_new_orchestration(yields_garbage)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = "TypeError"
    assert expected == state.failure_details.error_type
    assert "yield tasks" in state.failure_details.message


def test_retry_runs_exactly_the_allowed_attempts(client):
    """RetryPolicy(1 s, 3 attempts) on an always-failing activity runs it exactly 3 times, then fails."""
    iid = client.schedule_new_orchestration(retried_always, input=3)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status
    expected = 3
    assert expected == calls[(iid, "always_fails")]
    assert "boom" in state.failure_details.message
    history = client.get_orchestration_history(iid)
    expected_scheduled = 3
    assert expected_scheduled == sum(isinstance(e, dr.TaskScheduled) for e in history)
    expected_timers = 2
    assert expected_timers == sum(isinstance(e, dr.TimerCreated) for e in history)


def test_retry_succeeds_after_two_failures(client):
    """An activity failing twice then succeeding under a 3-attempt policy completes with its value."""
    iid = client.schedule_new_orchestration(retried_flaky, input=2)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = "succeeded on attempt 3"
    assert expected == state.output
    expected = 3
    assert expected == calls[(iid, "flaky")]


def test_retry_backoff_delays_are_durable_timers(client):
    """Retry delays follow first x coef^(n-1) capped by the max interval (1, 2, 4, 8, 10 s) as TimerCreated events."""
    iid = client.schedule_new_orchestration(retried_with_backoff)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status
    expected = 6
    assert expected == calls[(iid, "always_fails")]
    timers = [e for e in client.get_orchestration_history(iid) if isinstance(e, dr.TimerCreated)]
    expected_delays = [1, 2, 4, 8, 10]
    assert expected_delays == [(t.fire_at - t.timestamp).total_seconds() for t in timers]


def test_retry_timeout_is_measured_on_the_orchestration_clock(client):
    """retry_timeout=14 s with 1 s x 2 backoff and 5 attempts allows exactly 4 attempts."""
    iid = client.schedule_new_orchestration(retried_with_timeout)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status
    expected = 4
    assert expected == calls[(iid, "always_fails")]


def test_unregistered_activity_fails_without_retries(client):
    """Calling an unregistered activity fails the task with ActivityNotRegisteredError, not retried."""
    iid = client.schedule_new_orchestration(calls_missing_activity)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.FAILED
    assert expected == state.runtime_status
    assert state.failure_details.is_caused_by(dr.ActivityNotRegisteredError)
    history = client.get_orchestration_history(iid)
    expected_attempts = 1
    assert expected_attempts == sum(isinstance(e, dr.TaskScheduled) for e in history)


def test_when_all_waits_for_all_then_raises_the_first_failure(client):
    """when_all with one failing child of five waits for all five, then raises that failure."""
    iid = client.schedule_new_orchestration(fan_out_one_fails)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = {"error": "item 2 is bad", "done": 5}
    assert expected == state.output
    history = client.get_orchestration_history(iid)
    outcomes = [i for i, e in enumerate(history) if isinstance(e, dr.TaskCompleted | dr.TaskFailed)]
    end = next(i for i, e in enumerate(history) if isinstance(e, dr.ExecutionCompleted))
    expected = 5
    assert expected == len(outcomes)
    assert max(outcomes) < end
    expected_counts = [1, 1, 1, 1, 1]
    assert expected_counts == [calls[(iid, i)] for i in range(5)]


def test_when_any_returns_a_failed_winner_without_raising(client):
    """when_any whose first finisher failed returns that task; its get_result raises."""
    iid = client.schedule_new_orchestration(any_with_failing_winner)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ["winner failed", True, "boom"]
    assert expected == state.output


def forgot_the_decorator(ctx: dr.ActivityContext, x: int) -> int:
    return x


@app.orchestration
def calls_undecorated(ctx: dr.OrchestrationContext):
    return (yield ctx.call_activity(forgot_the_decorator, input=1))


def test_calling_an_undecorated_function_names_the_decorator(client):
    """A function never registered as an activity fails the call at once, and the error
    says what to do."""
    iid = client.schedule_new_orchestration(calls_undecorated)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert Status.FAILED == state.runtime_status
    assert state.failure_details.is_caused_by(dr.ActivityNotRegisteredError)
    assert "@app.activity" in state.failure_details.message
    assert "forgot_the_decorator" in state.failure_details.message
    assert not any(isinstance(e, dr.TaskScheduled) for e in client.get_orchestration_history(iid))
    with pytest.raises(dr.OrchestratorNotRegisteredError, match=r"@app\.orchestration"):
        client.schedule_new_orchestration(forgot_the_decorator)


attempts_seen: list[tuple[int, int]] = []


@app.activity
def fails_until_third(ctx: dr.ActivityContext, _: None) -> int:
    attempts_seen.append((ctx.task_id, ctx.attempt))
    if ctx.attempt < 3:
        raise RuntimeError(f"attempt {ctx.attempt}")
    return ctx.attempt


@app.orchestration
def retries_three_times(ctx: dr.OrchestrationContext):
    policy = dr.RetryPolicy(timedelta(seconds=1), 5)
    first = yield ctx.call_activity(fails_until_third, retry_policy=policy)
    plain = yield ctx.call_activity(fails_until_third_once_ok)
    return [first, plain]


@app.activity
def fails_until_third_once_ok(ctx: dr.ActivityContext) -> int:
    return ctx.attempt


def test_an_activity_sees_which_attempt_it_is(client):
    """ActivityContext.attempt counts from 1 and goes up with each retry of the policy;
    a call without a policy is attempt 1. Each attempt is its own task id."""
    attempts_seen.clear()
    iid = client.schedule_new_orchestration(retries_three_times)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert [3, 1] == state.output
    assert [1, 2, 3] == [attempt for _, attempt in attempts_seen]
    assert len({task_id for task_id, _ in attempts_seen}) == 3
    scheduled = [
        e for e in client.get_orchestration_history(iid) if isinstance(e, dr.TaskScheduled)
    ]
    assert [None, 2, 3, None] == [e.attempt for e in scheduled]
