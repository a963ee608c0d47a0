"""End to end: replay determinism: Replayer against real histories, saved histories, replay-only context."""

from __future__ import annotations

from datetime import timedelta

import pytest

import duraray as dr
from duraray.testing import ManualClock, Replayer, load_history, run_in_process, save_history

from .helpers import TIMEOUT, CallCounter

app = dr.App("e2e-replay")


@app.activity
def reserve(ctx: dr.ActivityContext, sku: str) -> str:
    return f"reserved {sku}"


@app.activity
def charge(ctx: dr.ActivityContext, amount: int) -> str:
    return f"charged {amount}"


@app.orchestration
def checkout(ctx: dr.OrchestrationContext, order: dict):
    reserved = yield ctx.call_activity(reserve, input=order["sku"])
    charged = yield ctx.call_activity(charge, input=order["amount"])
    return [reserved, charged]


# -- changed versions of `checkout`, each registered under the same name in its own app ----

swapped_app = dr.App("e2e-replay-swapped")


@swapped_app.orchestration(name="checkout")
def checkout_swapped(ctx: dr.OrchestrationContext, order: dict):
    charged = yield ctx.call_activity("charge", input=order["amount"])
    reserved = yield ctx.call_activity("reserve", input=order["sku"])
    return [reserved, charged]


timer_app = dr.App("e2e-replay-timer")


@timer_app.orchestration(name="checkout")
def checkout_with_timer(ctx: dr.OrchestrationContext, order: dict):
    yield ctx.create_timer(timedelta(seconds=1))
    charged = yield ctx.call_activity("charge", input=order["amount"])
    return [None, charged]


shorter_app = dr.App("e2e-replay-shorter")


@shorter_app.orchestration(name="checkout")
def checkout_without_charge(ctx: dr.OrchestrationContext, order: dict):
    reserved = yield ctx.call_activity("reserve", input=order["sku"])
    return [reserved, "free"]


compatible_app = dr.App("e2e-replay-compatible")


@compatible_app.orchestration(name="checkout")
def checkout_with_logging(ctx: dr.OrchestrationContext, order: dict):
    # Same actions in the same order; only local computation changed.
    sku = str(order["sku"]).strip()
    reserved = yield ctx.call_activity("reserve", input=sku)
    charged = yield ctx.call_activity("charge", input=order["amount"])
    return [reserved.upper(), charged]


# -- the replay-only context features -----------------------------------------------------


class ListLogger:
    """A stand-in logger that records messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def info(self, message: str) -> None:
        self.messages.append(message)


replay_log = ListLogger()
observations: list[tuple[str, bool, str, object]] = []


@app.orchestration
def replay_aware(ctx: dr.OrchestrationContext):
    log = ctx.create_replay_safe_logger(replay_log)
    first, second = ctx.new_uuid(), ctx.new_uuid()
    observations.append((ctx.instance_id, ctx.is_replaying, str(first), ctx.current_utc_datetime))
    log.info(f"{ctx.instance_id} before")
    yield ctx.call_activity(reserve, input="a")
    log.info(f"{ctx.instance_id} middle")
    yield ctx.create_timer(timedelta(seconds=1))
    third = ctx.new_uuid()
    observations.append((ctx.instance_id, ctx.is_replaying, str(third), ctx.current_utc_datetime))
    log.info(f"{ctx.instance_id} after")
    return [str(first), str(second), str(third), ctx.is_replaying]


@app.activity
def flaky_twice(ctx: dr.ActivityContext, key: str) -> str:
    if flaky_counts.hit(key) <= 2:
        raise RuntimeError("not yet")
    return "finally"


flaky_counts = CallCounter()


@app.orchestration
def child_echo(ctx: dr.OrchestrationContext, value):
    return value


@app.orchestration
def kitchen_sink(ctx: dr.OrchestrationContext, key: str):
    """Every kind of action and completion, for replay checks."""
    ctx.set_custom_status("started")
    retried = yield ctx.call_activity(
        flaky_twice, input=key, retry_policy=dr.RetryPolicy(timedelta(seconds=1), 3)
    )
    yield ctx.create_timer(timedelta(minutes=1))
    child = yield ctx.call_sub_orchestrator(child_echo, input=[1, 2])
    ctx.send_event(ctx.instance_id, "to-self", data="echo")
    got = yield ctx.wait_for_external_event("to-self")
    event = ctx.wait_for_external_event("never")
    timer = ctx.create_timer(timedelta(seconds=5))
    winner = yield dr.when_any([event, timer])
    fanned = yield dr.when_all([ctx.call_activity(reserve, input=str(i)) for i in range(3)])
    try:
        yield ctx.call_activity("not_registered")
    except dr.TaskFailedError:
        caught = True
    uid = ctx.new_uuid()
    return [retried, child, got, winner is timer, fanned, caught, str(uid)]


def _checkout_history(client: dr.Client) -> list[dr.HistoryEvent]:
    iid = client.schedule_new_orchestration(checkout, input={"sku": "apple", "amount": 3})
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ["reserved apple", "charged 3"]
    assert expected == state.output
    return client.get_orchestration_history(iid)


def test_replayer_accepts_a_real_history(client):
    """The Replayer replays a history captured from a real run against the unchanged code."""
    history = _checkout_history(client)
    Replayer(app).replay(history)


def test_replayer_accepts_a_compatible_change(client):
    """A change that keeps the same actions in the same order replays without error."""
    Replayer(compatible_app).replay(_checkout_history(client))


def test_replayer_detects_swapped_activities(client):
    """Replaying against code that calls the activities in another order raises NonDeterminismError naming both."""
    history = _checkout_history(client)
    with pytest.raises(dr.NonDeterminismError) as info:
        Replayer(swapped_app).replay(history)
    message = str(info.value)
    assert "reserve" in message
    assert "charge" in message


def test_replayer_detects_an_activity_replaced_by_a_timer(client):
    """Replaying against code that now creates a timer where an activity was raises NonDeterminismError."""
    history = _checkout_history(client)
    with pytest.raises(dr.NonDeterminismError, match="create_timer"):
        Replayer(timer_app).replay(history)


def test_replayer_detects_a_dropped_activity(client):
    """Replaying against code that no longer schedules a recorded activity raises NonDeterminismError."""
    history = _checkout_history(client)
    with pytest.raises(dr.NonDeterminismError, match="charge"):
        Replayer(shorter_app).replay(history)


def test_replayer_needs_the_orchestration_registered(client):
    """Replaying a history whose orchestration is not registered raises KeyError."""
    history = _checkout_history(client)
    with pytest.raises(KeyError):
        Replayer(dr.App("e2e-replay-empty")).replay(history)


def test_replayer_accepts_every_kind_of_event(client):
    """A history with retries, timers, a sub-orchestration, events, when_any/when_all and a caught failure replays cleanly."""
    iid = client.schedule_new_orchestration(kitchen_sink, input="replayer")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state.failure_details is None, state.failure_details
    expected = ["finally", [1, 2], "echo", True]
    assert expected == state.output[:4]
    Replayer(app).replay(client.get_orchestration_history(iid))


def test_engine_replays_every_kind_of_event():
    """With no cached generators the engine replays every episode of the kitchen sink and gets the same output."""
    with run_in_process(
        app, clock=ManualClock(auto_advance=True), max_cached_orchestrations=0
    ) as replaying:
        iid = replaying.schedule_new_orchestration(kitchen_sink, input="engine")
        state = replaying.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state.failure_details is None, state.failure_details
    expected = ["finally", [1, 2], "echo", True, ["reserved 0", "reserved 1", "reserved 2"], True]
    assert expected == state.output[:6]


def test_saved_history_round_trips(client, tmp_path):
    """save_history then load_history returns an equal history that still replays."""
    history = _checkout_history(client)
    path = tmp_path / "checkout.history"
    save_history(path, history)
    loaded = load_history(path)
    assert history == loaded
    Replayer(app).replay(loaded)
    with pytest.raises(dr.NonDeterminismError):
        Replayer(swapped_app).replay(loaded)


def test_replay_keeps_uuids_and_silences_the_replay_safe_logger():
    """With every episode replayed, new_uuid values and times repeat, is_replaying flips, each log line appears once."""
    with run_in_process(
        app, clock=ManualClock(auto_advance=True), max_cached_orchestrations=0
    ) as client:
        iid = client.schedule_new_orchestration(replay_aware)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    first, second, third, replaying_at_end = state.output
    expected = 3
    assert expected == len({first, second, third})
    assert replaying_at_end is False
    mine = [o for o in observations if o[0] == iid]
    # Each code point saw one uuid and one orchestration time on every (re)play.
    by_point = {(o[2], o[3]) for o in mine}
    expected_points = 2
    assert expected_points == len(by_point)
    assert {first, third} == {uuid for uuid, _ in by_point}
    before, after = sorted(t for _, t in by_point)
    assert after - before >= timedelta(seconds=1), "the clock advances between episodes"
    assert any(o[1] for o in mine), "the orchestration was never replayed"
    expected = [f"{iid} before", f"{iid} middle", f"{iid} after"]
    assert expected == [m for m in replay_log.messages if m.startswith(iid)]
