"""End to end: continue_as_new generations, history reset and carried events."""

from __future__ import annotations

from datetime import timedelta

import duraray as dr

from .helpers import TIMEOUT, CallCounter

app = dr.App("e2e-continue-as-new")
calls = CallCounter()

Status = dr.OrchestrationStatus


@app.activity
def visit(ctx: dr.ActivityContext, generation: int) -> int:
    calls.hit((ctx.orchestration_id, generation))
    return generation


@app.orchestration
def count_to(ctx: dr.OrchestrationContext, state: list):
    n, limit = state
    yield ctx.call_activity(visit, input=n)
    if n < limit:
        ctx.continue_as_new([n + 1, limit])
        return None
    return {"n": n, "version": ctx.version, "tags": ctx.tags}


@app.orchestration
def plain_loop(ctx: dr.OrchestrationContext, n: int):
    if n < 5:
        ctx.continue_as_new(n + 1)
        return None
    return n


@app.orchestration
def carry_events(ctx: dr.OrchestrationContext, args: dict):
    if args["generation"] == 0:
        yield ctx.wait_for_external_event("first")
        ctx.continue_as_new({"generation": 1, "save": args["save"]}, save_events=args["save"])
        return None
    second = ctx.wait_for_external_event("second")
    timer = ctx.create_timer(timedelta(minutes=1))
    winner = yield dr.when_any([second, timer])
    return second.get_result() if winner is second else "dropped"


def test_five_generations(client):
    """continue_as_new loops from 0 to 5: final input 5, COMPLETED, and the history holds one ExecutionStarted."""
    iid = client.schedule_new_orchestration(count_to, input=[0, 5], tags={"t": "1"}, version="v2")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.COMPLETED
    assert expected == state.runtime_status
    expected_input = [5, 5]
    assert expected_input == state.input
    expected_output = {"n": 5, "version": "v2", "tags": {"t": "1"}}
    assert expected_output == state.output
    history = client.get_orchestration_history(iid)
    started = [e for e in history if isinstance(e, dr.ExecutionStarted)]
    expected = 1
    assert expected == len(started)
    assert expected_input == started[0].input
    expected_scheduled = 1
    assert expected_scheduled == sum(isinstance(e, dr.TaskScheduled) for e in history)
    expected_visits = [1] * 6
    assert expected_visits == [calls[(iid, g)] for g in range(6)]


def test_continue_as_new_without_yield(client):
    """A plain-function orchestrator that continues as new five times ends with its last input."""
    iid = client.schedule_new_orchestration(plain_loop, input=0)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = (5, 5)
    assert expected == (state.input, state.output)


def test_many_generations_complete(client):
    """Two hundred generations in a tight loop all run and the instance completes."""
    iid = client.schedule_new_orchestration(count_to, input=[0, 200])
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = 200
    assert expected == state.output["n"]


def test_save_events_carries_an_unconsumed_event(client):
    """With save_events=True an event received but not consumed reaches the next generation."""
    iid = client.schedule_new_orchestration(carry_events, input={"generation": 0, "save": True})
    client.raise_orchestration_event(iid, "second", data="kept")
    client.raise_orchestration_event(iid, "first")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = "kept"
    assert expected == state.output


def test_without_save_events_an_unconsumed_event_is_dropped(client):
    """With save_events=False an event received but not consumed is dropped at continue_as_new."""
    iid = client.schedule_new_orchestration(carry_events, input={"generation": 0, "save": False})
    client.raise_orchestration_event(iid, "second", data="lost")
    client.raise_orchestration_event(iid, "first")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = "dropped"
    assert expected == state.output
