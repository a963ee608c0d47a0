"""Replay executor: code that no longer matches its history fails with NonDeterminismError."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from duraray._errors import NonDeterminismError
from duraray.orchestrations import history as h
from duraray.orchestrations.executor import ExecutorOptions
from duraray.orchestrations.task import RetryPolicy

QUESTION = "; was the orchestration changed while instances were running?"


def charge_then_ship(ctx, _):
    yield ctx.call_activity("charge")
    yield ctx.call_activity("ship")
    return "shipped"


def recorded(kit, fn, *episodes):
    """The history a live run of ``fn`` over ``episodes`` stored."""
    return kit.run(fn, *episodes).history


def replay_failure(kit, fn, history, *new_events):
    """Replay ``history`` with changed code; return the FailureDetails it completed with."""
    executor, new = kit.replay(fn, history, list(new_events))
    assert isinstance(executor.completion, h.ExecutionCompleted)
    expected_status = h.OrchestrationStatus.FAILED
    assert expected_status == executor.completion.status
    expected_new = [executor.completion]
    assert expected_new == new
    return executor.completion.failure


def test_changed_activity_name_is_detected(kit):
    """Renaming an executed activity fails with a message naming both activities."""
    history = recorded(kit, charge_then_ship, kit.start())

    def changed(ctx, _):
        yield ctx.call_activity("bill")

    failure = replay_failure(kit, changed, history, *kit.episode(1, kit.done(0)))
    expected = (
        "history has call_activity('charge') at #0, the code now calls call_activity('bill')"
        + QUESTION
    )
    assert expected == failure.message
    expected_type = "duraray.NonDeterminismError"
    assert expected_type == failure.error_type
    assert failure.non_retriable
    assert failure.is_caused_by(NonDeterminismError)


def test_activity_replaced_by_a_timer_is_detected(kit):
    """Replacing a scheduled activity by a timer at the same position is a history mismatch."""
    history = recorded(kit, charge_then_ship, kit.start())

    def changed(ctx, _):
        yield ctx.create_timer(timedelta(seconds=1))

    failure = replay_failure(kit, changed, history)
    expected = (
        "history has call_activity('charge') at #0, the code now calls create_timer" + QUESTION
    )
    assert expected == failure.message


def test_timer_replaced_by_an_activity_is_detected(kit):
    """Replacing a recorded timer by an activity is detected too."""

    def original(ctx, _):
        yield ctx.create_timer(timedelta(seconds=1))

    def changed(ctx, _):
        yield ctx.call_activity("charge")

    failure = replay_failure(kit, changed, recorded(kit, original, kit.start()))
    expected = (
        "history has create_timer at #0, the code now calls call_activity('charge')" + QUESTION
    )
    assert expected == failure.message


def test_changed_sub_orchestrator_name_is_detected(kit):
    """A sub-orchestration called under another name no longer matches its history."""

    def original(ctx, _):
        yield ctx.call_sub_orchestrator("child_v1")

    def changed(ctx, _):
        yield ctx.call_sub_orchestrator("child_v2")

    failure = replay_failure(kit, changed, recorded(kit, original, kit.start()))
    expected = (
        "history has call_sub_orchestrator('child_v1') at #0, the code now calls "
        "call_sub_orchestrator('child_v2')" + QUESTION
    )
    assert expected == failure.message


def test_changed_event_sent_name_is_detected(kit):
    """send_event with another event name at a recorded position is a mismatch."""

    def original(ctx, _):
        ctx.send_event("other", "Approved")
        yield ctx.wait_for_external_event("done")

    def changed(ctx, _):
        ctx.send_event("other", "Rejected")
        yield ctx.wait_for_external_event("done")

    failure = replay_failure(kit, changed, recorded(kit, original, kit.start()))
    expected = (
        "history has send_event('other', 'Approved') at #0, the code now calls "
        "send_event('other', 'Rejected')" + QUESTION
    )
    assert expected == failure.message


def test_recorded_action_the_code_no_longer_schedules_is_detected(kit):
    """A fan-out that shrank leaves a recorded action the code no longer schedules."""
    from duraray.orchestrations.task import when_all

    def original(ctx, _):
        yield when_all([ctx.call_activity("a"), ctx.call_activity("b")])

    def changed(ctx, _):
        yield when_all([ctx.call_activity("a")])

    failure = replay_failure(kit, changed, recorded(kit, original, kit.start()))
    expected = (
        "history has call_activity('b') at #1, but the code no longer schedules anything "
        "there" + QUESTION
    )
    assert expected == failure.message


def test_code_that_now_returns_early_is_detected(kit):
    """Code that now returns where it used to schedule more work fails instead of completing."""
    history = recorded(kit, charge_then_ship, kit.start(), kit.episode(1, kit.done(0)))

    def changed(ctx, _):
        yield ctx.call_activity("charge")
        return "skipped shipping"

    failure = replay_failure(kit, changed, history)
    expected = (
        "history has call_activity('ship') at #1, but the code no longer schedules anything "
        "there" + QUESTION
    )
    assert expected == failure.message


def test_mismatch_emits_no_stale_actions(kit):
    """On a mismatch, actions the changed code produced during replay are not emitted."""
    from duraray.orchestrations.task import when_all

    def original(ctx, _):
        yield when_all([ctx.call_activity("a"), ctx.call_activity("b")])

    def changed(ctx, _):
        yield when_all([ctx.call_activity("x"), ctx.call_activity("b")])

    history = recorded(kit, original, kit.start())
    # replay_failure asserts that the failure is the only new event
    failure = replay_failure(kit, changed, history, *kit.episode(1, kit.done(1)))
    assert failure.message.startswith("history has call_activity('a') at #0")


def test_unchanged_code_replays_without_error(kit):
    """The same code replays its own history and goes on normally."""
    history = recorded(kit, charge_then_ship, kit.start(), kit.episode(1, kit.done(0)))
    _, new = kit.replay(charge_then_ship, history, kit.episode(2, kit.done(1)))
    expected = [kit.completed("shipped", t=2)]
    assert expected == new


def test_changed_activity_input_is_not_a_mismatch(kit):
    """Only the kind and name of an action must match; a changed input replays fine."""

    def original(ctx, _):
        yield ctx.call_activity("charge", input=1)
        return "ok"

    def changed(ctx, _):
        yield ctx.call_activity("charge", input=2)
        return "ok"

    history = recorded(kit, original, kit.start())
    _, new = kit.replay(changed, history, kit.episode(1, kit.done(0)))
    expected = [kit.completed("ok", t=1)]
    assert expected == new


def test_additional_work_at_the_end_is_new_work(kit):
    """Code that schedules more than the history at its last point emits that as new actions."""

    def original(ctx, _):
        yield ctx.call_activity("a")

    def extended(ctx, _):
        yield ctx.call_activity("a")
        yield ctx.call_activity("b")

    history = recorded(kit, original, kit.start())
    _, new = kit.replay(extended, history, kit.episode(1, kit.done(0)))
    expected = [kit.scheduled(1, "b", t=1)]
    assert expected == new


def test_user_code_cannot_swallow_the_mismatch(kit):
    """A broad except in the orchestrator does not hide a replay mismatch."""
    history = recorded(kit, charge_then_ship, kit.start(), kit.episode(1, kit.done(0)))

    def changed(ctx, _):
        try:
            yield ctx.call_activity("charge")
            yield ctx.create_timer(timedelta(seconds=1))
        except Exception:
            return "swallowed"
        return "done"

    failure = replay_failure(kit, changed, history)
    expected = "duraray.NonDeterminismError"
    assert expected == failure.error_type


def test_code_that_now_raises_early_is_a_mismatch_not_its_error(kit):
    """Code that now fails where it used to schedule more work reports the mismatch."""
    history = recorded(kit, charge_then_ship, kit.start(), kit.episode(1, kit.done(0)))

    def changed(ctx, _):
        yield ctx.call_activity("charge")
        raise RuntimeError("new validation")

    failure = replay_failure(kit, changed, history)
    expected = "duraray.NonDeterminismError"
    assert expected == failure.error_type


def test_marker_events_do_not_affect_replay(kit):
    """Suspend, resume and rewind markers in the history are ignored by the executor."""
    markers = [
        h.ExecutionSuspended(timestamp=kit.at(1), reason="pause"),
        h.ExecutionResumed(timestamp=kit.at(2)),
        h.ExecutionRewound(timestamp=kit.at(2)),
    ]
    run = kit.run(
        charge_then_ship,
        kit.start(),
        kit.episode(1, *markers),
        kit.episode(2, kit.done(0)),
        kit.episode(3, kit.done(1)),
    )
    expected = "shipped"
    assert expected == run.output()


def test_changed_sub_orchestration_instance_id_is_detected(kit):
    """The same child called under another instance id no longer matches its history:
    the recorded child "A" would otherwise replay silently against code that starts "B"."""

    def original(ctx, _):
        yield ctx.call_sub_orchestrator("child", instance_id="A")

    def changed(ctx, _):
        yield ctx.call_sub_orchestrator("child", instance_id="B")

    failure = replay_failure(kit, changed, recorded(kit, original, kit.start()))
    expected = (
        "history has call_sub_orchestrator('child', instance_id='A') at #0, the code now "
        "calls call_sub_orchestrator('child', instance_id='B')" + QUESTION
    )
    assert expected == failure.message
    assert failure.is_caused_by(NonDeterminismError)


def test_changed_event_target_is_detected(kit):
    """send_event of the same event to another instance is a mismatch naming both."""

    def original(ctx, _):
        ctx.send_event("first", "Approved")
        yield ctx.wait_for_external_event("done")

    def changed(ctx, _):
        ctx.send_event("second", "Approved")
        yield ctx.wait_for_external_event("done")

    failure = replay_failure(kit, changed, recorded(kit, original, kit.start()))
    expected = (
        "history has send_event('first', 'Approved') at #0, the code now calls "
        "send_event('second', 'Approved')" + QUESTION
    )
    assert expected == failure.message


# -- a timer's fire time ----------------------------------------------------------------------


def timer_after(seconds: float):
    """An orchestration that waits ``seconds`` from its start, written the datetime way."""

    def orch(ctx, _):
        yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=seconds))
        return "woke"

    return orch


def test_changed_timer_fire_time_is_detected(kit):
    """A timer asked for another time than the history recorded is a mismatch naming both
    times."""
    history = recorded(kit, timer_after(10), kit.start())

    failure = replay_failure(kit, timer_after(20), history)
    expected = (
        "history has create_timer(fire_at=2024-01-01T00:00:10+00:00) at #0, the code now "
        "calls create_timer(fire_at=2024-01-01T00:00:20+00:00)" + QUESTION
    )
    assert expected == failure.message
    assert failure.is_caused_by(NonDeterminismError)


def test_same_timer_fire_time_replays_in_either_form(kit):
    """The same time asked for as a datetime or as a delay replays fine: both come from the
    replayed current_utc_datetime, also in a later episode."""

    def as_delay(ctx, _):
        yield ctx.call_activity("a")
        yield ctx.create_timer(timedelta(seconds=10))
        return "woke"

    def as_datetime(ctx, _):
        yield ctx.call_activity("a")
        yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=10))
        return "woke"

    history = recorded(kit, as_delay, kit.start(), kit.episode(5, kit.done(0)))
    expected_timer = kit.timer(1, 15, t=5)
    assert expected_timer in history
    _, new = kit.replay(as_datetime, history, kit.episode(15, kit.fired(1, 15)))
    expected = [kit.completed("woke", t=15)]
    assert expected == new


def test_timer_recorded_without_its_fire_time_is_not_compared(kit):
    """A history recorded before TimerCreated carried the time asked for replays against
    code that asks for another time: there is nothing to compare with. (As before, the
    timer then waits on for the time the code asks for, as for a chunk.)"""
    history = [
        replace(e, final_fire_at=None) if isinstance(e, h.TimerCreated) else e
        for e in recorded(kit, timer_after(10), kit.start())
    ]
    executor, new = kit.replay(timer_after(20), history, kit.episode(10, kit.fired(0, 10)))
    expected = [kit.timer(1, 20, t=10)]
    assert expected == new
    executor.process(kit.episode(20, kit.fired(1, 20)))
    expected_done = [kit.completed("woke", t=20)]
    assert expected_done == executor.take_new_events()


def test_chunked_timer_replays_across_a_change_of_maximum_interval(kit):
    """A long timer recorded in 2 s chunks replays and finishes under 3 s chunks or none:
    the chunks' ends differ, the time asked for does not."""
    two = ExecutorOptions(maximum_timer_interval=timedelta(seconds=2))
    history = kit.run(
        timer_after(5), kit.start(), kit.episode(2, kit.fired(0, 2)), options=two
    ).history
    expected_recorded = [kit.timer(0, 2, final=5), kit.timer(1, 4, t=2, final=5)]
    assert expected_recorded == [e for e in history if isinstance(e, h.TimerCreated)]
    for interval in (timedelta(seconds=3), None):
        options = ExecutorOptions(maximum_timer_interval=interval)
        executor, new = kit.replay(
            timer_after(5), history, kit.episode(4, kit.fired(1, 4)), options=options
        )
        expected_new = [kit.timer(2, 5, t=4)]
        assert expected_new == new
        executor.process(kit.episode(5, kit.fired(2, 5)))
        expected_done = [kit.completed("woke", t=5)]
        assert expected_done == executor.take_new_events()


def test_changed_retry_delay_is_not_a_mismatch(kit):
    """A retry's back-off timer records no asked-for time: a retuned retry policy replays."""

    def calling(first_retry: float):
        def orch(ctx, _):
            policy = RetryPolicy(timedelta(seconds=first_retry), 3)
            return (yield ctx.call_activity("flaky", retry_policy=policy))

        return orch

    history = recorded(kit, calling(1), kit.start(), kit.episode(1, kit.fail(0)))
    expected_timer = kit.timer(1, 2, t=1, retry=True)
    assert expected_timer in history
    _, new = kit.replay(calling(30), history, kit.episode(2, kit.fired(1, 2)))
    expected = [kit.scheduled(2, "flaky", t=2, attempt=2)]
    assert expected == new
