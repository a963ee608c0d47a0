"""Properties of the replay executor: resuming a live generator and replaying agree.

A fan-out + chain orchestration (with a retried fan-out, an event raced against a timer,
custom status and new_uuid) is driven with completion orders and batchings drawn by
Hypothesis. At every episode a live executor and a fresh one that replays the accumulated
history must produce identical new events and state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from duraray._errors import TaskFailedError
from duraray.orchestrations import history as h
from duraray.orchestrations.executor import ExecutorOptions
from duraray.orchestrations.task import RetryPolicy, when_all, when_any

POLICY = RetryPolicy(timedelta(seconds=2), 2, backoff_coefficient=2)


def pipeline(ctx, n):
    ids = [str(ctx.new_uuid())]
    seed = yield ctx.call_activity("seed", input=n)
    ids.append(str(ctx.new_uuid()))
    ctx.set_custom_status({"stage": "fan-out", "n": n, "id": ids[-1]})
    squares = [ctx.call_activity("square", input=seed + i, retry_policy=POLICY) for i in range(n)]
    timeout = ctx.create_timer(timedelta(seconds=30))
    go = ctx.wait_for_external_event("go")
    winner = yield when_any([go, timeout])
    if winner is go:
        timeout.cancel()
    else:
        go.cancel()
    try:
        results = yield when_all(squares)
    except TaskFailedError as exc:
        results = [-1]
        ctx.send_event("auditor", "fan-out failed", data=exc.details.message)
    total = 0
    for value in results:
        total = yield ctx.call_activity("add", input=[total, value])
    ids.append(str(ctx.new_uuid()))
    ctx.set_custom_status({"stage": "done", "id": ids[-1]})
    return [total, winner is go, ctx.current_utc_datetime, ids]


@dataclass
class Trace:
    """Episodes fed to the live executor and what it returned after each."""

    episodes: list[list[h.HistoryEvent]] = field(default_factory=list)
    history: list[h.HistoryEvent] = field(default_factory=list)
    steps: list[list[h.HistoryEvent]] = field(default_factory=list)


def answer(kit, key: tuple[str, int], actions: dict[tuple[str, int], Any], fail: bool) -> Any:
    kind, seq = key
    if kind == "event":
        return kit.raised("GO", seq)
    action = actions[key]
    if kind == "timer":
        return kit.fire(action)
    if fail:
        return kit.fail(seq, f"attempt {seq} failed")
    value = kit.dec(action.input)
    if action.name == "square":
        value = value * value
    elif action.name == "add":
        value = sum(value)
    return kit.done(seq, value)


def drive(kit, data, fn, options: ExecutorOptions | None, on_step) -> Trace:
    """Run ``fn`` live, answering drawn batches of its open actions, until it ends."""
    n = data.draw(st.integers(min_value=0, max_value=4), label="n")
    live = kit.executor(fn, options=options)
    trace = Trace()
    outstanding: dict[tuple[str, int], Any] = {("event", 0): None}
    now = 0.0
    episode = kit.start(n)
    while True:
        before = list(trace.history)
        live.process(episode)
        new = live.take_new_events()
        on_step(before, episode, live, new)
        trace.episodes.append(episode)
        trace.steps.append(new)
        trace.history.extend([*episode, *new])
        if live.is_complete:
            return trace
        for event in new:
            if isinstance(event, h.TaskScheduled):
                outstanding[("task", event.event_id)] = event
            elif isinstance(event, h.TimerCreated):
                outstanding[("timer", event.event_id)] = event
        assert outstanding, "the orchestration waits for nothing that can happen"
        order = data.draw(st.permutations(sorted(outstanding)), label="order")
        size = data.draw(st.integers(min_value=1, max_value=len(order)), label="batch")
        now += data.draw(st.integers(min_value=0, max_value=3), label="advance")
        events = []
        for key in order[:size]:
            action = outstanding.pop(key)
            if key[0] == "timer":
                now = max(now, (action.fire_at - kit.T0).total_seconds())
            # Fan-out failures are retried or caught; a failed seed or add fails the run.
            odds = 3 if key[0] == "task" and action.name == "square" else 10
            fail = key[0] == "task" and data.draw(st.integers(1, odds), label="fail") == 1
            events.append(answer(kit, key, {key: action}, fail))
        episode = kit.episode(now, *events)


OPTIONS = st.sampled_from([None, ExecutorOptions(maximum_timer_interval=timedelta(seconds=12))])


@settings(max_examples=100, deadline=None)
@given(data=st.data(), options=OPTIONS)
def test_resuming_and_replaying_agree_at_every_episode(kit, data, options):
    """At every episode, the live executor and a replay of the history emit identical events."""

    def check(before, episode, live, new):
        fresh, replayed = kit.replay(pipeline, before, episode, options=options)
        assert new == replayed
        assert live.completion == fresh.completion
        assert live.custom_status == fresh.custom_status
        assert live.buffered_events() == fresh.buffered_events()
        assert live.is_waiting == fresh.is_waiting

    trace = drive(kit, data, pipeline, options, check)
    completion = trace.steps[-1][-1]
    assert isinstance(completion, h.ExecutionCompleted)
    _, replayed_all = kit.replay(pipeline, trace.history[:-1])
    assert completion == replayed_all[-1]


@settings(max_examples=100, deadline=None)
@given(data=st.data(), options=OPTIONS)
def test_live_run_equals_replay_of_all_but_the_last_episode(kit, data, options):
    """Replaying all but the last episode, then running it, ends like the live executor."""
    trace = drive(kit, data, pipeline, options, lambda *args: None)
    last = trace.episodes[-1]
    before_last = trace.history[: len(trace.history) - len(last) - len(trace.steps[-1])]
    fresh, new = kit.replay(pipeline, before_last, last, options=options)
    assert trace.steps[-1] == new
    assert fresh.is_complete
    live_output = kit.dec(trace.steps[-1][-1].result)
    fresh_output = kit.dec(fresh.completion.result)
    assert live_output == fresh_output


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_replay_reproduces_every_action_exactly_once(kit, data):
    """Replaying the whole waiting history of a run emits no action a second time."""
    snapshots: list[list[h.HistoryEvent]] = []

    def remember(before, episode, live, new):
        if not live.is_complete:
            snapshots.append([*before, *episode, *new])

    drive(kit, data, pipeline, None, remember)
    for history in snapshots:
        fresh, new = kit.replay(pipeline, history)
        expected: list[h.HistoryEvent] = []
        assert expected == new
        assert fresh.is_waiting
