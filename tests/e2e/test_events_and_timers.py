"""End to end: external events, send_event between orchestrations and durable timers."""

from __future__ import annotations

from datetime import timedelta

import pytest

import duraray as dr
from duraray.testing import ManualClock, run_in_process

from .helpers import TIMEOUT, CallCounter, poll

app = dr.App("e2e-events-timers")
calls = CallCounter()

Status = dr.OrchestrationStatus


@app.activity
def note(ctx: dr.ActivityContext, what: str) -> str:
    calls.hit((ctx.orchestration_id, what))
    return what


@app.orchestration
def approval_race(ctx: dr.OrchestrationContext, seconds: int):
    approval = ctx.wait_for_external_event("approve")
    timeout = ctx.create_timer(timedelta(seconds=seconds))
    winner = yield dr.when_any([approval, timeout])
    if winner is approval:
        timeout.cancel()
        return ["approved", approval.get_result()]
    approval.cancel()
    return ["timed out"]


@app.orchestration
def collect_abc(ctx: dr.OrchestrationContext, delay_first: bool):
    if delay_first:
        yield ctx.create_timer(timedelta(minutes=1))
    a = yield ctx.wait_for_external_event("A")
    b = yield ctx.wait_for_external_event("B")
    c = yield ctx.wait_for_external_event("C")
    return [a, b, c]


@app.orchestration
def wait_lower(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("approve"))


@app.orchestration
def two_items(ctx: dr.OrchestrationContext):
    first = yield ctx.wait_for_external_event("item")
    second = yield ctx.wait_for_external_event("Item")
    return [first, second]


@app.orchestration
def cancelled_wait(ctx: dr.OrchestrationContext):
    early = ctx.wait_for_external_event("x")
    timer = ctx.create_timer(timedelta(minutes=1))
    winner = yield dr.when_any([early, timer])
    early.cancel()
    ctx.set_custom_status("waiting again")
    later = yield ctx.wait_for_external_event("x")
    return [winner is timer, early.is_cancelled, later]


@app.orchestration
def receiver(ctx: dr.OrchestrationContext):
    first = yield ctx.wait_for_external_event("approval")
    second = ctx.wait_for_external_event("approval")
    timer = ctx.create_timer(timedelta(minutes=5))
    winner = yield dr.when_any([second, timer])
    return [first, second.get_result() if winner is second else "no second event"]


@app.orchestration
def sender(ctx: dr.OrchestrationContext, target: str):
    yield ctx.call_activity(note, input="before")
    ctx.send_event(target, "Approval", data="ok")
    yield ctx.call_activity(note, input="after")
    yield ctx.create_timer(timedelta(seconds=1))
    return "sent"


@app.orchestration
def sends_to_nobody_and_itself(ctx: dr.OrchestrationContext, missing: str):
    ctx.send_event(missing, "hello", data=1)
    ctx.send_event(ctx.instance_id, "self", data=2)
    return (yield ctx.wait_for_external_event("self"))


@app.orchestration
def timer_for(ctx: dr.OrchestrationContext, seconds: float):
    start = ctx.current_utc_datetime
    yield ctx.create_timer(timedelta(seconds=seconds))
    return [start, ctx.current_utc_datetime]


@app.orchestration
def timer_at(ctx: dr.OrchestrationContext):
    due = ctx.current_utc_datetime + timedelta(days=2)
    yield ctx.create_timer(due)
    return ctx.current_utc_datetime >= due


@app.orchestration
def long_timer(ctx: dr.OrchestrationContext):
    yield ctx.create_timer(timedelta(seconds=5))
    return "done"


def test_timer_wins_the_race_when_no_event_arrives(client):
    """An event wait raced with a timer in when_any completes with the timer branch when no event comes."""
    iid = client.schedule_new_orchestration(approval_race, input=1)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ["timed out"]
    assert expected == state.output
    history = client.get_orchestration_history(iid)
    assert any(isinstance(e, dr.TimerFired) for e in history)


def test_event_wins_the_race_before_the_timer(manual_client, manual_clock):
    """The event branch wins with its payload when raised before the timer; the cancelled timer is harmless."""
    iid = manual_client.schedule_new_orchestration(approval_race, input=1)
    manual_client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    manual_client.raise_orchestration_event(iid, "approve", data={"by": "alice"})
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ["approved", {"by": "alice"}]
    assert expected == state.output
    manual_clock.advance(timedelta(seconds=5))
    manual_client.hub_runtime.wait_idle(TIMEOUT)
    after = manual_client.get_orchestration_state(iid)
    assert expected == after.output
    expected = Status.COMPLETED
    assert expected == after.runtime_status
    assert not any(
        isinstance(e, dr.TimerFired) for e in manual_client.get_orchestration_history(iid)
    )


def test_events_raised_before_the_wait_are_buffered(client):
    """Events A, B, C raised right after the start are buffered and consumed in order."""
    iid = client.schedule_new_orchestration(collect_abc, input=False)
    for name in ("A", "B", "C"):
        client.raise_orchestration_event(iid, name, data=name.lower())
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ["a", "b", "c"]
    assert expected == state.output


def test_events_raised_out_of_order_while_busy_are_matched_by_name(manual_client, manual_clock):
    """Events C, A, B raised while the orchestrator is in a timer still give ["a", "b", "c"]."""
    iid = manual_client.schedule_new_orchestration(collect_abc, input=True)
    manual_client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    for name in ("C", "A", "B"):
        manual_client.raise_orchestration_event(iid, name, data=name.lower())
    manual_clock.advance(timedelta(minutes=1))
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ["a", "b", "c"]
    assert expected == state.output


def test_event_names_are_case_insensitive(client):
    """raise("APPROVE") satisfies wait_for_external_event("approve")."""
    iid = client.schedule_new_orchestration(wait_lower)
    client.raise_orchestration_event(iid, "APPROVE", data=True)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = True
    assert expected == state.output


def test_same_name_events_are_delivered_fifo(client):
    """Two events with the same name go, in order, to two successive waits."""
    iid = client.schedule_new_orchestration(two_items)
    client.raise_orchestration_event(iid, "ITEM", data=1)
    client.raise_orchestration_event(iid, "item", data=2)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = [1, 2]
    assert expected == state.output


def test_cancelled_wait_does_not_consume_a_later_event(client):
    """A cancelled event wait leaves the next event with that name to the next waiter."""
    iid = client.schedule_new_orchestration(cancelled_wait)
    poll(lambda: client.get_orchestration_state(iid).custom_status, lambda s: s == "waiting again")
    client.raise_orchestration_event(iid, "x", data="late")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = [True, True, "late"]
    assert expected == state.output


def test_send_event_is_received_exactly_once():
    """send_event from one orchestration is received once by the target, even when the sender replays."""
    # No cached generators: every episode of the sender is a replay of its history.
    with run_in_process(
        app, clock=ManualClock(auto_advance=True), max_cached_orchestrations=0
    ) as client:
        target = client.schedule_new_orchestration(receiver, instance_id="receiver-1")
        client.wait_for_orchestration_start(target, timeout=TIMEOUT)
        source = client.schedule_new_orchestration(sender, input=target)
        expected_sender = "sent"
        assert (
            expected_sender
            == client.wait_for_orchestration_completion(source, timeout=TIMEOUT).output
        )
        state = client.wait_for_orchestration_completion(target, timeout=TIMEOUT)
        expected = ["ok", "no second event"]
        assert expected == state.output
        raised = [
            e for e in client.get_orchestration_history(target) if isinstance(e, dr.EventRaised)
        ]
        expected_names = ["Approval"]
        assert expected_names == [e.name for e in raised]
        sent = [e for e in client.get_orchestration_history(source) if isinstance(e, dr.EventSent)]
        expected = 1
        assert expected == len(sent)
        expected_counts = (1, 1)
        assert expected_counts == (calls[(source, "before")], calls[(source, "after")])


def test_send_event_to_missing_instance_or_itself_does_not_fail(client):
    """send_event to a missing instance or to the sender itself does not fail the sender."""
    iid = client.schedule_new_orchestration(sends_to_nobody_and_itself, input="nobody-home")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.COMPLETED
    assert expected == state.runtime_status
    expected_output = 2
    assert expected_output == state.output
    assert client.get_orchestration_state("nobody-home") is None


def test_send_event_to_a_completed_instance_does_not_fail(client):
    """send_event to an instance that already completed is dropped without failing the sender."""
    done = client.schedule_new_orchestration(timer_for, input=0.5)
    client.wait_for_orchestration_completion(done, timeout=TIMEOUT)
    iid = client.schedule_new_orchestration(sender, input=done)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.COMPLETED
    assert expected == state.runtime_status
    expected = Status.COMPLETED
    assert expected == client.get_orchestration_state(done).runtime_status


def test_timer_fires_no_earlier_than_due(manual_client, manual_clock):
    """A 2 s timer does not fire after 1 s of hub time, fires after 2 s, and the code resumes later."""
    iid = manual_client.schedule_new_orchestration(timer_for, input=2)
    manual_client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    manual_clock.advance(timedelta(seconds=1))
    with pytest.raises(TimeoutError):
        manual_client.wait_for_orchestration_completion(iid, timeout=0.2)
    manual_clock.advance(timedelta(seconds=1))
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    start, end = state.output
    assert end - start >= timedelta(seconds=2)
    history = manual_client.get_orchestration_history(iid)
    created = next(e for e in history if isinstance(e, dr.TimerCreated))
    fired = next(e for e in history if isinstance(e, dr.TimerFired))
    assert created.event_id == fired.timer_id
    assert fired.timestamp >= created.fire_at


def test_timer_at_an_absolute_time(client):
    """create_timer with a datetime resumes the orchestration at or after that time."""
    iid = client.schedule_new_orchestration(timer_at)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = True
    assert expected == state.output


def test_long_timer_is_split_by_the_maximum_interval():
    """A 5 s timer under a 2 s maximum_timer_interval fires as three chunks and completes once."""
    with run_in_process(
        app, clock=ManualClock(auto_advance=True), maximum_timer_interval=timedelta(seconds=2)
    ) as client:
        iid = client.schedule_new_orchestration(long_timer)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        expected = "done"
        assert expected == state.output
        history = client.get_orchestration_history(iid)
        created = [e for e in history if isinstance(e, dr.TimerCreated)]
        expected_chunks = 3
        assert expected_chunks == len(created)
        started = next(e for e in history if isinstance(e, dr.ExecutionStarted)).timestamp
        assert created[-1].fire_at == started + timedelta(seconds=5)


def test_raise_event_to_unknown_instance(client):
    """Raising an event to an unknown instance id raises InstanceNotFoundError."""
    with pytest.raises(dr.InstanceNotFoundError):
        client.raise_orchestration_event("nobody", "approve")


def test_raise_event_to_completed_instance(client):
    """Raising an event to a completed instance raises InstanceStateError."""
    iid = client.schedule_new_orchestration(wait_lower)
    client.raise_orchestration_event(iid, "approve", data=1)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    with pytest.raises(dr.InstanceStateError):
        client.raise_orchestration_event(iid, "approve", data=2)
    expected = 1
    assert expected == client.get_orchestration_state(iid).output


@app.orchestration
def wait_with_timeout(ctx: dr.OrchestrationContext, seconds: float):
    try:
        value = yield ctx.wait_for_external_event("approve", timeout=seconds)
    except TimeoutError as exc:
        # The late event stays buffered for the next wait.
        late = yield ctx.wait_for_external_event("approve")
        return ["timed out", str(exc), late]
    return ["approved", value]


def test_a_wait_with_a_timeout_raises_timeout_error_on_the_orchestration_clock(
    manual_client, manual_clock
):
    """wait_for_external_event(timeout=...) raises TimeoutError when its durable timer
    fires first; the event raised later is not consumed by the timed-out wait."""
    iid = manual_client.schedule_new_orchestration(wait_with_timeout, input=30)
    manual_client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    manual_clock.advance(timedelta(seconds=29))
    manual_client.hub_runtime.wait_idle(TIMEOUT)
    assert Status.RUNNING == manual_client.get_orchestration_state(iid).runtime_status
    manual_clock.advance(timedelta(seconds=2))
    manual_client.hub_runtime.wait_idle(TIMEOUT)
    manual_client.raise_orchestration_event(iid, "approve", data="late")
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert ["timed out", "no event 'approve' within 0:00:30", "late"] == state.output


def test_a_wait_with_a_timeout_returns_the_event_that_comes_in_time(manual_client, manual_clock):
    iid = manual_client.schedule_new_orchestration(wait_with_timeout, input=30)
    manual_client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    manual_client.raise_orchestration_event(iid, "approve", data={"by": "bo"})
    state = manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert ["approved", {"by": "bo"}] == state.output
    manual_clock.advance(timedelta(seconds=60))  # the cancelled timer changes nothing
    manual_client.hub_runtime.wait_idle(TIMEOUT)
    assert not any(
        isinstance(e, dr.TimerFired) for e in manual_client.get_orchestration_history(iid)
    )


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "10", True])
def test_a_bad_timeout_fails_at_the_call(client, timeout):
    """A timeout that is not a positive duration is refused where the code asks for it."""

    @app.orchestration(name=f"bad_timeout_{timeout!s}")
    def bad(ctx: dr.OrchestrationContext):
        yield ctx.wait_for_external_event("x", timeout=timeout)

    state = client.wait_for_orchestration_completion(
        client.schedule_new_orchestration(bad), timeout=TIMEOUT
    )
    assert Status.FAILED == state.runtime_status
    assert "timeout" in state.failure_details.message
