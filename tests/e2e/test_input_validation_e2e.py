"""End to end: values a partition cannot store or compute with are refused at the call site.

The client raises ValueError (or TypeError) before anything is stored; orchestration and
entity code that passes such a value fails like any other exception, and the hub keeps
running (issue 11).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import duraray as dr

from .helpers import TIMEOUT

app = dr.App("e2e-input-validation", partitions=2)

Status = dr.OrchestrationStatus

BEFORE_1970 = datetime(1960, 1, 1, tzinfo=UTC)
HUGE = "x" * (17 << 20)  # 17 MiB: more than the payload limit, never a payload


@app.activity
def one(ctx: dr.ActivityContext, _=None) -> int:
    return 1


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value=None):
    return value


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def timer_at_1960(ctx: dr.OrchestrationContext):
    yield ctx.call_activity(one)
    yield ctx.create_timer(BEFORE_1970)
    return "fired"


@app.orchestration
def huge_timer(ctx: dr.OrchestrationContext):
    yield ctx.call_activity(one)
    yield ctx.create_timer(timedelta.max)
    return "fired"


@app.orchestration
def emoji_child(ctx: dr.OrchestrationContext):
    yield ctx.call_activity(one)
    return (yield ctx.call_sub_orchestrator(echo, input=1, instance_id="😀" * 256))


@app.orchestration
def emoji_entity(ctx: dr.OrchestrationContext):
    yield ctx.call_activity(one)
    ctx.signal_entity(dr.EntityId("counter", "😀" * 200), "add", 1)
    return "sent"


@app.entity
def counter(ctx: dr.EntityContext, amount):
    if ctx.operation == "schedule_far":
        ctx.signal_entity(ctx.entity_id, "add", 1, signal_time=timedelta.max)
        return None
    ctx.set_state((ctx.get_state() or 0) + amount)
    return ctx.get_state()


@app.orchestration
def call_counter(ctx: dr.OrchestrationContext, operation: str):
    return (yield ctx.call_entity("@counter@c", operation, 1))


def _hub_still_works(client: dr.Client) -> None:
    iid = client.schedule_new_orchestration(echo, input="alive")
    expected = "alive"
    assert expected == client.wait_for_orchestration_completion(iid, timeout=TIMEOUT).output


# -- 2. times and durations -------------------------------------------------------------------


@pytest.mark.parametrize(
    "filters",
    [
        {"created_time_from": BEFORE_1970},
        {"created_time_to": BEFORE_1970},
        {"created_time_from": datetime.max},
        {"created_time_to": datetime(1969, 12, 31, 23, 59, tzinfo=UTC)},
    ],
    ids=["from-1960", "to-1960", "from-datetime.max", "to-1969"],
)
def test_query_and_purge_refuse_times_out_of_range(client, filters):
    """Such a time used to raise struct.error inside the partition's batch."""
    with pytest.raises(ValueError, match="out of range"):
        client.query_instances(**filters)
    with pytest.raises(ValueError, match="out of range"):
        client.purge_orchestrations_by(**filters)
    _hub_still_works(client)


@pytest.mark.parametrize(
    "start_at",
    [timedelta.max, timedelta.min, BEFORE_1970, datetime.max],
    ids=["timedelta.max", "timedelta.min", "1960", "datetime.max"],
)
def test_start_at_out_of_range_is_refused_and_nothing_is_stored(client, start_at):
    with pytest.raises(ValueError, match="out of range"):
        client.schedule_new_orchestration(echo, instance_id="late", start_at=start_at)
    assert client.get_orchestration_state("late") is None
    _hub_still_works(client)


@pytest.mark.parametrize("signal_time", [timedelta.max, BEFORE_1970], ids=["max", "1960"])
def test_signal_time_out_of_range_is_refused(client, signal_time):
    with pytest.raises(ValueError, match="out of range"):
        client.signal_entity("@counter@c", "add", 1, signal_time=signal_time)
    assert client.get_entity("@counter@c") is None
    _hub_still_works(client)


@pytest.mark.parametrize("orchestration", [timer_at_1960, huge_timer])
def test_timer_out_of_range_fails_the_orchestration_and_the_hub_runs_on(client, orchestration):
    """The worst case of issue 11: the timer used to crash the partition on every batch."""
    iid = client.schedule_new_orchestration(orchestration)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert Status.FAILED == state.runtime_status
    assert "out of range" in state.failure_details.message
    _hub_still_works(client)


def test_entity_signal_time_out_of_range_fails_the_operation_only(client):
    iid = client.schedule_new_orchestration(call_counter, input="schedule_far")
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert Status.FAILED == state.runtime_status
    assert "out of range" in state.failure_details.message
    _hub_still_works(client)


# -- 3. wait timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, 1e300])
def test_wait_timeouts_must_be_finite_and_not_negative(client, timeout):
    """A NaN timeout used to be accepted and then kept every later wait from expiring."""
    iid = client.schedule_new_orchestration(wait_go)
    with pytest.raises(ValueError, match="timeout"):
        client.wait_for_orchestration_start(iid, timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        client.wait_for_orchestration_completion(iid, timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        client.wait_for_orchestrations([iid], timeout=timeout)
    with pytest.raises(TimeoutError):
        client.wait_for_orchestration_completion(iid, timeout=0.05)


@pytest.mark.parametrize("page_size", [0, -1, 10**9])
def test_page_sizes_are_bounded(client, page_size):
    with pytest.raises(ValueError, match="page_size"):
        client.query_instances(page_size=page_size)
    with pytest.raises(ValueError, match="page_size"):
        client.query_entities(page_size=page_size)


# -- 4. names, texts and ids in UTF-8 bytes ----------------------------------------------------


def test_instance_ids_are_measured_in_utf8_bytes(client):
    """65 emoji are 65 characters but 260 bytes; 64 emoji (256 bytes) are accepted."""
    with pytest.raises(ValueError, match="bytes"):
        client.schedule_new_orchestration(echo, instance_id="😀" * 65)
    iid = client.schedule_new_orchestration(echo, instance_id="😀" * 64)
    expected = "😀" * 64
    assert expected == iid
    assert Status.COMPLETED == client.wait_for_orchestration_completion(iid).runtime_status


def test_entity_ids_are_measured_in_utf8_bytes(client):
    with pytest.raises(ValueError, match="bytes"):
        client.signal_entity(("counter", "😀" * 62), "add", 1)  # 9 + 248 bytes
    client.signal_entity(("counter", "😀" * 61), "add", 1)  # 9 + 244 bytes


@pytest.mark.parametrize("orchestration", [emoji_child, emoji_entity])
def test_long_ids_inside_orchestrations_fail_the_orchestration(client, orchestration):
    iid = client.schedule_new_orchestration(orchestration)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert Status.FAILED == state.runtime_status
    assert "bytes" in state.failure_details.message
    _hub_still_works(client)


def test_oversized_names_and_texts_are_refused_at_the_call_site(client):
    """17 MiB names, tags, versions and reasons bypassed the payload limit."""
    iid = client.schedule_new_orchestration(wait_go)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    calls = [
        lambda: client.schedule_new_orchestration(HUGE),
        lambda: client.schedule_new_orchestration("n" * 257),
        lambda: client.schedule_new_orchestration(echo, tags={"t": HUGE}),
        lambda: client.schedule_new_orchestration(echo, tags={HUGE: "v"}),
        lambda: client.schedule_new_orchestration(echo, version=HUGE),
        lambda: client.schedule_new_orchestrations(echo, [1], version=HUGE),
        lambda: client.raise_orchestration_event(iid, HUGE),
        lambda: client.raise_orchestration_event(iid, "😀" * 65),
        lambda: client.suspend_orchestration(iid, reason=HUGE),
        lambda: client.resume_orchestration(iid, reason=HUGE),
        lambda: client.rewind_orchestration(iid, reason=HUGE),
        lambda: client.signal_entity("@counter@c", HUGE),
        lambda: client.signal_entities([("@counter@c", HUGE, 1)]),
        lambda: client.query_entities(name=HUGE),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="bytes"):
            call()
    expected = [iid]
    assert expected == [s.instance_id for s in client.get_all_instances()]
    assert Status.RUNNING == client.get_orchestration_state(iid).runtime_status
    assert client.get_entity("@counter@c") is None


def test_limits_at_the_boundary_are_accepted(client):
    """256-byte names and 64 KiB texts are fine."""
    tags = {"t": "v" * (64 * 1024 - 1)}
    iid = client.schedule_new_orchestration(echo, input=1, tags=tags, version="1" * 1024)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert tags == state.tags
    waiting = client.schedule_new_orchestration(wait_go)
    client.raise_orchestration_event(waiting, "e" * 256)
    client.suspend_orchestration(waiting, reason="r" * (64 * 1024))
    client.resume_orchestration(waiting)
    client.terminate_orchestration(waiting)
