"""End to end: replay compares the time a timer was asked for, across chunking and restarts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import duraray as dr
from duraray.testing import ManualClock, Replayer, load_history, run_in_process

from .helpers import TIMEOUT

GOLDEN = Path(__file__).parent.parent / "golden" / "histories"

app = dr.App("e2e-timer-time")


@app.orchestration
def nap(ctx: dr.OrchestrationContext, hours: int):
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(hours=hours))
    return "rested"


# The same orchestration asking for another time, under the same name.
changed_app = dr.App("e2e-timer-time-changed")


@changed_app.orchestration(name="nap")
def longer_nap(ctx: dr.OrchestrationContext, hours: int):
    yield ctx.create_timer(timedelta(hours=hours + 1))
    return "rested"


# The golden "approval" orchestration with its one-hour timeout made two hours.
approval_app = dr.App("e2e-timer-time-approval")


@approval_app.orchestration(name="approval")
def approval(ctx: dr.OrchestrationContext, _):
    event = ctx.wait_for_external_event("approve")
    timer = ctx.create_timer(timedelta(hours=2))
    winner = yield dr.when_any([event, timer])
    if winner is event:
        timer.cancel()
        return {"approved": event.get_result(), "uuid": str(ctx.new_uuid())}
    return {"approved": None}


def _run_nap(hours: int) -> list[dr.HistoryEvent]:
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
        iid = client.schedule_new_orchestration(nap, input=hours)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert dr.OrchestrationStatus.COMPLETED == state.runtime_status, state
        return client.get_orchestration_history(iid)


def test_history_replayed_against_another_fire_time_names_both_times():
    """A recorded timer replays against the same code, and fails against code asking for
    another time with a NonDeterminismError naming both times."""
    history = _run_nap(1)
    created = [e for e in history if isinstance(e, dr.TimerCreated)]
    assert [e.final_fire_at for e in created] == [e.fire_at for e in created]
    Replayer(app).replay(history)
    with pytest.raises(dr.NonDeterminismError) as caught:
        Replayer(changed_app).replay(history)
    expected = (
        "history has create_timer(fire_at=2026-01-01T01:00:00+00:00) at #0, the code now "
        "calls create_timer(fire_at=2026-01-01T02:00:00+00:00)"
    )
    assert expected in str(caught.value)


def test_golden_history_without_the_fire_time_replays_against_another_time():
    """A history stored before TimerCreated carried the time asked for (the golden
    "approval") replays against code asking for another time: nothing to compare."""
    history = load_history(GOLDEN / "approval.msgpack")
    created = [e for e in history if isinstance(e, dr.TimerCreated)]
    assert created
    assert all(e.final_fire_at is None for e in created)
    Replayer(approval_app).replay(history)


def test_chunked_timer_goes_on_after_a_restart_with_another_maximum_interval(tmp_path):
    """A timer chunked by the hour runs on, after a restart chunking by two hours, to the
    time it was asked for: the chunks differ, the time asked for does not."""
    clock = ManualClock()
    with run_in_process(
        app, clock=clock, data_dir=tmp_path, maximum_timer_interval=timedelta(hours=1)
    ) as client:
        iid = client.schedule_new_orchestration(nap, input=3, instance_id="napper")
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        clock.advance(timedelta(hours=1))  # the first chunk fires; the second is created
        assert client.hub_runtime.wait_idle(TIMEOUT)
        history = client.get_orchestration_history(iid)
        created = [e for e in history if isinstance(e, dr.TimerCreated)]
        expected_chunks = 2
        assert expected_chunks == len(created)
    due = created[0].timestamp + timedelta(hours=3)
    later = ManualClock(clock.now(), auto_advance=True)
    with run_in_process(
        app, clock=later, data_dir=tmp_path, maximum_timer_interval=timedelta(hours=2)
    ) as client:
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert dr.OrchestrationStatus.COMPLETED == state.runtime_status, state.failure_details
        history = client.get_orchestration_history(iid)
        replays = sum(p["counters"]["replays"] for p in client.partition_stats())
    assert replays >= 1  # the restarted hub rebuilt the instance from its history
    created = [e for e in history if isinstance(e, dr.TimerCreated)]
    assert all(e.final_fire_at == due for e in created)
    fired = [e for e in history if isinstance(e, dr.TimerFired)]
    assert due == fired[-1].fire_at
