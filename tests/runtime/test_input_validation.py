"""No input breaks a partition, and an idle partition does not spin (issue 11).

A value a partition cannot store or compute with (a time before 1970, a delay past the
end of ``datetime``, an id whose store keys exceed LMDB's 511 bytes, a NaN timeout) used
to fail the batch that met it: a Ray partition then restarts and fails again. Such values
are now refused where they enter: a client request gets a ValueError reply, orchestration
code fails its orchestration. Driven with ``partition_driver.Cluster`` (manual wall and
monotonic clocks), so "the wait's deadline has passed" is a number, not a sleep.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from partition_driver import T0, make_registry

from duraray import _limits
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.orchestrations.task import RetryPolicy
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.records import Reply
from duraray.runtime.engine.store import MAX_KEY_SIZE

Status = h.OrchestrationStatus

EPOCH_MINUS = datetime(1960, 1, 1, tzinfo=UTC)


def inc(ctx: Any, x: int) -> int:
    return x + 1


def collect(ctx: Any, n: int) -> Any:
    got = []
    for _ in range(n):
        got.append((yield ctx.wait_for_external_event("e")))
    return got


def timer_after_activity(ctx: Any, when: Any) -> Any:
    yield ctx.call_activity("inc", input=1)
    yield ctx.create_timer(when)
    return "fired"


def child(ctx: Any, x: int) -> Any:
    return (yield ctx.call_activity("inc", input=x))


def sub_with_id(ctx: Any, child_id: str) -> Any:
    yield ctx.call_activity("inc", input=1)
    return (yield ctx.call_sub_orchestrator("child", input=1, instance_id=child_id))


def sub_with_default_id(ctx: Any, _: Any) -> Any:
    return (yield ctx.call_sub_orchestrator("child", input=1))


def signals_entity(ctx: Any, key: str) -> Any:
    yield ctx.call_activity("inc", input=1)
    ctx.signal_entity(EntityId("counter", key), "add", 1)
    return "sent"


def signals_later(ctx: Any, when: Any) -> Any:
    yield ctx.call_activity("inc", input=1)
    ctx.signal_entity("@counter@k", "add", 1, signal_time=when)
    return "sent"


def calls_named(ctx: Any, sizes: dict[str, list[Any]]) -> Any:
    # Built here: a 17 MiB string would not pass as the orchestration's input.
    names = {what: text * count for what, (text, count) in sizes.items()}
    yield ctx.call_activity("inc", input=1)
    if "activity" in names:
        yield ctx.call_activity(names["activity"])
    if "event" in names:
        ctx.send_event("other", names["event"])
    if "operation" in names:
        ctx.signal_entity("@counter@k", names["operation"])
    if "version" in names:
        yield ctx.call_sub_orchestrator("child", input=1, version=names["version"])
    if "tag" in names:
        yield ctx.call_activity("inc", input=1, tags={"t": names["tag"]})
    return "done"


def counter(ctx: Any, amount: Any) -> Any:
    ctx.set_state((ctx.get_state() or 0) + amount)


def registry() -> Any:
    reg = make_registry(
        inc=inc,
        collect=collect,
        timer_after_activity=timer_after_activity,
        child=child,
        sub_with_id=sub_with_id,
        sub_with_default_id=sub_with_default_id,
        signals_entity=signals_entity,
        signals_later=signals_later,
        calls_named=calls_named,
    )
    reg.add_entity(counter)
    return reg


def _error(cluster: Any, token: int) -> BaseException:
    value = cluster.replies[token][0]
    assert isinstance(value, Reply), value
    return value.error


# -- 1. no spin after a wait's deadline ------------------------------------------------------


def test_idle_partition_has_no_work_after_a_satisfied_waits_deadline(cluster_factory):
    """A wait (timeout 3 s) answered after 1 s leaves no deadline behind: from second 3
    on, the idle partition has nothing to do (it used to run empty batches forever)."""
    cluster = cluster_factory(registry())
    cluster.start("collect", "w", 1)
    cluster.run()
    token = cluster.submit("wait", instance_id="w", kind="completion", timeout=3.0)
    cluster.run()
    assert token not in cluster.replies
    cluster.mono.now += 1
    cluster.call("raise_event", instance_id="w", name="e", data=codec.encode("x"))
    assert Status.COMPLETED == cluster.reply(token).status
    cluster.mono.now += 10  # well past the answered wait's deadline
    core = cluster.cores[0]
    assert not core.has_work()
    assert core.waits.deadline is None


def test_idle_partition_has_no_work_after_a_satisfied_wait_many(cluster_factory):
    """The same for ``wait_many`` (Client.wait_for_orchestrations)."""
    cluster = cluster_factory(registry())
    for iid in ("a", "b"):
        cluster.start("collect", iid, 1)
    cluster.run()
    token = cluster.submit(
        "wait_many", partition=0, instance_ids=["a", "b"], kind="completion", timeout=3.0
    )
    cluster.run()
    for iid in ("a", "b"):
        cluster.call("raise_event", instance_id=iid, name="e", data=codec.encode(1))
    assert 2 == len(cluster.reply(token))
    cluster.mono.now += 10
    assert not cluster.cores[0].has_work()


# -- 3. timeouts: NaN, infinity, negative -----------------------------------------------------


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, True])
def test_wait_with_a_bad_timeout_is_refused_and_later_waits_still_expire(cluster_factory, timeout):
    """A NaN deadline used to stick as the partition's next deadline, so no later wait on
    that partition ever expired; the request is now refused and later waits expire."""
    cluster = cluster_factory(registry())
    cluster.start("collect", "w", 1)
    cluster.run()
    bad = cluster.submit("wait", instance_id="w", kind="completion", timeout=timeout)
    cluster.step(0)
    assert isinstance(_error(cluster, bad), ValueError | TypeError)
    good = cluster.submit("wait", instance_id="w", kind="completion", timeout=0.5)
    cluster.step(0)
    cluster.mono.now += 1
    cluster.run()
    assert isinstance(_error(cluster, good), TimeoutError)


# -- 2. times and durations a batch cannot compute with ---------------------------------------


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("query", {"created_from": EPOCH_MINUS}),
        ("query", {"created_to": EPOCH_MINUS}),
        ("query", {"created_from": datetime.max}),
        ("query", {"limit": 0}),
        ("query", {"limit": 10**9}),
        ("purge_by", {"created_from": EPOCH_MINUS}),
        ("purge_by", {"created_to": EPOCH_MINUS}),
        ("start", {"instance_id": "s", "name": "inc", "start_at": timedelta.max}),
        ("start", {"instance_id": "s", "name": "inc", "start_at": EPOCH_MINUS}),
        (
            "signal_entity",
            {"entity_id": "@counter@k", "operation": "add", "signal_time": timedelta.max},
        ),
        (
            "signal_entity",
            {"entity_id": "@counter@k", "operation": "add", "signal_time": EPOCH_MINUS},
        ),
        ("signal_entity", {"entity_id": "not-an-entity-id", "operation": "add"}),
        ("start", {"instance_id": "😀" * 130, "name": "inc"}),
        ("start", {"instance_id": "s", "name": "n" * 300}),
        ("start", {"instance_id": "s", "name": "inc", "version": "v" * (65 * 1024)}),
        ("start", {"instance_id": "s", "name": "inc", "tags": {"t": "v" * (65 * 1024)}}),
        ("suspend", {"instance_id": "s", "reason": "r" * (65 * 1024)}),
        ("raise_event", {"instance_id": "s", "name": "e" * 300}),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v),
)
def test_request_with_a_value_the_store_cannot_hold_gets_a_value_error(cluster_factory, op, args):
    """A raw request (any transport, not only the Python client) with such a value is
    answered with ValueError and changes nothing; the partition keeps working."""
    cluster = cluster_factory(registry())
    token = cluster.submit(op, partition=0, **args)
    cluster.step(0)  # used to raise struct.error / OverflowError: the batch failed
    assert isinstance(_error(cluster, token), ValueError)
    cluster.start("child", "after", 1)
    cluster.run()
    assert 2 == cluster.output("after")
    assert ["after"] == [rec.instance_id for rec in cluster.call("query", partition=0)]


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        ("get_state", {"instance_id": "s", "foo": 1}, "operation 'get_state' got unexpected"),
        ("get_state", {"b": 1, "instance_id": "s"}, "got unexpected arguments ['b']"),
        ("get_state", {}, "operation 'get_state' is missing arguments ['instance_id']"),
        ("signal_entity", {"entity_id": "@counter@k"}, "is missing arguments ['operation']"),
        ("batch", {"ops": [("get_state", {"nope": 1})]}, None),
        (["get_state"], {"instance_id": "s"}, "unknown client operation"),
    ],
    ids=["extra", "internal-name", "missing", "entity-missing", "in-batch", "unhashable-op"],
)
def test_request_with_wrong_argument_names_is_refused_by_operation(
    cluster_factory, op, args, message
):
    """A raw request with an argument an operation does not take (or without one it
    needs) is answered with an error naming the operation, never an engine method, and
    the partition keeps working."""
    cluster = cluster_factory(registry())
    token = cluster.submit(op, partition=0, **args)
    cluster.step(0)
    if message is None:  # a batch answers per operation
        [reply] = cluster.reply(token)
        assert isinstance(reply, Reply) and "got unexpected arguments ['nope']" in str(reply.error)
    else:
        error = _error(cluster, token)
        assert isinstance(error, TypeError | ValueError) and message in str(error)
    cluster.start("child", "after", 1)
    cluster.run()
    assert 2 == cluster.output("after")


@pytest.mark.parametrize(
    "when",
    [EPOCH_MINUS, timedelta.max, -timedelta(days=365 * 60), datetime(9999, 12, 31, tzinfo=UTC)],
    ids=["1960", "timedelta.max", "before-1970", "year-9999"],
)
def test_timer_out_of_range_fails_the_orchestration_not_the_partition(cluster_factory, when):
    """``ctx.create_timer`` at a time the store cannot key fails the orchestration with a
    clear ValueError (it used to fail every batch of the partition, for good)."""
    cluster = cluster_factory(registry())
    cluster.start("timer_after_activity", "t", when)
    cluster.run()
    state = cluster.state("t")
    assert Status.FAILED == state.status
    assert "out of range" in state.failure.message
    cluster.start("child", "after", 1)
    cluster.run()
    assert 2 == cluster.output("after")


@pytest.mark.parametrize("when", [EPOCH_MINUS, timedelta.max], ids=["1960", "timedelta.max"])
def test_signal_time_out_of_range_fails_the_orchestration(cluster_factory, when):
    cluster = cluster_factory(registry())
    cluster.start("signals_later", "s", when)
    cluster.run()
    state = cluster.state("s")
    assert Status.FAILED == state.status
    assert "signal_time" in state.failure.message


# -- 4. names and ids measured in UTF-8 bytes -------------------------------------------------


def test_sub_orchestration_id_too_long_in_bytes_fails_the_orchestration(cluster_factory):
    """256 emoji are 256 characters but 1024 bytes: the child's keys would exceed LMDB's
    511 bytes and fail the batch that creates it (the child's partition's, for good)."""
    cluster = cluster_factory(registry(), partitions=2)
    cluster.start("sub_with_id", "p", "😀" * 256)
    cluster.run()
    state = cluster.state("p")
    assert Status.FAILED == state.status
    assert "bytes" in state.failure.message


def test_default_child_id_too_long_fails_the_orchestration(cluster_factory):
    """A parent id too long for the ``:<task id>`` suffix needs an explicit child id."""
    cluster = cluster_factory(registry())
    parent_id = "p" * _limits.MAX_INSTANCE_ID_BYTES
    cluster.start("sub_with_default_id", parent_id)
    cluster.run()
    state = cluster.state(parent_id)
    assert Status.FAILED == state.status
    assert "pass a shorter instance_id" in state.failure.message


def test_entity_key_too_long_in_bytes_fails_the_orchestration(cluster_factory):
    cluster = cluster_factory(registry(), partitions=2)
    cluster.start("signals_entity", "s", "😀" * 200)
    cluster.run()
    state = cluster.state("s")
    assert Status.FAILED == state.status
    assert "bytes" in state.failure.message


@pytest.mark.parametrize(
    "sizes",
    [
        {"activity": ["a", 300]},
        {"activity": ["😀", 65]},
        {"event": ["e", 17 << 20]},
        {"operation": ["o", 17 << 20]},
        {"version": ["v", 17 << 20]},
        {"tag": ["t", 17 << 20]},
    ],
    ids=["activity", "activity-utf8", "event", "operation", "version", "tag"],
)
def test_oversized_names_and_texts_fail_the_orchestration(cluster_factory, sizes):
    """Names and texts bypassed the payload limit; they now fail the orchestration."""
    cluster = cluster_factory(registry())
    cluster.start("calls_named", "n", sizes)
    cluster.run()
    state = cluster.state("n")
    assert Status.FAILED == state.status
    assert "bytes" in state.failure.message


# -- the limits themselves ---------------------------------------------------------------------


def test_longest_ids_keep_every_store_key_within_lmdbs_limit():
    """The byte limits are chosen so the longest key built from an id fits in 511 bytes."""
    assert MAX_KEY_SIZE == _limits.MAX_STORE_KEY_BYTES
    instance_id = "😀" * (_limits.MAX_INSTANCE_ID_BYTES // 4)
    entity_id = str(EntityId("c", "😀" * ((_limits.MAX_ENTITY_ID_BYTES - 3) // 4)))
    latest = codec.utc_micros(_limits.MAX_TIME + _limits.MAX_DURATION)
    keys = [
        r.instance_key(instance_id),
        r.seq_key(instance_id, 2**32 - 1),
        r.created_key(latest, instance_id),
        r.timer_key(latest, instance_id, 2**32 - 1),
        r.timer_key(latest, entity_id, 2**32 - 1),
        entity_id.encode(),
    ]
    assert max(len(k) for k in keys) <= MAX_KEY_SIZE


def test_time_range_is_representable_with_any_duration():
    """MAX_TIME plus MAX_DURATION is still a datetime and a u64 microsecond key."""
    latest = _limits.MAX_TIME + _limits.MAX_DURATION
    assert 0 <= codec.utc_micros(latest) < 2**64
    assert _limits.MIN_TIME == datetime(1970, 1, 1, tzinfo=UTC)
    assert _limits.check_time(datetime(2026, 1, 1), "t") == datetime(2026, 1, 1, tzinfo=UTC)


def test_retry_delay_never_overflows():
    """Many attempts with a backoff used to raise OverflowError inside the executor (a
    failed batch); the delay is capped instead."""
    policy = RetryPolicy(
        first_retry_interval=1,
        max_number_of_attempts=5000,
        backoff_coefficient=2.0,
        max_retry_interval=timedelta(minutes=1),
    )
    assert timedelta(minutes=1) == policy.delay_after(2000)
    unbounded = RetryPolicy(1, 5000, backoff_coefficient=2.0)
    assert _limits.MAX_DURATION == unbounded.delay_after(2000)
    assert T0 + unbounded.delay_after(2000) <= _limits.MAX_TIME + _limits.MAX_DURATION


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backoff_coefficient": float("nan")},
        {"backoff_coefficient": float("inf")},
        {"first_retry_interval": timedelta.max},
        {"first_retry_interval": float("nan")},
        {"first_retry_interval": 1e300},
        {"max_retry_interval": timedelta.max},
        {"retry_timeout": float("inf")},
    ],
    ids=lambda kw: "-".join(kw),
)
def test_retry_policy_refuses_non_finite_or_huge_values(kwargs):
    args = {"first_retry_interval": 1, "max_number_of_attempts": 3, **kwargs}
    with pytest.raises(ValueError):
        RetryPolicy(**args)
