"""Golden histories: histories captured from real runs, committed, replayed in CI.

If a change to the engine (or to these orchestrations) makes a stored history replay
differently, existing instances in users' data dirs would break the same way: these
tests catch it. Regenerate deliberately with
``python tests/golden/test_golden_histories.py --regenerate``.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest

import duraray as dr
from duraray.testing import ManualClock, Replayer, load_history, run_in_process, save_history

HERE = Path(__file__).parent / "histories"

app = dr.App("golden", partitions=2)


@app.activity
def double(ctx, n: int) -> int:
    return n * 2


@app.activity
def flaky(ctx, n: int) -> int:
    # Fails for the first attempt of each task id, then succeeds: a deterministic retry.
    if ctx.task_id == 0:
        raise RuntimeError("first attempt fails")
    return n


@app.orchestration
def chain(ctx, n: int):
    for _ in range(3):
        n = yield ctx.call_activity(double, input=n)
    ctx.set_custom_status({"done": True})
    return n


@app.orchestration
def fan_out(ctx, n: int):
    results = yield dr.when_all([ctx.call_activity(double, input=i) for i in range(n)])
    return sum(results)


@app.orchestration
def approval(ctx, _):
    event = ctx.wait_for_external_event("approve")
    timer = ctx.create_timer(timedelta(hours=1))
    winner = yield dr.when_any([event, timer])
    if winner is event:
        timer.cancel()
        return {"approved": event.get_result(), "uuid": str(ctx.new_uuid())}
    return {"approved": None}


@app.orchestration
def child(ctx, n: int):
    return (yield ctx.call_activity(double, input=n))


@app.orchestration
def parent(ctx, n: int):
    a = yield ctx.call_sub_orchestrator(child, input=n)
    b = yield ctx.call_activity(
        flaky, input=a, retry_policy=dr.RetryPolicy(timedelta(seconds=1), 3)
    )
    return [a, b]


CASES = {
    "chain": ("chain", 1, None),
    "fan_out": ("fan_out", 5, None),
    "approval": ("approval", None, "yes"),
    "parent": ("parent", 4, None),
}


def _capture(name: str) -> list[dr.HistoryEvent]:
    orchestration, payload, event = CASES[name]
    # Time skips to the next timer when the hub is idle, except while a test must
    # raise an event before the timer that races it.
    clock = ManualClock(auto_advance=event is None)
    with run_in_process(app, clock=clock) as client:
        iid = client.schedule_new_orchestration(orchestration, input=payload, instance_id=name)
        if event is not None:
            client.wait_for_orchestration_start(iid, timeout=10)
            client.raise_orchestration_event(iid, "approve", data=event)
        state = client.wait_for_orchestration_completion(iid, timeout=10)
        assert state.runtime_status is dr.OrchestrationStatus.COMPLETED, state
        return client.get_orchestration_history(iid)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_history_replays(name):
    """A committed history replays against the current code without a mismatch."""
    history = load_history(HERE / f"{name}.msgpack")
    Replayer(app).replay(history)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_history_matches_a_fresh_run(name):
    """A fresh run records the same sequence of events as the committed history.

    Episode markers are left out: how completions split into episodes depends on when
    activity threads finish, not on the engine's semantics.
    """

    def kinds(history: list[dr.HistoryEvent]) -> list[str]:
        return [type(e).__name__ for e in history if not isinstance(e, dr.OrchestratorStarted)]

    expected = kinds(load_history(HERE / f"{name}.msgpack"))
    actual = kinds(_capture(name))
    assert expected == actual


def test_changed_orchestration_is_detected():
    """Replaying the chain history against code that calls another activity fails."""
    changed = dr.App("golden-changed")
    changed.add_activity(double)
    changed.add_activity(lambda ctx, n: n, name="triple")

    @changed.orchestration(name="chain")
    def chain_v2(ctx, n: int):
        n = yield ctx.call_activity(double, input=n)
        n = yield ctx.call_activity("triple", input=n)
        return n

    history = load_history(HERE / "chain.msgpack")
    with pytest.raises(dr.NonDeterminismError, match="triple"):
        Replayer(changed).replay(history)


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        HERE.mkdir(exist_ok=True)
        for case in CASES:
            save_history(HERE / f"{case}.msgpack", _capture(case))
            print("wrote", HERE / f"{case}.msgpack")
