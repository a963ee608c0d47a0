"""No single item can crash-loop a partition (engine/poison.py).

Each test makes one component raise for one chosen item (a request, an instance's work,
a message, a timer, a scheduled signal, a stored row), as a defect would, and checks
that the driver's shell part (``Cluster.batch``: the same as the Ray actor's and the
in-process engine's) keeps the partition going: the failing item is answered with
``PartitionFailureError``, fails its instance or is parked, and everything else that
was in its batch is applied as if nothing had happened.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from partition_driver import Cluster, id_on, make_registry

from duraray._errors import EntityOperationFailedError, PartitionFailureError
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.actions import Actions
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.episodes import Episodes
from duraray.runtime.engine.instances import InstanceTable
from duraray.runtime.engine.lifecycle import Lifecycle
from duraray.runtime.engine.poison import MAX_POISON_IN_A_ROW
from duraray.runtime.engine.records import Reply
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.engine.store import WriteBatch

Status = h.OrchestrationStatus


def inc(ctx: Any, x: int) -> int:
    return x + 1


def one_step(ctx: Any, x: int) -> Any:
    return (yield ctx.call_activity("inc", input=x))


def sleeper(ctx: Any, seconds: int) -> Any:
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=seconds))
    return "woke"


def calls(ctx: Any, entity_ids: list[str]) -> Any:
    """Calls ``add`` on each entity; a failed call is noted, not raised."""
    out = []
    for entity_id in entity_ids:
        try:
            yield ctx.call_entity(entity_id, "add", 1)
            out.append("ok")
        except EntityOperationFailedError as exc:
            out.append("failed: " + str(exc)[:40])
    return out


def counter(ctx: Any, amount: Any) -> Any:
    ctx.set_state((ctx.get_state() or 0) + amount)
    return ctx.get_state()


def registry() -> Any:
    reg = make_registry(inc=inc, one_step=one_step, sleeper=sleeper, calls=calls)
    reg.add_entity(counter)
    return reg


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``poison(cls, name, is_bad)``: ``cls.name`` raises RuntimeError("poisoned") when
    ``is_bad(*args)`` is true for its arguments (self excluded), and works otherwise."""

    def install(cls: type, name: str, is_bad: Callable[..., bool]) -> None:
        original = getattr(cls, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if is_bad(*args, **kwargs):
                raise RuntimeError(f"poisoned {name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, method)

    return install


def _error(cluster: Cluster, token: int) -> BaseException:
    value = cluster.replies[token][0]
    assert isinstance(value, Reply), value
    return value.error


def _parked(cluster: Cluster) -> list[Any]:
    items = []
    for index in range(cluster.partitions):
        items += [item for _, item in cluster.call("parked", partition=index)]
    return items


def test_a_read_that_raises_is_answered_in_place(cluster_factory, poison):
    """A read that raises inside the partition changed nothing: it is answered with
    PartitionFailureError at once, with no rebuild; the starts queued in the same batch
    run to completion."""
    poison(InstanceTable, "get_record", lambda iid: iid == "poison")
    cluster = cluster_factory(registry())
    starts = [cluster.start("one_step", f"i{n}", n) for n in range(3)]
    bad = cluster.submit("get_state", instance_id="poison", partition=0)
    cluster.run()
    assert isinstance(_error(cluster, bad), PartitionFailureError)
    assert [f"i{n}" for n in range(3)] == [cluster.reply(t) for t in starts]
    assert [1, 2, 3] == [cluster.output(f"i{n}") for n in range(3)]
    assert 0 == cluster.rebuilds


def test_a_start_that_raises_stores_nothing(cluster_factory, poison):
    """A start whose creation raises halfway is refused and leaves no instance behind."""
    poison(Episodes, "create", lambda b, iid, *a, **k: iid == "poison")
    cluster = cluster_factory(registry())
    token = cluster.start("one_step", "poison", 1)
    others = [cluster.start("one_step", f"i{n}", n) for n in range(3)]
    cluster.run()
    error = _error(cluster, token)
    assert isinstance(error, PartitionFailureError)
    assert "nothing of it was stored" in str(error)
    assert cluster.state("poison") is None
    assert [f"i{n}" for n in range(3)] == [cluster.reply(t) for t in others]
    assert ["i0", "i1", "i2"] == sorted(
        rec.instance_id for rec in cluster.call("query", partition=0)
    )
    assert 1 == cluster.cores[0].counters["poison_items"]
    assert [("request", "start poison")] == [(i.kind, i.target) for i in _parked(cluster)]


def test_a_start_whose_first_step_raises_is_refused(cluster_factory, poison):
    """The first episode runs in the start's own batch: an action the engine cannot carry
    out there makes the start the poison item, refused with nothing stored."""
    poison(Actions, "apply", lambda b, live, event: live.record.instance_id == "bad")
    cluster = cluster_factory(registry())
    token = cluster.start("one_step", "bad", 1)
    cluster.start("one_step", "good", 1)
    cluster.run()
    assert isinstance(_error(cluster, token), PartitionFailureError)
    assert cluster.state("bad") is None
    assert 2 == cluster.output("good")


def test_orchestration_work_that_raises_fails_only_its_instance(cluster_factory, poison):
    """An activity result the engine cannot apply fails its instance with the error; the
    instance beside it, in the same batches, completes."""
    poison(Episodes, "on_activity_result", lambda b, result: result.instance_id == "bad")
    cluster = cluster_factory(registry())
    cluster.start("one_step", "bad", 1)
    cluster.start("one_step", "good", 1)
    cluster.run()
    assert 2 == cluster.output("good")
    state = cluster.state("bad")
    assert Status.FAILED == state.status
    assert "failed inside the partition" in state.failure.message
    assert "poisoned on_activity_result" in state.failure.message
    assert [] == _parked(cluster)  # a failed instance is the report


def test_a_timer_that_raises_fails_its_instance(cluster_factory, poison):
    """A due timer whose firing raises fails its instance; another timer due at the same
    time fires."""
    poison(Episodes, "on_timer", lambda b, key, row: row.instance_id == "late")
    cluster = cluster_factory(registry(), auto_advance=True)
    cluster.start("sleeper", "late", 5)
    cluster.start("sleeper", "fine", 5)
    cluster.run()
    assert "woke" == cluster.output("fine")
    assert Status.FAILED == cluster.state("late").status


def test_a_message_that_raises_is_parked_and_its_caller_told(cluster_factory, poison):
    """An entity message the entity's partition cannot apply is parked; the calling
    orchestration's entity call fails (it goes on), and the next message from the same
    sender, a call to a healthy entity, is applied: the parked one does not block it."""
    bad_entity = str(EntityId("counter", "poison"))
    good_entity = str(EntityId("counter", "fine"))
    poison(EntityHost, "on_message", lambda b, delivery: delivery.entity_id == bad_entity)
    cluster = cluster_factory(registry(), partitions=2)
    caller = id_on(1 - partition_for(bad_entity, 2), 2, "caller")
    cluster.start("calls", caller, [bad_entity, good_entity, good_entity])
    cluster.run()
    output = cluster.output(caller)
    assert output[0].startswith("failed:") and ["ok", "ok"] == output[1:]
    [item] = _parked(cluster)
    assert ("message", bad_entity) == (item.kind, item.target)
    assert "poisoned on_message" in item.error and item.payload is not None
    entity = cluster.call(
        "get_entity", entity_id=good_entity, partition=partition_for(good_entity, 2)
    )
    assert 2 == codec.decode(entity.state)
    assert all(0 == store.count("outbox") for store in cluster.stores)  # acknowledged


def test_a_scheduled_signal_that_raises_is_parked(cluster_factory, poison):
    """A scheduled entity signal whose delivery raises is parked; the partition goes on."""
    late = str(EntityId("counter", "later"))
    poison(EntityHost, "fire_signal", lambda row: row.instance_id == late)
    cluster = cluster_factory(registry(), auto_advance=True)
    for entity_id in (late, str(EntityId("counter", "now"))):
        cluster.submit(
            "signal_entity",
            entity_id=entity_id,
            operation="add",
            input=codec.encode(1),
            signal_time=timedelta(seconds=30),
            partition=0,
        )
    cluster.run()
    assert [("signal", late)] == [(item.kind, item.target) for item in _parked(cluster)]
    done = cluster.call("get_entity", entity_id=str(EntityId("counter", "now")), partition=0)
    assert 1 == codec.decode(done.state)


def test_a_transient_failure_is_retried_and_fails_nothing(cluster_factory, poison):
    """A failure that does not repeat (a disk hiccup) costs one rebuild: the work is
    applied again, nothing fails, nothing is parked."""
    failures = iter([True])
    poison(Episodes, "on_activity_result", lambda b, result: next(failures, False))
    cluster = cluster_factory(registry())
    for n in range(3):
        cluster.start("one_step", f"i{n}", n)
    cluster.run()
    assert [1, 2, 3] == [cluster.output(f"i{n}") for n in range(3)]
    assert 1 == cluster.rebuilds
    assert [] == _parked(cluster)
    assert "poison_items" not in cluster.cores[0].counters


def test_when_dealing_with_the_poison_fails_the_instance_is_quarantined(cluster_factory, poison):
    """Failing the instance the usual way raises too: it is taken out with the fewest
    writes (FAILED, no longer live) and parked; the other instance completes."""
    poison(Episodes, "on_activity_result", lambda b, result: result.instance_id == "bad")
    poison(Lifecycle, "fail", lambda b, live, failure: True)
    cluster = cluster_factory(registry())
    cluster.start("one_step", "bad", 1)
    cluster.start("one_step", "good", 1)
    cluster.run()
    assert 2 == cluster.output("good")
    assert Status.FAILED == cluster.state("bad").status
    assert "bad" not in cluster.cores[0].instances.ids()
    assert [("instance", "bad")] == [(i.kind, i.target) for i in _parked(cluster)]


def test_failures_everywhere_are_no_poison_but_the_partitions_own(cluster_factory, poison):
    """When unit after unit fails alone, the fault is not in the items: after a few the
    error reaches the shell (which restarts the partition) rather than failing every
    instance one by one."""
    poison(Episodes, "on_activity_result", lambda b, result: True)
    cluster = cluster_factory(registry())
    for n in range(MAX_POISON_IN_A_ROW + 2):
        cluster.start("one_step", f"i{n}", n)
    with pytest.raises(RuntimeError, match="poisoned on_activity_result"):
        cluster.run()
    core = cluster.reopen(0)  # what the shell does: restart the partition
    statuses = [core.instances.get_record(f"i{n}").status for n in range(MAX_POISON_IN_A_ROW + 2)]
    assert statuses.count(Status.FAILED) < MAX_POISON_IN_A_ROW


def test_an_unreadable_row_is_parked_and_the_partition_opens(cluster_factory):
    """A stored instance record that cannot be decoded does not keep the partition from
    opening: the row is skipped and parked, the other instances go on."""
    cluster = cluster_factory(registry(), auto_advance=True)
    cluster.start("sleeper", "fine", 5)
    cluster.start("sleeper", "broken", 5)
    cluster.step(0)
    wb = WriteBatch()
    wb.put("instances", r.instance_key("broken"), b"\xc1 not msgpack")
    cluster.stores[0].inner.commit(wb)
    cluster.reopen(0)
    cluster.run()
    assert "woke" == cluster.output("fine")
    [item] = _parked(cluster)
    assert "row" == item.kind and "instances" in item.target


def parent(ctx: Any, child_id: str) -> Any:
    try:
        return (yield ctx.call_sub_orchestrator("one_step", input=1, instance_id=child_id))
    except Exception as exc:  # the child failed: the parent hears of it
        return "child failed: " + type(exc).__name__


def exits(ctx: Any, _: Any) -> Any:
    yield ctx.call_activity("inc", input=1)
    raise SystemExit("orchestration code called sys.exit")


def test_a_step_after_the_commit_that_raises_loses_nothing(cluster_factory, poison):
    """The batch is durable once committed: a step after the commit that raises (here
    the waits' notification, once) is logged, and the batch's replies and activities
    still go out."""
    failures = iter([True])
    poison(
        __import__("duraray.runtime.engine.waits", fromlist=["Waits"]).Waits,
        "notify",
        lambda b, get_record: next(failures, False),
    )
    cluster = cluster_factory(registry())
    token = cluster.start("one_step", "i", 1)
    cluster.run()
    assert "i" == cluster.reply(token)
    assert 2 == cluster.output("i")
    assert 0 == cluster.rebuilds


def test_system_exit_in_orchestration_code_fails_only_its_instance(cluster_factory):
    """SystemExit (or any BaseException) raised by orchestration code fails its instance
    like an error; it never unwinds the partition."""
    reg = registry()
    reg.add_orchestration(exits, "exits")
    cluster = cluster_factory(reg)
    cluster.start("exits", "x", None)
    cluster.start("one_step", "fine", 1)
    cluster.run()
    state = cluster.state("x")
    assert Status.FAILED == state.status and "SystemExit" in state.failure.error_type
    assert 2 == cluster.output("fine")
    assert 0 == cluster.rebuilds


def test_many_poison_messages_to_one_entity_count_once(cluster_factory, poison):
    """Several callers of one broken entity: each call is parked and fails its caller;
    one broken target is no sign the partition itself is broken, so it goes on."""
    bad_entity = str(EntityId("counter", "poison"))
    poison(EntityHost, "on_message", lambda b, delivery: delivery.entity_id == bad_entity)
    cluster = cluster_factory(registry())
    for n in range(5):
        cluster.start("calls", f"c{n}", [bad_entity])
    cluster.run()
    outputs = [cluster.output(f"c{n}") for n in range(5)]
    assert all(out[0].startswith("failed:") for out in outputs)
    assert 5 == len(_parked(cluster))


def test_a_quarantined_child_tells_its_parent(cluster_factory, poison):
    """A child whose failure could only be recorded the minimal way still reports to its
    parent, which goes on."""
    poison(Episodes, "on_activity_result", lambda b, result: result.instance_id == "kid")
    poison(Lifecycle, "fail", lambda b, live, failure: live.record.instance_id == "kid")
    reg = registry()
    reg.add_orchestration(parent, "parent")
    cluster = cluster_factory(reg)
    cluster.start("parent", "mom", "kid")
    cluster.run()
    assert cluster.output("mom").startswith("child failed:")
    assert Status.FAILED == cluster.state("kid").status


def test_an_unreadable_outbox_row_does_not_block_its_channel(cluster_factory):
    """An outbox row the sender cannot read goes out as a placeholder no partition
    applies: the receiver's sequence moves past it and the later messages arrive."""
    cluster = cluster_factory(registry(), partitions=2, hold_messages=True)
    target = id_on(1, 2, "@counter@e")
    for _ in range(3):
        cluster.submit(
            "signal_entity", entity_id=target, operation="add", input=codec.encode(1), partition=1
        )
    sender = id_on(0, 2, "s")
    cluster.start("calls", sender, [target, target])
    cluster.run(resend=False)
    cluster.in_transit.clear()  # lost on the way
    [(key, _)] = cluster.stores[0].scan("outbox")[:1]
    wb = WriteBatch()
    wb.put("outbox", key, b"\xc1 unreadable")
    cluster.stores[0].inner.commit(wb)
    cluster.reopen(0)
    cluster.hold_messages = False
    cluster.run()
    [item] = _parked(cluster)
    assert "row" == item.kind and "outbox" in item.target
    assert all(0 == store.count("outbox") for store in cluster.stores)
