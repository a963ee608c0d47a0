"""Replay executor: RetryPolicy on activities, delays as durable timers, retry timeout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from duraray._errors import TaskFailedError
from duraray.orchestrations import history as h
from duraray.orchestrations.task import RetryPolicy, when_all


def calling(policy: RetryPolicy, name: str = "flaky"):
    """An orchestrator that calls one activity under ``policy`` and returns its result."""

    def orch(ctx, _):
        return (yield ctx.call_activity(name, input="x", retry_policy=policy))

    return orch


def answering(kit, *outcomes: Any):
    """Answer the n-th attempt with ``outcomes[n]`` (an Exception fails it); fire timers on time.

    Attempts beyond the outcomes given fail.
    """
    attempts: list[int] = []

    def respond(action: h.HistoryEvent) -> h.HistoryEvent | None:
        if isinstance(action, h.TimerCreated):
            return kit.fire(action)
        if isinstance(action, h.TaskScheduled):
            n = len(attempts)
            attempts.append(action.event_id)
            outcome = outcomes[n] if n < len(outcomes) else RuntimeError("boom")
            if isinstance(outcome, Exception):
                return kit.fail(action.event_id, str(outcome))
            return kit.done(action.event_id, outcome)
        return None

    return respond


def attempt_times(run) -> list[float]:
    return [
        (e.timestamp - run.executor.started.timestamp).total_seconds()
        for e in run.of_type(h.TaskScheduled)
    ]


def test_always_failing_activity_runs_exactly_max_attempts(kit):
    """RetryPolicy(first=1s, attempts=3) runs an always-failing activity 3 times, then fails."""
    policy = RetryPolicy(timedelta(seconds=1), 3)
    run = kit.drive(calling(policy), kit.start(), answering(kit))
    expected_attempts = 3
    assert expected_attempts == len(run.of_type(h.TaskScheduled))
    expected = ("duraray.TaskFailedError", "Activity task #4 failed: boom")
    assert expected == (run.failure.error_type, run.failure.message)


def test_retry_schedules_a_timer_then_a_new_task(kit):
    """A failure under a policy adds a TimerCreated; its firing adds a new TaskScheduled."""
    policy = RetryPolicy(timedelta(seconds=3), 2)
    run = kit.run(
        calling(policy),
        kit.start(),
        kit.episode(1, kit.fail(0)),
        kit.episode(4, kit.fired(1, 4)),
    )
    expected_steps = [
        [kit.scheduled(0, "flaky", "x")],
        [kit.timer(1, 4, t=1, retry=True)],
        [kit.scheduled(2, "flaky", "x", t=4, attempt=2)],
    ]
    assert expected_steps == run.steps


def test_retry_delays_grow_by_the_coefficient_up_to_the_cap(kit):
    """Delays follow first*coef^(n-1) capped by the maximum: 1, 2, 4, 8, 10 s, as timers."""
    policy = RetryPolicy(
        timedelta(seconds=1), 6, backoff_coefficient=2, max_retry_interval=timedelta(seconds=10)
    )
    run = kit.drive(calling(policy), kit.start(), answering(kit))
    expected = [1.0, 2.0, 4.0, 8.0, 10.0]
    assert expected == [
        (e.fire_at - e.timestamp).total_seconds() for e in run.of_type(h.TimerCreated)
    ]
    expected_times = [0.0, 1.0, 3.0, 7.0, 15.0, 25.0]
    assert expected_times == attempt_times(run)


def test_success_after_two_failures_completes_with_the_value(kit):
    """An activity failing twice then succeeding under a 3-attempt policy returns its value."""
    policy = RetryPolicy(timedelta(seconds=1), 3)
    run = kit.drive(
        calling(policy), kit.start(), answering(kit, RuntimeError("a"), RuntimeError("b"), "ok")
    )
    expected = "ok"
    assert expected == run.output()
    expected_ids = [0, 2, 4]
    assert expected_ids == [e.event_id for e in run.of_type(h.TaskScheduled)]


def test_retry_timeout_on_the_orchestration_clock(kit):
    """first=1s, coef=2, 5 attempts, timeout 14 s, instant failures: 4 attempts (at 0, 1, 3, 7 s).

    The rule: no retry whose start would fall after first attempt + retry_timeout. The
    fifth attempt would start at 15 s > 14 s, so it is not made. (DT also observes 4 runs,
    but measured on the wall clock; ours cannot change on replay.)
    """
    policy = RetryPolicy(
        timedelta(seconds=1), 5, backoff_coefficient=2, retry_timeout=timedelta(seconds=14)
    )
    run = kit.drive(calling(policy), kit.start(), answering(kit))
    expected = [0.0, 1.0, 3.0, 7.0]
    assert expected == attempt_times(run)
    expected_status = h.OrchestrationStatus.FAILED
    assert expected_status == run.status


def test_retry_starting_exactly_at_the_timeout_is_made(kit):
    """A retry whose start falls exactly on first attempt + retry_timeout is still made."""
    policy = RetryPolicy(
        timedelta(seconds=1), 5, backoff_coefficient=2, retry_timeout=timedelta(seconds=15)
    )
    run = kit.drive(calling(policy), kit.start(), answering(kit))
    expected = [0.0, 1.0, 3.0, 7.0, 15.0]
    assert expected == attempt_times(run)


def test_slow_failures_count_against_the_retry_timeout(kit):
    """The timeout counts the time attempts took, not only the delays between them."""
    policy = RetryPolicy(timedelta(seconds=1), 5, retry_timeout=timedelta(seconds=10))
    run = kit.run(
        calling(policy),
        kit.start(),
        kit.episode(9.5, kit.fail(0)),
    )
    expected = [kit.scheduled(0, "flaky", "x")]
    assert expected == run.actions
    expected_status = h.OrchestrationStatus.FAILED
    assert expected_status == run.status


def test_non_retriable_failure_is_not_retried(kit):
    """A failure marked non_retriable fails the task at once, whatever the policy."""
    policy = RetryPolicy(timedelta(seconds=1), 5)
    run = kit.run(
        calling(policy), kit.start(), kit.episode(1, kit.fail(0, "fatal", non_retriable=True))
    )
    expected = [kit.scheduled(0, "flaky", "x")]
    assert expected == run.actions
    expected_message = "Activity task #0 failed: fatal"
    assert expected_message == run.failure.message


def test_retried_task_inside_when_all(kit):
    """A retried task in a fan-out is retried while the others wait; when_all gets its value."""
    policy = RetryPolicy(timedelta(seconds=2), 2)

    def orch(ctx, _):
        return (
            yield when_all(
                [
                    ctx.call_activity("a", retry_policy=policy),
                    ctx.call_activity("b"),
                ]
            )
        )

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.fail(0), kit.done(1, "b")),
        kit.episode(3, kit.fired(2, 3)),
        kit.episode(4, kit.done(3, "a")),
    )
    expected = ["a", "b"]
    assert expected == run.output()


def test_caught_final_failure_after_retries(kit):
    """After the last attempt the orchestrator catches one TaskFailedError with the last failure."""
    policy = RetryPolicy(timedelta(seconds=1), 2)

    def orch(ctx, _):
        try:
            yield ctx.call_activity("flaky", retry_policy=policy)
        except TaskFailedError as exc:
            return exc.details.message

    run = kit.drive(orch, kit.start(), answering(kit, RuntimeError("one"), RuntimeError("two")))
    expected = "two"
    assert expected == run.output()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"first_retry_interval": timedelta(0), "max_number_of_attempts": 3}, ValueError),
        ({"first_retry_interval": -1, "max_number_of_attempts": 3}, ValueError),
        ({"first_retry_interval": "1s", "max_number_of_attempts": 3}, TypeError),
        ({"first_retry_interval": 1, "max_number_of_attempts": 0}, ValueError),
        ({"first_retry_interval": 1, "max_number_of_attempts": 2.5}, ValueError),
        (
            {"first_retry_interval": 1, "max_number_of_attempts": 3, "backoff_coefficient": 0.5},
            ValueError,
        ),
        (
            {"first_retry_interval": 5, "max_number_of_attempts": 3, "max_retry_interval": 1},
            ValueError,
        ),
        ({"first_retry_interval": 1, "max_number_of_attempts": 3, "retry_timeout": -1}, ValueError),
    ],
)
def test_retry_policy_validation(kwargs, error):
    """RetryPolicy rejects non-positive intervals, bad attempt counts and inconsistent caps."""
    with pytest.raises(error):
        RetryPolicy(**kwargs)


def test_retry_policy_accepts_seconds_and_computes_delays():
    """Numbers are seconds; delay_after(n) is first*coef^(n-1) capped by the maximum."""
    policy = RetryPolicy(1.5, 4, backoff_coefficient=3, max_retry_interval=10, retry_timeout=60)
    expected = (timedelta(seconds=1.5), timedelta(seconds=10), timedelta(seconds=60))
    assert expected == (
        policy.first_retry_interval,
        policy.max_retry_interval,
        policy.retry_timeout,
    )
    expected_delays = [timedelta(seconds=s) for s in (1.5, 4.5, 10, 10)]
    assert expected_delays == [policy.delay_after(n) for n in (1, 2, 3, 4)]


def test_retry_policy_of_the_wrong_type_raises_at_the_call_site(kit):
    """A retry_policy that is not a RetryPolicy raises TypeError inside the orchestrator."""

    def orch(ctx, _):
        try:
            ctx.call_activity("a", retry_policy={"attempts": 3})
        except TypeError as exc:
            return str(exc)

    run = kit.run(orch, kit.start())
    expected = "retry_policy must be a duraray.RetryPolicy"
    assert expected == run.output()
