"""Replay executor: durable timers, their chunking, and the orchestration clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from duraray.orchestrations import history as h
from duraray.orchestrations.executor import ExecutorOptions
from duraray.orchestrations.task import when_any


def test_timedelta_timer_fires_at_now_plus_delay(kit):
    """create_timer(timedelta) records fire_at = current_utc_datetime + delay."""

    def orch(ctx, _):
        yield ctx.create_timer(timedelta(seconds=2))
        return ctx.current_utc_datetime

    run = kit.run(orch, kit.start(t=10), kit.episode(12, kit.fired(0, 12)))
    expected_first = [kit.timer(0, 12, t=10)]
    assert expected_first == run.steps[0]
    expected = kit.at(12)
    assert expected == run.output()


def test_timer_waits_until_it_fires(kit):
    """An orchestration waiting on a timer stays waiting through unrelated episodes."""

    def orch(ctx, _):
        yield ctx.create_timer(timedelta(seconds=5))
        return "done"

    run = kit.run(orch, kit.start(), kit.episode(1, kit.raised("noise")))
    expected: list[h.HistoryEvent] = []
    assert expected == run.new
    assert run.executor.is_waiting


def test_aware_datetime_timer_is_converted_to_utc(kit):
    """A timezone-aware fire_at is recorded in UTC."""
    plus_two = timezone(timedelta(hours=2))

    def orch(ctx, _):
        yield ctx.create_timer(datetime(2024, 1, 1, 2, 0, 30, tzinfo=plus_two))

    run = kit.run(orch, kit.start())
    expected = kit.at(30)
    actual = run.new[0].fire_at
    assert expected == actual
    assert UTC.utcoffset(None) == actual.utcoffset()


def test_naive_datetime_timer_is_treated_as_utc(kit):
    """A naive fire_at is taken to be UTC."""

    def orch(ctx, _):
        yield ctx.create_timer(datetime(2024, 1, 1, 0, 0, 45))
        return "woke"

    run = kit.run(orch, kit.start(), kit.episode(45, kit.fired(0, 45)))
    expected = [kit.timer(0, 45)]
    assert expected == run.steps[0]
    expected_output = "woke"
    assert expected_output == run.output()


def test_create_timer_rejects_other_types(kit):
    """create_timer with a number raises TypeError at the call site."""

    def orch(ctx, _):
        try:
            ctx.create_timer(5)
        except TypeError as exc:
            return str(exc)

    run = kit.run(orch, kit.start())
    expected = "create_timer takes a datetime or a timedelta"
    assert expected == run.output()


def test_long_timer_is_split_into_chunks(kit):
    """With a 2 s maximum interval a 5 s timer becomes 3 TimerCreated (2, 4, 5 s) and fires once."""
    options = ExecutorOptions(maximum_timer_interval=timedelta(seconds=2))

    def orch(ctx, _):
        yield ctx.create_timer(timedelta(seconds=5))
        return "done"

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(2, kit.fired(0, 2)),
        kit.episode(4, kit.fired(1, 4)),
        kit.episode(5, kit.fired(2, 5)),
        options=options,
    )
    expected = [
        kit.timer(0, 2, t=0, final=5),
        kit.timer(1, 4, t=2, final=5),
        kit.timer(2, 5, t=4),
    ]
    assert expected == run.of_type(h.TimerCreated)
    expected_output = "done"
    assert expected_output == run.output()
    expected_completions = 1
    assert expected_completions == len(run.of_type(h.ExecutionCompleted))


def test_chunk_fired_late_schedules_the_rest_from_the_clock(kit):
    """A chunk fired late schedules the next chunk from the episode time, capped by the due time."""
    options = ExecutorOptions(maximum_timer_interval=timedelta(seconds=2))

    def orch(ctx, _):
        yield ctx.create_timer(timedelta(seconds=5))
        return "done"

    run = kit.run(orch, kit.start(), kit.episode(4, kit.fired(0, 2, t=4)), options=options)
    expected = [kit.timer(1, 5, t=4)]
    assert expected == run.new


def test_timer_within_the_maximum_interval_is_not_split(kit):
    """A timer no longer than the maximum interval is one TimerCreated."""
    options = ExecutorOptions(maximum_timer_interval=timedelta(seconds=2))

    def orch(ctx, _):
        yield ctx.create_timer(timedelta(seconds=2))

    run = kit.run(orch, kit.start(), options=options)
    expected = [kit.timer(0, 2)]
    assert expected == run.new


def test_cancelled_chunked_timer_ignores_its_pending_chunk(kit):
    """Cancelling a chunked timer drops its pending chunk: that chunk firing changes nothing."""
    options = ExecutorOptions(maximum_timer_interval=timedelta(seconds=2))

    def orch(ctx, _):
        timer = ctx.create_timer(timedelta(seconds=5))
        event = ctx.wait_for_external_event("go")
        winner = yield when_any([timer, event])
        timer.cancel()
        yield ctx.create_timer(timedelta(seconds=1))
        return winner is event

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.raised("go")),
        kit.episode(2, kit.fired(0, 2)),
        kit.episode(3, kit.fired(1, 2)),
        options=options,
    )
    expected_steps = [
        [kit.timer(0, 2, final=5)],
        [kit.timer(1, 2, t=1)],
        [],
        [kit.completed(True, t=3)],
    ]
    assert expected_steps == run.steps


def test_cancelled_timer_firing_later_is_ignored(kit):
    """A timer cancelled before it fires is harmless: its TimerFired is ignored."""

    def orch(ctx, _):
        timer = ctx.create_timer(timedelta(seconds=10))
        timer.cancel()
        value = yield ctx.call_activity("a")
        second = yield ctx.call_activity("b")
        return [value, second, timer.is_cancelled]

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(10, kit.fired(0, 10)),
        kit.episode(11, kit.done(1, "x")),
        kit.episode(12, kit.done(2, "y")),
    )
    expected_steps = [
        [kit.timer(0, 10), kit.scheduled(1, "a")],
        [],
        [kit.scheduled(2, "b", t=11)],
        [kit.completed(["x", "y", True], t=12)],
    ]
    assert expected_steps == run.steps


def test_current_utc_datetime_comes_from_orchestrator_started(kit):
    """current_utc_datetime is the episode's OrchestratorStarted time and advances between them."""

    def orch(ctx, _):
        seen = [ctx.current_utc_datetime]
        yield ctx.call_activity("a")
        seen.append(ctx.current_utc_datetime)
        yield ctx.call_activity("b")
        seen.append(ctx.current_utc_datetime)
        return seen

    run = kit.run(orch, kit.start(t=1), kit.episode(7, kit.done(0)), kit.episode(30, kit.done(1)))
    expected = [kit.at(1), kit.at(7), kit.at(30)]
    assert expected == run.output()


def test_current_utc_datetime_is_identical_on_replay(kit):
    """Replaying the history gives the code the same clock values as the live run."""
    clocks: list[datetime] = []

    def orch(ctx, _):
        clocks.append(ctx.current_utc_datetime)
        yield ctx.call_activity("a")
        clocks.append(ctx.current_utc_datetime)
        yield ctx.call_activity("b")

    run = kit.run(orch, kit.start(t=1), kit.episode(7, kit.done(0)), check_replay=False)
    live = list(clocks)
    clocks.clear()
    kit.replay(orch, run.history)
    assert live == clocks


def test_execution_started_time_is_the_clock_without_orchestrator_started(kit):
    """Without an OrchestratorStarted event the clock is the ExecutionStarted timestamp."""

    def orch(ctx, _):
        return ctx.current_utc_datetime

    executor = kit.executor(orch)
    executor.process([kit.started(t=9)])
    expected = kit.at(9)
    assert expected == kit.dec(executor.take_new_events()[0].result)
