"""PartitionCore driven directly: batches, messaging, exactly-once recording, dedup, timers, meta.

No thread and no Ray: ``partition_driver.Cluster`` runs batches and routes effects itself,
so each test picks the interleaving (held messages, held activities, lost effects, failed
commits) it wants to check. Asserts read ``expected == actual``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from partition_driver import T0, Cluster, SimulatedCrash, completions, id_on, make_registry

from duraray import when_all
from duraray._errors import HubConfigurationError
from duraray.config import HubConfig
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.partition import PartitionCore
from duraray.runtime.engine.records import ActivityResult, Message
from duraray.runtime.engine.store import LmdbStore

Status = h.OrchestrationStatus


def inc(ctx, x):
    return x + 1


def chain(ctx, x):
    for _ in range(3):
        x = yield ctx.call_activity("inc", input=x)
    return x


def collect(ctx, n):
    got = []
    for _ in range(n):
        got.append((yield ctx.wait_for_external_event("e")))
    return got


def child(ctx, x):
    return (yield ctx.call_activity("inc", input=x))


def parent(ctx, child_id):
    return (yield ctx.call_sub_orchestrator("child", input=1, instance_id=child_id))


def looping(ctx, n):
    yield ctx.call_activity("inc", input=n)
    if n < 1:
        ctx.continue_as_new(n + 1)
        return None
    return n


def timers(ctx, delays):
    yield when_all([ctx.create_timer(timedelta(seconds=d)) for d in delays])
    return "done"


REGISTRY = make_registry(
    inc=inc,
    chain=chain,
    collect=collect,
    child=child,
    parent=parent,
    looping=looping,
    timers=timers,
)


def event_message(seq: int, instance_id: str, source: int = 0) -> Message:
    """A crafted partition message raising event "e" with data ``seq``."""
    raised = h.EventRaised(timestamp=T0, name="e", input=codec.encode(seq))
    return Message(seq, source, "event", instance_id, event=codec.encode_event(raised))


def same_run(history: list[h.HistoryEvent]) -> list[h.HistoryEvent]:
    """``history`` without its random execution id, to compare two runs."""
    return [
        replace(e, execution_id="") if isinstance(e, h.ExecutionStarted) else e for e in history
    ]


def raised(history: list[h.HistoryEvent]) -> list[object]:
    return [codec.decode(e.input) for e in history if isinstance(e, h.EventRaised)]


# -- 1. batch semantics --------------------------------------------------------------------


def test_each_batch_commits_at_most_once(cluster_factory):
    """Every run_batch makes at most one store commit, and exactly one when it wrote anything."""
    c: Cluster = cluster_factory(REGISTRY, partitions=2)
    for n in range(6):
        c.start("chain", f"i{n}", n)
    seen = []
    for _ in range(200):
        busy = [i for i, core in enumerate(c.cores) if core.has_work()]
        if not busy:
            break
        for i in busy:
            before = c.stores[i].commits
            c.step(i)
            seen.append(c.stores[i].commits - before)
    expected = {1}
    assert expected == set(seen)
    expected_status = Status.COMPLETED
    assert all(expected_status == c.state(f"i{n}").status for n in range(6))
    before = c.stores[0].commits
    c.call("get_state", instance_id="i0")  # a read-only batch writes nothing
    assert before == c.stores[0].commits


def test_failed_commit_releases_nothing_and_reopen_recovers_last_commit(cluster_factory):
    """A batch whose commit raises releases nothing; the core is dead and a new one sees the last commit."""
    c: Cluster = cluster_factory(REGISTRY, hold_activities=True)
    c.start("collect", "i", 2)
    c.run()
    c.submit("raise_event", instance_id="i", name="e", data=codec.encode("x"), request_id="r1")
    start = c.start("chain", "j", 0)  # would dispatch an activity
    c.stores[0].fail_next = 1
    with pytest.raises(SimulatedCrash):
        c.cores[0].run_batch()
    with pytest.raises(RuntimeError, match="unusable"):
        c.cores[0].run_batch()  # its memory is ahead of its store: it must be replaced
    core = c.reopen(0)
    assert not core.has_work()  # no reply, message or dispatch of the lost batch survives
    assert c.peek("get_state", instance_id="j") is None
    assert not raised(c.peek("get_history", instance_id="i"))
    assert not c.held
    assert start not in c.replies
    c.run()  # the client retries both requests on the new core: applied this time
    expected = ["x"]
    assert expected == raised(c.history("i"))
    expected_dispatches = 1
    assert expected_dispatches == len(c.held)


def test_effects_come_only_from_the_committing_batch(cluster_factory):
    """The batch that commits a reply and a message returns both, and leaves nothing for later."""
    c: Cluster = cluster_factory(REGISTRY, partitions=2, hold_messages=True, hold_activities=True)
    child_id = id_on(1, 2, "child")
    parent_id = id_on(0, 2, "parent")
    token = c.submit("start", instance_id=parent_id, name="parent", input=codec.encode(child_id))
    before = c.stores[0].commits
    fx = c.cores[0].run_batch()
    assert before + 1 == c.stores[0].commits
    expected_reply = [(token, parent_id)]
    assert expected_reply == fx.replies
    expected_kinds = [(1, "start")]
    assert expected_kinds == [(d, m.kind) for d, ms in fx.messages.items() for m in ms]
    assert not c.cores[0].has_work()


# -- 2. messaging --------------------------------------------------------------------------


def test_duplicate_and_reordered_messages_apply_once_in_order(cluster_factory):
    """Messages delivered twice, reversed or with a gap are applied once each, in sequence order."""
    c: Cluster = cluster_factory(REGISTRY, partitions=2)
    iid = id_on(1, 2)
    c.start("collect", iid, 5)
    c.run()
    core = c.cores[1]
    core.submit_messages(0, [event_message(2, iid), event_message(1, iid)])
    core.submit_messages(0, [event_message(1, iid), event_message(2, iid)])
    fx = core.run_batch()
    expected_ack = {0: 2}
    assert expected_ack == fx.acks
    core.submit_messages(0, [event_message(5, iid), event_message(3, iid)])  # 4 is missing
    fx = core.run_batch()
    expected_ack = {0: 3}
    assert expected_ack == fx.acks
    core.submit_messages(0, [event_message(n, iid) for n in (5, 4, 3, 2)])  # the resend
    fx = core.run_batch()
    expected_ack = {0: 5}
    assert expected_ack == fx.acks
    c.run()
    expected = [1, 2, 3, 4, 5]
    assert expected == c.output(iid)
    assert expected == raised(c.history(iid))


def test_acks_empty_the_outbox(cluster_factory):
    """A message stays in the sender's outbox db until its destination acknowledges it."""
    c: Cluster = cluster_factory(REGISTRY, partitions=2, hold_messages=True)
    child_id, parent_id = id_on(1, 2, "child"), id_on(0, 2, "parent")
    c.start("parent", parent_id, child_id)
    c.run(resend=False)
    expected = 1
    assert expected == c.stores[0].count("outbox")
    source, destination, messages = c.in_transit.pop()
    c.cores[destination].submit_messages(source, messages)
    c.step(destination)  # applies the start and acks it
    c.step(source)  # takes the ack
    expected = 0
    assert expected == c.stores[0].count("outbox")
    c.hold_messages = False
    c.run()
    assert not any(s.count("outbox") for s in c.stores)
    expected = 2
    assert expected == c.output(parent_id)


def test_submit_resend_sends_every_unacked_message_again_at_once(cluster_factory):
    """After a transport loss (a peer link that closed), submit_resend re-sends what the
    destination has not acknowledged, without waiting for resend_interval; the copy is
    applied once."""
    config = HubConfig(resend_interval=3600.0)
    c: Cluster = cluster_factory(REGISTRY, partitions=2, hold_messages=True, config=config)
    child_id, parent_id = id_on(1, 2, "child"), id_on(0, 2, "parent")
    c.start("parent", parent_id, child_id)
    c.run(resend=False)
    [(source, destination, lost)] = c.in_transit
    c.in_transit.clear()  # lost with the connection
    c.cores[source].submit_resend(destination)
    c.cores[source].submit_resend(source)  # a peer with nothing unacknowledged: no-op
    fx = c.step(source)
    assert [destination] == list(fx.messages)
    assert [m.seq for m in lost] == [m.seq for m in fx.messages[destination]]
    c.hold_messages = False
    for s, d, messages in c.in_transit:
        c.cores[d].submit_messages(s, messages)
    c.in_transit.clear()
    c.run()
    assert 2 == c.output(parent_id)
    assert not any(s.count("outbox") for s in c.stores)


def test_unacked_messages_are_resent_after_the_interval(cluster_factory):
    """A message whose delivery was lost is resent once resend_interval has passed, not before."""
    config = HubConfig(resend_interval=2.0)
    c: Cluster = cluster_factory(REGISTRY, partitions=2, hold_messages=True, config=config)
    child_id, parent_id = id_on(1, 2, "child"), id_on(0, 2, "parent")
    c.start("parent", parent_id, child_id)
    c.run(resend=False)
    lost = c.in_transit.pop()[2]
    assert not c.cores[0].resend_due()
    c.mono.now += 1.0
    assert not c.cores[0].resend_due()
    c.mono.now += 1.5
    assert c.cores[0].resend_due()
    fx = c.cores[0].run_batch()
    expected = {1: lost}
    assert expected == fx.messages
    c.hold_messages = False
    c.release(0, fx)
    c.run()
    expected_output = 2
    assert expected_output == c.output(parent_id)


def test_unacked_messages_are_resent_on_recovery(cluster_factory):
    """A restarted core sends its whole outbox again in its first batch."""
    c: Cluster = cluster_factory(REGISTRY, partitions=2, hold_messages=True, lmdb=True)
    child_id, parent_id = id_on(1, 2, "child"), id_on(0, 2, "parent")
    c.start("parent", parent_id, child_id)
    c.run(resend=False)
    lost = c.in_transit.pop()[2]
    core = c.reopen(0)
    assert core.has_work()
    fx = core.run_batch()
    expected = {1: lost}
    assert expected == fx.messages


def test_sequence_numbers_survive_a_restart_with_an_empty_outbox(cluster_factory):
    """After every message was acked and the sender restarted, its new messages still apply."""
    c: Cluster = cluster_factory(REGISTRY, partitions=2, lmdb=True)
    c.start("parent", id_on(0, 2, "parent"), id_on(1, 2, "child"))
    c.run()
    assert not any(s.count("outbox") for s in c.stores)
    c.reopen(0)
    second_parent = id_on(0, 2, "second")
    c.start("parent", second_parent, id_on(1, 2, "kid"))
    c.run()
    expected = Status.COMPLETED
    assert expected == c.state(second_parent).status


# -- 3. activity completions ---------------------------------------------------------------


def test_duplicate_activity_results_are_recorded_once(cluster_factory):
    """The same ActivityResult twice, or one for an unknown task, adds one TaskCompleted at most."""
    c: Cluster = cluster_factory(REGISTRY, hold_activities=True)
    c.start("child", "i", 1)
    c.run()
    (task,) = c.held
    result = ActivityResult("i", task.execution_id, task.task_id, result=codec.encode(2))
    stray = [
        ActivityResult("i", task.execution_id, 99, result=codec.encode(0)),
        ActivityResult("nobody", task.execution_id, task.task_id, result=codec.encode(0)),
    ]
    c.cores[0].submit_activity_results([result, *stray, result])
    c.run()
    c.cores[0].submit_activity_results([result])
    c.run()
    expected = {task.task_id: 1}
    assert expected == completions(c.history("i"))
    expected_output = 2
    assert expected_output == c.output("i")


def test_result_for_an_earlier_execution_is_ignored(cluster_factory):
    """After continue-as-new, a late result for the previous execution's task changes nothing."""
    c: Cluster = cluster_factory(REGISTRY, hold_activities=True)
    c.start("looping", "i", 0)
    c.run()
    first = c.held.pop()
    c.execute(first)
    c.run()
    second = c.held.pop()
    assert first.task_id == second.task_id
    assert first.execution_id != second.execution_id
    c.cores[0].submit_activity_results(
        [ActivityResult("i", first.execution_id, first.task_id, result=codec.encode(0))]
    )
    c.run()
    assert not completions(c.history("i"))
    expected = 1
    assert expected == c.stores[0].count("activities")
    c.execute(second)
    c.run()
    assert expected == c.output("i")


def test_result_for_a_restarted_instance_is_ignored(cluster_factory):
    """A result for a terminated execution is not recorded in the instance started anew."""
    c: Cluster = cluster_factory(REGISTRY, hold_activities=True)
    c.start("child", "i", 1)
    c.run()
    old = c.held.pop()
    c.call("terminate", instance_id="i")
    c.call("start", instance_id="i", name="child", input=codec.encode(10))
    new = c.held.pop()
    c.execute(old)
    c.run()
    assert not completions(c.history("i"))
    c.execute(new)
    c.run()
    expected = 11
    assert expected == c.output("i")


# -- 4. client request ids -----------------------------------------------------------------


def test_retried_request_id_is_applied_once(cluster_factory):
    """A mutating request retried with its request id is applied once; both calls get the same reply."""
    c: Cluster = cluster_factory(REGISTRY)
    c.start("collect", "i", 3)
    c.run()
    args = {"instance_id": "i", "name": "e", "data": codec.encode("x"), "request_id": "r1"}
    first = c.submit("raise_event", **args)
    c.run()
    second = c.submit("raise_event", **args)
    same_batch = [c.submit("raise_event", **{**args, "request_id": "r2"}) for _ in range(2)]
    c.run()
    assert c.replies[first] == c.replies[second]
    assert c.replies[same_batch[0]] == c.replies[same_batch[1]]
    expected = ["x", "x"]
    assert expected == raised(c.history("i"))


def test_retried_start_gets_the_stored_reply(cluster_factory):
    """A retried start returns the instance id again instead of an already-exists error."""
    c: Cluster = cluster_factory(REGISTRY)
    tokens = [c.start("child", "i", 1) for _ in range(2)]
    c.run()
    tokens.append(c.start("child", "i", 1))
    c.run()
    expected = ["i", "i", "i"]
    assert expected == [c.reply(t) for t in tokens]
    expected_starts = 1
    assert expected_starts == sum(isinstance(e, h.ExecutionStarted) for e in c.history("i"))


def test_request_id_dedup_survives_reopen(cluster_factory):
    """A request id applied before a restart is not applied again by the recovered core."""
    c: Cluster = cluster_factory(REGISTRY, lmdb=True)
    c.start("collect", "i", 3)
    c.run()
    args = {"instance_id": "i", "name": "e", "data": codec.encode("x"), "request_id": "r1"}
    c.submit("raise_event", **args)
    c.crash_after_commit(0)  # applied and durable, but the reply is lost
    c.run()
    expected = ["x"]
    assert expected == raised(c.history("i"))
    retry = c.submit("raise_event", **args)
    c.run()
    assert c.reply(retry) is None
    assert expected == raised(c.history("i"))


def _stored_reply_ids(c: Cluster) -> list[str]:
    return [k[1:].decode() for k, _ in c.cores[0].store.scan("dedup", prefix=b"r")]


def test_stored_replies_are_pruned_after_the_retention(cluster_factory):
    """A reply kept for request-id dedup is deleted once request_dedup_seconds passed
    (with its time index); younger ones stay, and a retry within the window still gets
    the stored reply."""
    c: Cluster = cluster_factory(REGISTRY, config=HubConfig(request_dedup_seconds=60))
    c.start("collect", "i", 3)
    c.run()
    args = {"instance_id": "i", "name": "e", "data": codec.encode("x")}
    c.submit("raise_event", **args, request_id="old")
    c.run()
    c.now += timedelta(seconds=30)
    c.submit("raise_event", **args, request_id="young")
    c.run()
    assert ["old", "start-i", "young"] == sorted(_stored_reply_ids(c))
    c.now += timedelta(seconds=31)  # "start-i" and "old" are 61 s old, "young" 31 s
    retry = c.submit("raise_event", **args, request_id="young")
    c.run()
    assert ["young"] == _stored_reply_ids(c)
    assert c.reply(retry) is None  # deduplicated: the stored reply, not a third event
    assert ["x", "x"] == raised(c.history("i"))
    times = [k for k, _ in c.cores[0].store.scan("dedup", prefix=b"t")]
    assert 1 == len(times) and times[0].endswith(b"young")
    assert 2 == c.cores[0].counters["request_replies_pruned"]


def test_pruning_is_bounded_per_batch(cluster_factory, monkeypatch):
    """A backlog of expired replies goes a bounded number per batch, oldest first."""
    from duraray.runtime.engine import client_ops

    monkeypatch.setattr(client_ops, "PRUNE_BATCH", 3)
    c: Cluster = cluster_factory(REGISTRY, config=HubConfig(request_dedup_seconds=1))
    c.start("collect", "i", 100)
    c.run()
    for n in range(7):
        c.submit("raise_event", instance_id="i", name="e", data=codec.encode(n), request_id=f"r{n}")
        c.run()
        c.now += timedelta(milliseconds=1)
    c.now += timedelta(seconds=60)  # past the retention and the pause between looks
    remaining = []
    for _ in range(3):
        c.submit("get_state", instance_id="i")  # any request makes a batch
        c.step(0)
        remaining.append(len(_stored_reply_ids(c)))
    assert [5, 2, 0] == remaining  # 8 stored (the start's too), 3 per batch


def test_pruning_copes_with_early_and_backward_clocks(cluster_factory):
    """A clock near 1970 (a test clock) or set back stores and prunes without failing,
    and a clock set back does not stall pruning."""
    c: Cluster = cluster_factory(REGISTRY, config=HubConfig(request_dedup_seconds=60))
    c.now = datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC)
    c.start("collect", "i", 10)
    c.run()
    c.submit("raise_event", instance_id="i", name="e", data=codec.encode(1), request_id="a")
    c.run()
    assert ["a", "start-i"] == sorted(_stored_reply_ids(c))
    c.now = T0 + timedelta(hours=2)  # far ahead: both are past the window
    c.submit("get_state", instance_id="i")
    c.run()
    assert [] == _stored_reply_ids(c)
    c.now = T0  # set back by two hours
    c.submit("raise_event", instance_id="i", name="e", data=codec.encode(2), request_id="b")
    c.run()
    c.now = T0 + timedelta(seconds=61)
    c.submit("get_state", instance_id="i")
    c.run()
    assert [] == _stored_reply_ids(c)


# -- 5. timers -----------------------------------------------------------------------------


def test_timers_are_rows_rearmed_on_reopen_and_fire_in_due_order(cluster_factory):
    """Timers live in the timers db, survive a restart and fire in due-time order."""
    c: Cluster = cluster_factory(REGISTRY, lmdb=True)
    c.start("timers", "i", [30, 10, 20])
    c.run()
    expected_rows = 3
    assert expected_rows == c.stores[0].count("timers")
    core = c.reopen(0)
    expected_due = T0 + timedelta(seconds=10)
    assert expected_due == core.next_due()
    assert not core.has_work()
    c.advance(15)
    c.run()
    expected_rows = 2
    assert expected_rows == c.stores[0].count("timers")
    c.advance(60)
    c.run()
    assert not c.stores[0].count("timers")
    history = c.history("i")
    created = {e.event_id: e.fire_at for e in history if isinstance(e, h.TimerCreated)}
    fired = [e.timer_id for e in history if isinstance(e, h.TimerFired)]
    assert sorted(created, key=created.get) == fired
    expected_output = "done"
    assert expected_output == c.output("i")


def test_delayed_start_stays_pending_until_due(cluster_factory):
    """An instance started with start_at stays PENDING, buffering events, until its start is due."""
    c: Cluster = cluster_factory(REGISTRY, lmdb=True)
    start_at = T0 + timedelta(minutes=5)
    c.call("start", instance_id="i", name="collect", input=codec.encode(1), start_at=start_at)
    c.call("raise_event", instance_id="i", name="e", data=codec.encode("early"))
    c.reopen(0)
    c.advance(299)
    c.run()
    expected = Status.PENDING
    assert expected == c.state("i").status
    c.advance(1)
    c.run()
    expected_output = ["early"]
    assert expected_output == c.output("i")


def test_delayed_start_survives_a_crash_right_after_its_start_timer_fired(cluster_factory):
    """A start timer that fired in a batch whose effects were lost still starts the instance."""
    c: Cluster = cluster_factory(REGISTRY, lmdb=True)
    c.call(
        "start", instance_id="i", name="chain", input=codec.encode(0), start_at=T0 + timedelta(1)
    )
    c.advance(86400)
    c.crash_after_commit(0)  # fires the start timer (row deleted), then dies
    assert not c.stores[0].count("timers")
    c.run()
    expected = 3
    assert expected == c.output("i")


# -- 6. meta -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"config": HubConfig(partitions=3)}, "partitions"),
        ({"index": 1}, "partition 1"),
        ({"hub": "other"}, "other"),
    ],
)
def test_reopen_with_other_identity_is_refused(tmp_path, overrides, message):
    """A store created for one hub, partition and partition count refuses any other."""
    kwargs = {"hub": "hub", "index": 0, "registry": REGISTRY, "config": HubConfig(partitions=2)}
    PartitionCore(store=LmdbStore(tmp_path, sync=False), **kwargs).close()
    store = LmdbStore(tmp_path, sync=False)
    try:
        with pytest.raises(HubConfigurationError, match=message):
            PartitionCore(store=store, **{**kwargs, **overrides})
    finally:
        store.close()


# -- 8. the LRU of live generators ---------------------------------------------------------


def test_tiny_generator_cache_still_completes_everything(cluster_factory):
    """With one cached generator, interleaved instances are evicted, replayed and still complete."""
    c: Cluster = cluster_factory(
        REGISTRY, config=HubConfig(max_cached_orchestrations=1), hold_activities=True
    )
    reference: Cluster = cluster_factory(REGISTRY, hold_activities=True)
    for cluster in (c, reference):
        for n in range(8):
            cluster.start("chain", f"i{n}", n * 10)
        cluster.run()
        while cluster.held:
            held, cluster.held = cluster.held, []
            for task in held:  # one result per instance per batch: maximal interleaving
                cluster.execute(task)
            cluster.run()
    expected = [n * 10 + 3 for n in range(8)]
    assert expected == [c.output(f"i{n}") for n in range(8)]
    assert c.cores[0].counters["replays"] > 0
    assert not reference.cores[0].counters["replays"]
    for n in range(8):  # replay and resume produce the same history
        assert same_run(reference.history(f"i{n}")) == same_run(c.history(f"i{n}"))
