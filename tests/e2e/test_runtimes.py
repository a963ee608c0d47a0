"""The same end-to-end scenarios on both runtimes: in process and on Ray.

One hub per runtime serves the whole module (a Ray hub takes seconds to start), so every
test uses its own instance ids and entity keys. Activities here count nothing in process
memory: on Ray they run in worker processes.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

import duraray as dr

from .helpers import TIMEOUT, poll

app = dr.App("portable", partitions=4)


@app.activity
def plus_one(ctx: dr.ActivityContext, n: int) -> int:
    return n + 1


@app.activity
def fail(ctx: dr.ActivityContext, message: str) -> None:
    raise RuntimeError(message)


@app.activity
def compensate(ctx: dr.ActivityContext, n: int) -> str:
    return f"compensated {n}"


@app.orchestration
def chain(ctx: dr.OrchestrationContext, n: int):
    out = [n]
    for _ in range(10):
        n = yield ctx.call_activity(plus_one, input=n)
        out.append(n)
    return out


@app.orchestration
def fan_out(ctx: dr.OrchestrationContext, n: int):
    return (yield dr.when_all([ctx.call_activity(plus_one, input=i) for i in range(n)]))


@app.orchestration
def caught(ctx: dr.OrchestrationContext, _):
    try:
        yield ctx.call_activity(fail, input="boom")
    except dr.TaskFailedError as err:
        return [err.details.message, (yield ctx.call_activity(compensate, input=1))]
    return None


@app.orchestration
def uncaught(ctx: dr.OrchestrationContext, _):
    yield ctx.call_activity(fail, input="boom")


@app.orchestration
def approval(ctx: dr.OrchestrationContext, _):
    ctx.set_custom_status("waiting")
    events = []
    for _ in range(3):
        events.append((yield ctx.wait_for_external_event("step")))
    return events


@app.orchestration
def race(ctx: dr.OrchestrationContext, seconds: float):
    event = ctx.wait_for_external_event("approve")
    timer = ctx.create_timer(timedelta(seconds=seconds))
    winner = yield dr.when_any([event, timer])
    if winner is event:
        timer.cancel()
        return f"approved by {event.get_result()}"
    return "timed out"


@app.orchestration
def child(ctx: dr.OrchestrationContext, n: int):
    return (yield ctx.call_activity(plus_one, input=n))


@app.orchestration
def parent(ctx: dr.OrchestrationContext, n: int):
    a = yield ctx.call_sub_orchestrator(child, input=n)
    b = yield ctx.call_sub_orchestrator("child", input=a)
    return [a, b, ctx.instance_id]


@app.orchestration
def waiting_parent(ctx: dr.OrchestrationContext, _):
    yield ctx.call_sub_orchestrator(approval, instance_id=f"{ctx.instance_id}-child")


@app.orchestration
def counter_loop(ctx: dr.OrchestrationContext, n: int):
    if n < 5:
        ctx.continue_as_new(n + 1)
        return None
    return n


@app.orchestration
def sender(ctx: dr.OrchestrationContext, target: str):
    ctx.send_event(target, "step", data="from sender")
    ctx.send_event(f"{target}-missing", "step", data="nobody")
    return "sent"


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)

    def get(self) -> int:
        return self.get_state(int, 0)

    def fail(self) -> None:
        self.set_state(-1)
        raise ValueError("no")


@app.entity
class Account(dr.DurableEntity):
    def deposit(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)

    def balance(self) -> int:
        return self.get_state(int, 0)


@app.orchestration
def entity_caller(ctx: dr.OrchestrationContext, key: str):
    counter = dr.EntityId("counter", key)
    ctx.signal_entity(counter, "add", 5)
    seen = yield ctx.call_entity(counter, "get")
    try:
        yield ctx.call_entity(counter, "fail")
    except dr.EntityOperationFailedError as err:
        failure = "no" in str(err)
    after = yield ctx.call_entity(counter, "get")
    return [seen, failure, after]


@app.orchestration
def transfer(ctx: dr.OrchestrationContext, args: list):
    source, target, amount = (
        dr.EntityId("account", args[0]),
        dr.EntityId("account", args[1]),
        args[2],
    )
    with (yield ctx.lock_entities([source, target])):
        if (yield ctx.call_entity(source, "balance")) < amount:
            return False
        yield dr.when_all(
            [
                ctx.call_entity(source, "deposit", -amount),
                ctx.call_entity(target, "deposit", amount),
            ]
        )
    return True


@pytest.fixture(scope="module", params=["in_process", "ray"])
def hub(request, tmp_path_factory):
    """The module's hub on one runtime; shared by the module's tests."""
    data_dir = str(tmp_path_factory.mktemp(f"portable-{request.param}"))
    if request.param == "ray":
        request.getfixturevalue("ray_session")
        with app.run(data_dir=data_dir, activity_workers=2) as client:
            yield client
    else:
        with app.run(in_process=True, data_dir=data_dir) as client:
            yield client


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _done(client: dr.Client, iid: str) -> dr.OrchestrationState:
    return client.wait_for_orchestration_completion(iid, timeout=TIMEOUT * 3)


def test_chain_of_ten_activities(hub):
    """Ten chained activities from 1 produce [1..11]."""
    iid = hub.schedule_new_orchestration(chain, input=1, instance_id=_id("chain"))
    state = _done(hub, iid)
    expected = list(range(1, 12))
    assert expected == state.output
    assert "1" == state.serialized_input


def test_fan_out_results_in_order(hub):
    """A fan-out of 100 returns its results in scheduling order."""
    state = _done(hub, hub.schedule_new_orchestration(fan_out, input=100, instance_id=_id("fan")))
    expected = [i + 1 for i in range(100)]
    assert expected == state.output


def test_caught_failure_is_compensated(hub):
    """A failed activity is catchable and the compensation runs; the instance completes."""
    state = _done(hub, hub.schedule_new_orchestration(caught, instance_id=_id("caught")))
    expected = ["boom", "compensated 1"]
    assert expected == state.output


def test_uncaught_failure_fails_the_instance(hub):
    """An uncaught activity failure fails the instance with details."""
    state = _done(hub, hub.schedule_new_orchestration(uncaught, instance_id=_id("uncaught")))
    assert dr.OrchestrationStatus.FAILED == state.runtime_status
    assert "TaskFailedError" in state.failure_details.error_type
    assert "boom" in state.failure_details.message
    assert state.failure_details.stack_trace


def test_unregistered_orchestrator_fails(hub):
    """Scheduling an unknown orchestrator name fails the instance as not registered."""
    state = _done(hub, hub.schedule_new_orchestration("nope", instance_id=_id("nope")))
    assert dr.OrchestrationStatus.FAILED == state.runtime_status
    assert "NotRegistered" in state.failure_details.error_type


def test_history_links_completion_to_schedule(hub):
    """The history of a one-activity run links TaskCompleted to its TaskScheduled."""
    iid = hub.schedule_new_orchestration(child, input=1, instance_id=_id("hist"))
    _done(hub, iid)
    history = hub.get_orchestration_history(iid)
    scheduled = next(e for e in history if isinstance(e, dr.TaskScheduled))
    completed = next(e for e in history if isinstance(e, dr.TaskCompleted))
    assert isinstance(history[1], dr.ExecutionStarted)
    assert scheduled.event_id == completed.task_scheduled_id


def test_buffered_events_and_custom_status(hub):
    """Events raised before the waits are consumed in order; custom status is visible."""
    iid = hub.schedule_new_orchestration(approval, instance_id=_id("events"))
    for name, data in (("STEP", "a"), ("step", "b"), ("Step", "c")):
        hub.raise_orchestration_event(iid, name, data=data)
    state = _done(hub, iid)
    expected = ["a", "b", "c"]
    assert expected == state.output
    assert "waiting" == state.custom_status


def test_event_beats_timer(hub):
    """An event raised before a long timer wins the race."""
    iid = hub.schedule_new_orchestration(race, input=60, instance_id=_id("race"))
    hub.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    hub.raise_orchestration_event(iid, "approve", data="alice")
    assert "approved by alice" == _done(hub, iid).output


def test_timer_beats_missing_event(hub):
    """A short timer wins when no event comes."""
    iid = hub.schedule_new_orchestration(race, input=0.2, instance_id=_id("race"))
    assert "timed out" == _done(hub, iid).output


def test_suspend_holds_events_until_resume(hub):
    """A suspended instance applies events only after it resumes."""
    iid = hub.schedule_new_orchestration(approval, instance_id=_id("suspend"))
    hub.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    hub.suspend_orchestration(iid)
    for data in ("a", "b", "c"):
        hub.raise_orchestration_event(iid, "step", data=data)
    state = hub.get_orchestration_state(iid)
    assert dr.OrchestrationStatus.SUSPENDED == state.runtime_status
    hub.resume_orchestration(iid)
    expected = ["a", "b", "c"]
    assert expected == _done(hub, iid).output


def test_recursive_terminate(hub):
    """Terminating a parent also terminates its running sub-orchestration."""
    iid = hub.schedule_new_orchestration(waiting_parent, instance_id=_id("term"))
    poll(lambda: hub.get_orchestration_state(f"{iid}-child"), lambda s: s is not None)
    hub.terminate_orchestration(iid, output="reason")
    state = _done(hub, iid)
    assert dr.OrchestrationStatus.TERMINATED == state.runtime_status
    assert '"reason"' == state.serialized_output
    child_state = _done(hub, f"{iid}-child")
    assert dr.OrchestrationStatus.TERMINATED == child_state.runtime_status


def test_sub_orchestrations(hub):
    """Sub-orchestrations return their outputs; the child knows its parent."""
    iid = hub.schedule_new_orchestration(parent, input=1, instance_id=_id("parent"))
    expected = [2, 3, iid]
    assert expected == _done(hub, iid).output
    first_child = hub.get_orchestration_state(f"{iid}:0000")
    assert iid == first_child.parent_instance_id


def test_continue_as_new(hub):
    """continue_as_new loops until n == 5 with a fresh history per generation."""
    iid = hub.schedule_new_orchestration(counter_loop, input=0, instance_id=_id("loop"))
    state = _done(hub, iid)
    assert 5 == state.output
    starts = [e for e in hub.get_orchestration_history(iid) if isinstance(e, dr.ExecutionStarted)]
    assert 1 == len(starts)


def test_send_event_between_orchestrations(hub):
    """send_event delivers once to the target; a missing target does not fail the sender."""
    target = hub.schedule_new_orchestration(approval, instance_id=_id("target"))
    sent = hub.schedule_new_orchestration(sender, input=target, instance_id=_id("sender"))
    assert "sent" == _done(hub, sent).output
    # The sender's event travels partition to partition after the sender commits: wait
    # until the target has it, so the events below arrive after it.
    poll(
        lambda: hub.get_orchestration_history(target),
        lambda events: any(isinstance(e, dr.EventRaised) for e in events),
    )
    hub.raise_orchestration_event(target, "step", data="b")
    hub.raise_orchestration_event(target, "step", data="c")
    expected = ["from sender", "b", "c"]
    assert expected == _done(hub, target).output


def test_restart_purge_and_query(hub):
    """Restart reruns with the original input; purge deletes; queries page through all."""
    prefix = _id("q")
    ids = [
        hub.schedule_new_orchestration(child, input=i, instance_id=f"{prefix}-{i}")
        for i in range(9)
    ]
    hub.wait_for_orchestrations(ids, timeout=TIMEOUT * 3)
    restarted = hub.restart_orchestration(ids[0], restart_with_new_instance_id=True)
    assert 1 == _done(hub, restarted).output
    seen = []
    token = None
    while True:
        page = hub.query_instances(instance_id_prefix=prefix, page_size=4, continuation_token=token)
        seen.extend(s.instance_id for s in page.items)
        token = page.continuation_token
        if token is None:
            break
    assert sorted(ids) == sorted(seen)
    assert 1 == hub.purge_orchestration(ids[1]).deleted_instance_count
    assert hub.get_orchestration_state(ids[1]) is None


def test_entity_signals_and_calls(hub):
    """Signals accumulate; call_entity sees an earlier signal; a failed call rolls back."""
    key = _id("k")
    for _ in range(3):
        hub.signal_entity(dr.EntityId("counter", key), "add", 5)
    poll(lambda: hub.get_entity(f"@counter@{key}"), lambda e: e is not None and e.state == 15)
    iid = hub.schedule_new_orchestration(entity_caller, input=key, instance_id=_id("ent"))
    expected = [20, True, 20]
    assert expected == _done(hub, iid).output


def test_bank_transfers_conserve_money(hub):
    """Concurrent transfers with two-entity locks conserve the total and never overdraw."""
    prefix = _id("acct")
    accounts = [f"{prefix}-{i}" for i in range(10)]
    hub.signal_entities([(dr.EntityId("account", a), "deposit", 100) for a in accounts])
    pairs = [(accounts[i % 10], accounts[(i * 3 + 1) % 10], 30) for i in range(60)]
    pairs = [p for p in pairs if p[0] != p[1]]
    ids = hub.schedule_new_orchestrations(transfer, [list(p) for p in pairs])
    states = hub.wait_for_orchestrations(ids, timeout=TIMEOUT * 6)
    assert all(s.runtime_status is dr.OrchestrationStatus.COMPLETED for s in states)
    balances = [hub.get_entity(dr.EntityId("account", a)).state for a in accounts]
    assert 1000 == sum(balances)
    assert min(balances) >= 0
    assert all(hub.get_entity(dr.EntityId("account", a)).locked_by is None for a in accounts)
