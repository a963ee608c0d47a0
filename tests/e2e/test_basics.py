"""End to end: starting orchestrations, activities, fan-out, history, state and call-site checks."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

import duraray as dr
from duraray.testing import ManualClock, run_in_process

from .helpers import TIMEOUT, CallCounter, poll

app = dr.App("e2e-basics")
calls = CallCounter()


@dataclass
class Order:
    sku: str
    quantity: int


@app.activity
def plus_one(ctx: dr.ActivityContext, value: int) -> int:
    return value + 1


@app.activity
def shuffled_square(ctx: dr.ActivityContext, value: int) -> int:
    # Later inputs finish first more often than not: results must still come back in order.
    time.sleep(0.0005 * ((100 - value) % 7))
    calls.hit((ctx.orchestration_id, value))
    return value * value


@app.activity
def describe_call(ctx: dr.ActivityContext) -> dict:
    return {
        "orchestration_id": ctx.orchestration_id,
        "task_id": ctx.task_id,
        "name": ctx.name,
        "tags": ctx.tags,
    }


@app.activity
def total_price(ctx: dr.ActivityContext, order: Order) -> float:
    assert isinstance(order, Order)
    return order.quantity * 2.5


@app.activity
async def async_double(ctx: dr.ActivityContext, value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


@app.activity
def returns_garbage(ctx: dr.ActivityContext) -> object:
    return threading.Lock()


@app.orchestration
def calls_async(ctx: dr.OrchestrationContext, value: int):
    return (yield ctx.call_activity(async_double, input=value))


@app.orchestration
def activity_returns_garbage(ctx: dr.OrchestrationContext):
    return (yield ctx.call_activity(returns_garbage))


@app.orchestration
def orchestrator_returns_garbage(ctx: dr.OrchestrationContext):
    return threading.Lock()


@app.orchestration
def sum_of_events(ctx: dr.OrchestrationContext, count: int):
    total = 0
    for _ in range(count):
        total += yield ctx.wait_for_external_event("add")
    return total


@app.activity
def identity(ctx: dr.ActivityContext, value):
    return value


@app.orchestration
def round_trip(ctx: dr.OrchestrationContext, value):
    through_activity = yield ctx.call_activity(identity, input=value)
    ctx.set_custom_status(through_activity)
    from_event = yield ctx.wait_for_external_event("payload")
    return [through_activity, from_event]


@app.activity
def big_result(ctx: dr.ActivityContext) -> str:
    return "x" * 4096


@app.activity
def length_of(ctx: dr.ActivityContext, value: str) -> int:
    return len(value)


@app.orchestration
def big_activity_input(ctx: dr.OrchestrationContext):
    try:
        yield ctx.call_activity(length_of, input="x" * 4096)
    except dr.SerializationError:
        return "rejected at the call site"
    return "accepted"


@app.orchestration
def big_activity_result(ctx: dr.OrchestrationContext):
    return (yield ctx.call_activity(big_result))


@app.orchestration
def big_output(ctx: dr.OrchestrationContext):
    return "x" * 4096


@app.orchestration
def bad_calls_inside(ctx: dr.OrchestrationContext):
    caught = []
    try:
        ctx.call_activity(length_of, input=object())
    except dr.SerializationError:
        caught.append("input")
    try:
        ctx.wait_for_external_event("")
    except ValueError:
        caught.append("event name")
    try:
        ctx.send_event("bad\x00id", "x")
    except ValueError:
        caught.append("instance id")
    return caught
    yield  # a generator, like any orchestrator that could yield


slow_gate = threading.Event()


@app.activity
def slow(ctx: dr.ActivityContext) -> str:
    slow_gate.wait(TIMEOUT)
    calls.hit((ctx.orchestration_id, "slow"))
    return "slow"


@app.activity
def fast(ctx: dr.ActivityContext) -> str:
    return "fast"


@app.orchestration
def first_of_two(ctx: dr.OrchestrationContext):
    slow_task = ctx.call_activity(slow)
    fast_task = ctx.call_activity(fast)
    winner = yield dr.when_any([slow_task, fast_task])
    return [winner is fast_task, winner.get_result()]


@app.orchestration
def returns_at_once(ctx: dr.OrchestrationContext):
    return None


@app.orchestration
def chain_of_ten(ctx: dr.OrchestrationContext, start: int):
    values = [start]
    for _ in range(10):
        values.append((yield ctx.call_activity(plus_one, input=values[-1])))
    return values


@app.orchestration
def fan_out(ctx: dr.OrchestrationContext, count: int):
    tasks = [ctx.call_activity(shuffled_square, input=i) for i in range(count)]
    return (yield dr.when_all(tasks))


@app.orchestration
def one_activity(ctx: dr.OrchestrationContext, value: int):
    return (yield ctx.call_activity(plus_one, input=value))


@app.orchestration
def by_name(ctx: dr.OrchestrationContext):
    return (yield ctx.call_activity("describe_call", tags={"team": "blue"}))


@app.orchestration
def price_order(ctx: dr.OrchestrationContext, order: Order):
    assert isinstance(order, Order)
    return (yield ctx.call_activity(total_price, input=order))


@app.orchestration
def who_am_i(ctx: dr.OrchestrationContext):
    return {
        "instance_id": ctx.instance_id,
        "name": ctx.name,
        "version": ctx.version,
        "tags": ctx.tags,
        "parent_instance_id": ctx.parent_instance_id,
        "has_execution_id": bool(ctx.execution_id),
    }


@app.orchestration
def staged(ctx: dr.OrchestrationContext):
    ctx.set_custom_status({"stage": 1})
    yield ctx.wait_for_external_event("next")
    ctx.set_custom_status({"stage": 2})
    clear = yield ctx.wait_for_external_event("finish")
    if clear:
        ctx.set_custom_status(None)
    return "done"


@app.orchestration
def waits_forever(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("never"))


@app.orchestration
def sleeps_an_hour(ctx: dr.OrchestrationContext):
    before = ctx.current_utc_datetime
    yield ctx.create_timer(timedelta(hours=1))
    return [before, ctx.current_utc_datetime]


def test_orchestration_without_yield_completes(client):
    """An orchestrator that returns without yielding completes with output None and no failure."""
    iid = client.schedule_new_orchestration(returns_at_once)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = dr.OrchestrationStatus.COMPLETED
    assert expected == state.runtime_status
    assert state.output is None
    assert state.failure_details is None
    assert state.completed_at is not None


def test_ten_chained_activities(client):
    """Ten chained plus_one activities from input 1 produce [1..11]; the serialized input is "1"."""
    iid = client.schedule_new_orchestration(chain_of_ten, input=1)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = list(range(1, 12))
    assert expected == state.output
    expected = "1"
    assert expected == state.serialized_input
    expected = "chain_of_ten"
    assert expected == state.name


def test_fan_out_of_100_returns_results_in_order(client):
    """A fan-out of 100 activities with when_all returns their results in scheduling order."""
    iid = client.schedule_new_orchestration(fan_out, input=100)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = [i * i for i in range(100)]
    assert expected == state.output
    expected_counts = {(iid, i): 1 for i in range(100)}
    assert expected_counts == {k: v for k, v in calls.snapshot().items() if k[0] == iid}


def test_history_of_one_activity_run(client):
    """The history of a one-activity run has ExecutionStarted, TaskScheduled and a matching TaskCompleted."""
    iid = client.schedule_new_orchestration(one_activity, input=41)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    history = client.get_orchestration_history(iid)
    kinds = [type(e).__name__ for e in history]
    for expected in ("ExecutionStarted", "TaskScheduled", "TaskCompleted", "ExecutionCompleted"):
        assert expected in kinds
    started = next(e for e in history if isinstance(e, dr.ExecutionStarted))
    scheduled = next(e for e in history if isinstance(e, dr.TaskScheduled))
    completed = next(e for e in history if isinstance(e, dr.TaskCompleted))
    assert iid == started.instance_id
    expected = 41
    assert expected == started.input
    expected = "plus_one"
    assert expected == scheduled.name
    assert scheduled.event_id == completed.task_scheduled_id
    expected = 42
    assert expected == completed.result
    expected_order = sorted(kinds, key=kinds.index)
    assert (
        kinds.index("ExecutionStarted")
        < kinds.index("TaskScheduled")
        < kinds.index("TaskCompleted")
    ), expected_order


def test_history_of_unknown_instance_raises(client):
    """Asking for the history of an unknown instance raises InstanceNotFoundError."""
    with pytest.raises(dr.InstanceNotFoundError):
        client.get_orchestration_history("no-such-instance")


def test_unregistered_orchestrator_fails_the_instance(client):
    """Scheduling an unregistered orchestrator name fails the instance with a NotRegistered error type."""
    iid = client.schedule_new_orchestration("no_such_orchestrator")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = dr.OrchestrationStatus.FAILED
    assert expected == state.runtime_status
    assert state.failure_details is not None
    assert "NotRegistered" in state.failure_details.error_type
    assert "no_such_orchestrator" in state.failure_details.message


def test_activity_called_by_name_sees_its_context(client):
    """An activity called by its registered name gets the orchestration id, task id, name and tags."""
    iid = client.schedule_new_orchestration("by_name")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = {
        "orchestration_id": iid,
        "task_id": 0,
        "name": "describe_call",
        "tags": {"team": "blue"},
    }
    assert expected == state.output


def test_dataclass_payloads_round_trip(client):
    """A dataclass input reaches the orchestrator and the activity as the annotated type."""
    iid = client.schedule_new_orchestration(price_order, input=Order("apple", 4))
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = 10.0
    assert expected == state.output
    expected = {"sku": "apple", "quantity": 4}
    assert expected == state.input


def test_get_state_of_unknown_instance_is_none(client):
    """get_orchestration_state of an unknown id returns None."""
    assert client.get_orchestration_state("never-scheduled") is None


def test_fetch_payloads_false_leaves_payloads_none(client):
    """fetch_payloads=False returns the state without input, output or custom status."""
    iid = client.schedule_new_orchestration(one_activity, input=1)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    full = client.get_orchestration_state(iid)
    bare = client.get_orchestration_state(iid, fetch_payloads=False)
    expected = 1
    assert expected == full.input
    expected = 2
    assert expected == full.output
    assert bare.input is None
    assert bare.output is None
    assert bare.custom_status is None
    expected = dr.OrchestrationStatus.COMPLETED
    assert expected == bare.runtime_status


def test_tags_and_version_are_visible(client):
    """Tags and version given at start are on the state and on ctx.version / ctx.tags."""
    tags = {"owner": "ops", "env": "test"}
    iid = client.schedule_new_orchestration(who_am_i, tags=tags, version="2.1")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert tags == state.tags
    expected = "2.1"
    assert expected == state.version
    expected = {
        "instance_id": iid,
        "name": "who_am_i",
        "version": "2.1",
        "tags": tags,
        "parent_instance_id": None,
        "has_execution_id": True,
    }
    assert expected == state.output


def test_tags_must_be_strings(client):
    """Tags that are not a dict of str to str are rejected at the call site."""
    with pytest.raises(TypeError):
        client.schedule_new_orchestration(who_am_i, instance_id="bad-tags", tags={"n": 1})
    assert client.get_orchestration_state("bad-tags") is None


def test_custom_status_while_running_and_after(client):
    """set_custom_status is visible while running and after completion."""
    iid = client.schedule_new_orchestration(staged)
    running = poll(
        lambda: client.get_orchestration_state(iid), lambda s: s.custom_status is not None
    )
    expected = {"stage": 1}
    assert expected == running.custom_status
    expected = dr.OrchestrationStatus.RUNNING
    assert expected == running.runtime_status
    expected = '{"stage": 1}'
    assert expected == running.serialized_custom_status
    client.raise_orchestration_event(iid, "next")
    client.raise_orchestration_event(iid, "finish", data=False)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = {"stage": 2}
    assert expected == state.custom_status


def test_custom_status_none_clears_it(client):
    """set_custom_status(None) clears the custom status."""
    iid = client.schedule_new_orchestration(staged)
    client.raise_orchestration_event(iid, "next")
    client.raise_orchestration_event(iid, "finish", data=True)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert state.custom_status is None
    expected = "done"
    assert expected == state.output


def test_wait_for_completion_times_out(client):
    """wait_for_orchestration_completion raises TimeoutError once its deadline passes."""
    iid = client.schedule_new_orchestration(waits_forever)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    with pytest.raises(TimeoutError):
        client.wait_for_orchestration_completion(iid, timeout=0.2)
    expected = dr.OrchestrationStatus.RUNNING
    assert expected == client.get_orchestration_state(iid).runtime_status


def test_wait_for_start_times_out(manual_client, manual_clock):
    """wait_for_orchestration_start raises TimeoutError while a delayed start is still due."""
    iid = manual_client.schedule_new_orchestration(
        returns_at_once, start_at=manual_clock.now() + timedelta(minutes=5)
    )
    with pytest.raises(TimeoutError):
        manual_client.wait_for_orchestration_start(iid, timeout=0.2)


def test_hour_long_timer_is_skipped_by_the_auto_clock(client):
    """A one-hour durable timer completes at once on an auto-advancing clock, an hour later in orchestration time."""
    iid = client.schedule_new_orchestration(sleeps_an_hour)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    before, after = state.output
    assert after - before >= timedelta(hours=1)


def test_unserializable_input_is_rejected_and_nothing_is_stored(client):
    """An input msgpack cannot carry raises SerializationError and no instance is created."""
    with pytest.raises(dr.SerializationError):
        client.schedule_new_orchestration(one_activity, input=object(), instance_id="unser")
    assert client.get_orchestration_state("unser") is None
    expected = []
    assert expected == client.query_instances().items


def test_oversized_payload_is_rejected():
    """A payload over max_payload_bytes raises SerializationError at the call site, storing nothing."""
    with run_in_process(app, max_payload_bytes=2048) as small:
        with pytest.raises(dr.SerializationError):
            small.schedule_new_orchestration(one_activity, input="x" * 4096, instance_id="big")
        assert small.get_orchestration_state("big") is None
        iid = small.schedule_new_orchestration(waits_forever)
        with pytest.raises(dr.SerializationError):
            small.raise_orchestration_event(iid, "never", data=b"x" * 4096)
        with pytest.raises(TimeoutError):
            small.wait_for_orchestration_completion(iid, timeout=0.2)
        events = [e for e in small.get_orchestration_history(iid) if isinstance(e, dr.EventRaised)]
        expected = []
        assert expected == events


def test_payload_limit_applies_inside_the_hub():
    """max_payload_bytes also bounds activity inputs, activity results and orchestration outputs."""
    with run_in_process(app, clock=ManualClock(auto_advance=True), max_payload_bytes=2048) as small:
        inputs = small.schedule_new_orchestration(big_activity_input)
        results = small.schedule_new_orchestration(big_activity_result)
        outputs = small.schedule_new_orchestration(big_output)
        expected = "rejected at the call site"
        assert expected == small.wait_for_orchestration_completion(inputs, timeout=TIMEOUT).output
        for iid in (results, outputs):
            state = small.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
            expected_status = dr.OrchestrationStatus.FAILED
            assert expected_status == state.runtime_status
            assert state.failure_details.is_caused_by(dr.SerializationError), state.failure_details
            assert "exceeds the limit of 2048 bytes" in state.failure_details.message


def test_bad_arguments_inside_an_orchestration_raise_at_the_call_site(client):
    """Unserializable activity input, an empty event name and a malformed target id raise in the orchestrator."""
    iid = client.schedule_new_orchestration(bad_calls_inside)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = ["input", "event name", "instance id"]
    assert expected == state.output


@pytest.mark.parametrize(
    "bad_id",
    ["", "a\x00b", "line\nbreak", "tab\there", "x" * 257],
    ids=["empty", "nul", "newline", "tab", "too-long"],
)
def test_malformed_instance_id_is_rejected(client, bad_id):
    """Empty ids, ids with control characters and ids over 256 characters raise ValueError."""
    with pytest.raises(ValueError):
        client.schedule_new_orchestration(returns_at_once, instance_id=bad_id)
    expected = []
    assert expected == client.query_instances().items


def test_longest_valid_instance_id_is_accepted(client):
    """An id of exactly 256 printable characters is valid."""
    iid = client.schedule_new_orchestration(returns_at_once, instance_id="y" * 256)
    expected = "y" * 256
    assert expected == iid
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)


def test_non_string_instance_id_is_rejected(client):
    """A non-string instance id raises TypeError."""
    with pytest.raises(TypeError):
        client.schedule_new_orchestration(returns_at_once, instance_id=42)


@pytest.mark.parametrize("bad_name", [42, None, ""], ids=["int", "none", "empty"])
def test_malformed_event_name_is_rejected(client, bad_name):
    """raise_orchestration_event with a non-string or empty name raises and delivers nothing."""
    iid = client.schedule_new_orchestration(waits_forever)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    with pytest.raises(ValueError):
        client.raise_orchestration_event(iid, bad_name)
    events = [e for e in client.get_orchestration_history(iid) if isinstance(e, dr.EventRaised)]
    expected = []
    assert expected == events


def test_unserializable_event_data_is_rejected(client):
    """Event data msgpack cannot carry raises SerializationError and the event is not delivered."""
    iid = client.schedule_new_orchestration(waits_forever)
    with pytest.raises(dr.SerializationError):
        client.raise_orchestration_event(iid, "never", data={1, 2})
    with pytest.raises(TimeoutError):
        client.wait_for_orchestration_completion(iid, timeout=0.2)


def test_unknown_reuse_policy_is_rejected(client):
    """An unknown reuse_id_policy raises ValueError before anything is stored."""
    with pytest.raises(ValueError):
        client.schedule_new_orchestration(returns_at_once, instance_id="p", reuse_id_policy="nope")
    assert client.get_orchestration_state("p") is None


def test_partition_stats_cover_every_partition(client):
    """partition_stats returns one entry per partition with its counters."""
    iid = client.schedule_new_orchestration(one_activity, input=1)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    stats = client.partition_stats()
    expected = [0, 1, 2, 3]
    assert expected == [s["partition"] for s in stats]
    assert sum(s["counters"]["episodes"] for s in stats) >= 2


def test_async_activity(client):
    """A coroutine activity is awaited and its value returned."""
    iid = client.schedule_new_orchestration(calls_async, input=21)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = 42
    assert expected == state.output


def test_unserializable_activity_result_fails_the_task(client):
    """An activity returning a value msgpack cannot carry fails its task with SerializationError."""
    iid = client.schedule_new_orchestration(activity_returns_garbage)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = dr.OrchestrationStatus.FAILED
    assert expected == state.runtime_status
    assert state.failure_details.is_caused_by(dr.SerializationError)


def test_unserializable_orchestration_output_fails_the_instance(client):
    """An orchestrator returning a value msgpack cannot carry FAILS with SerializationError."""
    iid = client.schedule_new_orchestration(orchestrator_returns_garbage)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = dr.OrchestrationStatus.FAILED
    assert expected == state.runtime_status
    assert state.failure_details.is_caused_by(dr.SerializationError)


def test_events_raised_concurrently_all_arrive(client):
    """Sixty events raised from six threads at once are all delivered exactly once."""
    iid = client.schedule_new_orchestration(sum_of_events, input=60)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda n: client.raise_orchestration_event(iid, "add", data=n), range(60)))
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = sum(range(60))
    assert expected == state.output


def test_instances_started_concurrently_all_complete(client):
    """Eighty instances started from eight threads all complete with their own outputs."""
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(lambda n: client.schedule_new_orchestration(one_activity, input=n), range(80))
        )
    outputs = [client.wait_for_orchestration_completion(i, timeout=TIMEOUT).output for i in ids]
    expected = [n + 1 for n in range(80)]
    assert expected == outputs


def test_wait_returns_at_once_for_a_finished_instance(client):
    """Waiting for the start or completion of a finished instance returns its state at once."""
    iid = client.schedule_new_orchestration(one_activity, input=1)
    done = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, 2)
    started = client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    assert expected == (started.runtime_status, started.output)
    again = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert done == again


def test_history_is_readable_while_running(client):
    """The history of a running instance shows what happened so far."""
    iid = client.schedule_new_orchestration(waits_forever)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    kinds = [type(e).__name__ for e in client.get_orchestration_history(iid)]
    assert "ExecutionStarted" in kinds
    assert "ExecutionCompleted" not in kinds


def test_client_of_a_stopped_hub_refuses_calls():
    """After the hub's with-block ends, its client raises instead of hanging."""
    with run_in_process(app) as stopped:
        stopped.schedule_new_orchestration(returns_at_once)
    with pytest.raises(RuntimeError, match="stopped"):
        stopped.get_orchestration_state("anything")


PAYLOAD = {
    "tuple": (1, "two", (3.0,)),
    "bytes": b"\x00\xff",
    "big": 2**100,
    "negative": -(2**70),
    "when": datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=2))),
    "naive": datetime(2026, 3, 4, 5, 6, 7),
    "delay": timedelta(days=1, microseconds=5),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "price": Decimal("19.99"),
    "nested": [{"a": None, "b": [True, False]}],
    "unicode": "naïve ✓ 日本",
}


def test_payload_types_round_trip_everywhere(client):
    """Every supported payload type survives input, activity, custom status, event data and output."""
    iid = client.schedule_new_orchestration(round_trip, input=PAYLOAD)
    poll(lambda: client.get_orchestration_state(iid), lambda s: s.custom_status is not None)
    client.raise_orchestration_event(iid, "payload", data=PAYLOAD)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = PAYLOAD
    assert [expected, expected] == state.output
    assert expected == state.input
    assert expected == state.custom_status


@pytest.mark.parametrize(
    "iid", ["ünïcödé-✓", "with:colon/slash@at", "spaces are fine", "日本語"], ids=str
)
def test_unusual_but_valid_instance_ids(client, iid):
    """Printable ids with unicode, separators and spaces work and can be found by prefix."""
    client.schedule_new_orchestration(one_activity, input=1, instance_id=iid)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = (iid, 2)
    assert expected == (state.instance_id, state.output)
    found = client.query_instances(instance_id_prefix=iid[:3]).items
    expected_ids = [iid]
    assert expected_ids == [s.instance_id for s in found]
    expected_purged = 1
    assert expected_purged == client.purge_orchestration(iid).deleted_instance_count


def test_single_partition_hub():
    """A hub with one partition runs chains and fan-outs like a partitioned one."""
    single = dr.App("e2e-basics-single", partitions=1)
    single.add_activity(plus_one)
    single.add_activity(shuffled_square)
    single.add_orchestration(chain_of_ten)
    single.add_orchestration(fan_out)
    with run_in_process(single, clock=ManualClock(auto_advance=True)) as c:
        chain = c.schedule_new_orchestration(chain_of_ten, input=1)
        fan = c.schedule_new_orchestration(fan_out, input=20)
        expected = list(range(1, 12))
        assert expected == c.wait_for_orchestration_completion(chain, timeout=TIMEOUT).output
        expected_fan = [i * i for i in range(20)]
        assert expected_fan == c.wait_for_orchestration_completion(fan, timeout=TIMEOUT).output


def test_executor_eviction_under_load():
    """With only two live generators cached per partition, forty concurrent chains still all complete correctly."""
    with run_in_process(
        app, clock=ManualClock(auto_advance=True), max_cached_orchestrations=2
    ) as c:
        ids = [c.schedule_new_orchestration(chain_of_ten, input=n) for n in range(40)]
        outputs = [c.wait_for_orchestration_completion(i, timeout=TIMEOUT).output for i in ids]
        expected = [list(range(n, n + 11)) for n in range(40)]
        assert expected == outputs
        replays = sum(s["counters"]["replays"] for s in c.partition_stats())
        assert replays > 0, "the cache limit should have forced replays"


def test_when_any_returns_the_first_finished_task(client):
    """when_any returns the task that finished first; the loser finishing later changes nothing."""
    iid = client.schedule_new_orchestration(first_of_two)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = [True, "fast"]
    assert expected == state.output
    slow_gate.set()
    poll(lambda: calls[(iid, "slow")], lambda n: n == 1)
    assert client.hub_runtime.wait_idle(TIMEOUT)
    after = client.get_orchestration_state(iid)
    assert expected == after.output
    assert state.last_updated_at == after.last_updated_at


def test_tiny_batches_still_make_progress():
    """With one work item per batch, a fan-out, a chain and events still complete."""
    with run_in_process(app, clock=ManualClock(auto_advance=True), max_batch_items=1) as c:
        fan = c.schedule_new_orchestration(fan_out, input=30)
        chain = c.schedule_new_orchestration(chain_of_ten, input=1)
        summed = c.schedule_new_orchestration(sum_of_events, input=10)
        for n in range(10):
            c.raise_orchestration_event(summed, "add", data=n)
        expected = [i * i for i in range(30)]
        assert expected == c.wait_for_orchestration_completion(fan, timeout=TIMEOUT).output
        expected_chain = list(range(1, 12))
        assert expected_chain == c.wait_for_orchestration_completion(chain, timeout=TIMEOUT).output
        expected_sum = 45
        assert expected_sum == c.wait_for_orchestration_completion(summed, timeout=TIMEOUT).output
