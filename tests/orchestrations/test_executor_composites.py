"""Replay executor: when_all and when_any, alone, raced against events and nested."""

from __future__ import annotations

from datetime import timedelta

import pytest

from duraray._errors import TaskCancelledError, TaskFailedError
from duraray.orchestrations import history as h
from duraray.orchestrations.task import when_all, when_any


def fan_out(ctx, n):
    return (yield when_all([ctx.call_activity("square", input=i) for i in range(n)]))


def test_when_all_returns_results_in_input_order(kit):
    """Fan-out results come back in scheduling order whatever the completion order."""
    run = kit.run(
        fan_out,
        kit.start(4),
        kit.episode(1, kit.done(3, 9), kit.done(1, 1)),
        kit.episode(2, kit.done(0, 0)),
        kit.episode(3, kit.done(2, 4)),
    )
    expected = [0, 1, 4, 9]
    assert expected == run.output()
    expected_steps = [[], []]
    assert expected_steps == run.steps[1:3]


def test_when_all_schedules_every_task_in_one_episode(kit):
    """All fanned-out activities are scheduled in the first episode, in order."""
    run = kit.run(fan_out, kit.start(3))
    expected = [kit.scheduled(i, "square", i) for i in range(3)]
    assert expected == run.new


def test_when_all_waits_for_all_then_raises_the_first_failure(kit):
    """One failure does not end the wait; once all finish the first failure is raised."""

    def orch(ctx, _):
        try:
            yield when_all([ctx.call_activity("a"), ctx.call_activity("b"), ctx.call_activity("c")])
        except TaskFailedError as exc:
            return str(exc)

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.fail(1, "first")),
        kit.episode(2, kit.fail(2, "second")),
        kit.episode(3, kit.done(0, "late")),
    )
    expected_waiting: list[list[h.HistoryEvent]] = [[], []]
    assert expected_waiting == run.steps[1:3]
    expected = "Activity task #1 failed: first"
    assert expected == run.output()


def test_when_all_of_nothing_completes_at_once(kit):
    """when_all([]) completes immediately with an empty list."""

    def orch(ctx, _):
        return (yield when_all([]))

    run = kit.run(orch, kit.start())
    expected = [kit.completed([])]
    assert expected == run.new


def test_when_all_over_completed_tasks_does_not_wait(kit):
    """Tasks already complete (buffered events) make when_all complete without an episode."""

    def orch(ctx, _):
        return (
            yield when_all([ctx.wait_for_external_event("x"), ctx.wait_for_external_event("y")])
        )

    start = [*kit.start(), kit.raised("y", 2), kit.raised("x", 1)]
    run = kit.run(orch, start)
    expected = [1, 2]
    assert expected == run.output()


def test_when_all_rejects_non_tasks(kit):
    """when_all over something that is not a task raises TypeError at the call site."""

    def orch(ctx, _):
        try:
            when_all([ctx.call_activity("a"), "oops"])
        except TypeError as exc:
            return str(exc)

    run = kit.run(orch, kit.start())
    expected = "expected tasks, got 'str'"
    assert expected == run.output()


def test_when_any_returns_the_first_finished_task(kit):
    """when_any's result is the task that finished first."""

    def orch(ctx, _):
        slow, fast = ctx.call_activity("slow"), ctx.call_activity("fast")
        winner = yield when_any([slow, fast])
        return [winner is fast, winner.get_result()]

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(1, "f")))
    expected = [True, "f"]
    assert expected == run.output()


def test_when_any_returns_a_failed_winner_without_raising(kit):
    """A failed first finisher is returned; get_result() raises its failure."""

    def orch(ctx, _):
        a, b = ctx.call_activity("a"), ctx.call_activity("b")
        winner = yield when_any([a, b])
        try:
            winner.get_result()
        except TaskFailedError as exc:
            return [winner is a, winner.is_failed, exc.details.message]

    run = kit.run(orch, kit.start(), kit.episode(1, kit.fail(0, "a broke")))
    expected = [True, True, "a broke"]
    assert expected == run.output()


def test_when_any_loser_completing_later_changes_nothing(kit):
    """The loser's later completion neither resumes the code nor changes its output."""

    def orch(ctx, _):
        a, b = ctx.call_activity("a"), ctx.call_activity("b")
        winner = yield when_any([a, b])
        after = yield ctx.call_activity("after", input=winner.get_result())
        return [winner.get_result(), after]

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.done(1, "b won")),
        kit.episode(2, kit.done(0, "a lost")),
        kit.episode(3, kit.done(2, "next")),
    )
    expected_steps = [[kit.scheduled(2, "after", "b won", t=1)], []]
    assert expected_steps == run.steps[1:3]
    expected = ["b won", "next"]
    assert expected == run.output()


def test_when_any_of_nothing_is_an_error(kit):
    """when_any([]) raises ValueError: there is nothing that could finish first."""
    with pytest.raises(ValueError, match="at least one task"):
        when_any([])


def approval(ctx, _):
    timeout = ctx.create_timer(timedelta(seconds=1))
    event = ctx.wait_for_external_event("approve")
    winner = yield when_any([event, timeout])
    if winner is event:
        timeout.cancel()
        return ["approved", event.get_result()]
    event.cancel()
    return ["timed out"]


def test_timer_wins_the_race_when_no_event_arrives(kit):
    """With no event before the timer fires, the timer branch completes the orchestration."""
    run = kit.run(approval, kit.start(), kit.episode(1, kit.fired(0, 1)))
    expected = ["timed out"]
    assert expected == run.output()


def test_event_wins_the_race_and_cancelling_the_timer_is_harmless(kit):
    """An event before the timer wins with its payload; the cancelled timer needs nothing more."""
    run = kit.run(approval, kit.start(), kit.episode(0.5, kit.raised("approve", "yes")))
    expected = [kit.completed(["approved", "yes"], t=0.5)]
    assert expected == run.new


def test_cancelled_loser_timer_firing_after_the_race_is_ignored(kit):
    """A race's cancelled timer firing later does not resume the orchestration."""

    def orch(ctx, _):
        timeout = ctx.create_timer(timedelta(seconds=5))
        event = ctx.wait_for_external_event("approve")
        winner = yield when_any([event, timeout])
        timeout.cancel()
        second = yield ctx.wait_for_external_event("confirm")
        return [winner.get_result(), second]

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.raised("approve", 1)),
        kit.episode(5, kit.fired(0, 5)),
        kit.episode(6, kit.raised("confirm", 2)),
    )
    expected_steps = [[kit.timer(0, 5)], [], [], [kit.completed([1, 2], t=6)]]
    assert expected_steps == run.steps


def test_event_and_timer_in_the_same_episode_resolve_in_event_order(kit):
    """When the timer fires and the event arrives in one episode, the earlier event wins."""
    run = kit.run(
        approval, kit.start(), kit.episode(1, kit.fired(0, 1), kit.raised("approve", "late"))
    )
    expected = ["timed out"]
    assert expected == run.output()
    expected_buffered = [("approve", kit.enc("late"))]
    assert expected_buffered == run.executor.buffered_events()


def test_nested_composites(kit):
    """when_all over a when_any and an activity yields the winner task and the result."""

    def orch(ctx, _):
        race = when_any([ctx.call_activity("a"), ctx.call_activity("b")])
        plain = ctx.call_activity("c")
        winner, c = yield when_all([race, plain])
        pair = yield when_all([when_all([ctx.call_activity("d")]), when_all([])])
        return [winner.get_result(), c, pair]

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.done(2, "c")),
        kit.episode(2, kit.done(1, "b")),
        kit.episode(3, kit.done(0, "a")),
        kit.episode(4, kit.done(3, "d")),
    )
    expected_steps = [[], [kit.scheduled(3, "d", t=2)], []]
    assert expected_steps == run.steps[1:4]
    expected = ["b", "c", [["d"], []]]
    assert expected == run.output()


def test_when_all_uncaught_failure_fails_the_orchestration(kit):
    """An uncaught when_all failure fails the orchestration with the first failure's details."""
    run = kit.run(fan_out, kit.start(2), kit.episode(1, kit.fail(1, "bad 1"), kit.fail(0, "bad 0")))
    expected = ("duraray.TaskFailedError", "Activity task #1 failed: bad 1")
    assert expected == (run.failure.error_type, run.failure.message)
    expected_inner = "bad 1"
    assert expected_inner == run.failure.inner.message


def test_when_all_over_a_task_cancelled_before_it_fails_once_the_rest_finish(kit):
    """A when_all over an already cancelled task raises TaskCancelledError when the rest finish."""

    def orch(ctx, _):
        timer = ctx.create_timer(timedelta(seconds=5))
        timer.cancel()
        try:
            yield when_all([timer, ctx.call_activity("a")])
        except TaskCancelledError as exc:
            return str(exc)

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(1, "x")))
    expected = "create_timer #0 was cancelled"
    assert expected == run.output()


def test_when_all_over_a_task_cancelled_after_it_was_built_fails_too(kit):
    """Cancelling a child of a built when_all makes the when_all fail once the rest finish."""

    def orch(ctx, _):
        wait = ctx.wait_for_external_event("approve")
        both = when_all([wait, ctx.call_activity("a")])
        wait.cancel()
        try:
            yield both
        except TaskCancelledError as exc:
            return str(exc)

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0, "x")))
    expected = "wait_for_external_event('approve') was cancelled"
    assert expected == run.output()


def test_cancelled_task_never_wins_a_when_any(kit):
    """A cancelled task is not a when_any winner: the race goes on with the other tasks."""

    def orch(ctx, _):
        timer = ctx.create_timer(timedelta(seconds=5))
        activity = ctx.call_activity("a")
        race = when_any([timer, activity])
        timer.cancel()
        winner = yield race
        return [winner is activity, winner.get_result()]

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(1, "x")))
    expected = [True, "x"]
    assert expected == run.output()
