"""Per-entity scheduling and the lock protocol: ``admit``, ``release``, ``sorted_lock_set``."""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duraray.entities.ids import EntityId
from duraray.entities.scheduler import (
    EntityRecord,
    LockRequest,
    OperationMessage,
    UnlockMessage,
    admit,
    release,
    sorted_lock_set,
)

E = "@acct@a"


def op(name: str, owner: str | None = None) -> OperationMessage:
    return OperationMessage(name, lock_owner=owner)


def lock(owner: str, lock_set: list[str] | None = None, position: int = 0) -> LockRequest:
    return LockRequest(
        owner=owner,
        instance_id=f"orch-{owner}",
        execution_id="exec",
        task_id=3,
        lock_set=lock_set or [E],
        position=position,
    )


def names(messages: list[OperationMessage]) -> list[str]:
    return [m.operation for m in messages]


def test_unlocked_entity_runs_operations_in_order():
    """Without a lock every operation is ready at once, in arrival order."""
    record = EntityRecord(E)
    out = admit(record, [op("a"), op("b"), op("c")])
    expected = ["a", "b", "c"]
    assert expected == names(out.ready)
    expected_queue: list[object] = []
    assert expected_queue == record.queue
    assert not out.changed


def test_lock_request_locks_and_steps_to_the_next_entity():
    """A lock request takes the lock and comes back with position + 1, not yet granted."""
    record = EntityRecord(E)
    request = lock("s1", ["@acct@a", "@acct@b"])
    out = admit(record, [request])
    expected = ("s1", "orch-s1")
    assert expected == (record.lock_owner, record.locked_by)
    (step,) = out.lock_steps
    expected_step = (1, "@acct@b", False)
    assert expected_step == (step.position, step.target, step.is_granted)
    assert out.changed


def test_lock_request_for_the_last_entity_is_granted():
    """When the lock set is exhausted the step is a grant."""
    out = admit(EntityRecord("@acct@b"), [lock("s1", ["@acct@a", "@acct@b"], position=1)])
    (step,) = out.lock_steps
    expected = (2, True)
    assert expected == (step.position, step.is_granted)


def test_while_locked_others_queue_and_the_owner_runs():
    """While locked, other senders' operations queue in order; the owner's run."""
    record = EntityRecord(E)
    out = admit(record, [lock("s1"), op("x1"), op("own1", "s1"), op("x2"), op("own2", "s1")])
    expected_ready = ["own1", "own2"]
    assert expected_ready == names(out.ready)
    expected_queue = ["x1", "x2"]
    assert expected_queue == names(record.queue)


def test_operation_from_another_section_queues():
    """An operation sent from a different critical section is not the owner's."""
    record = EntityRecord(E, lock_owner="s1", locked_by="orch-s1")
    out = admit(record, [op("other", "s2")])
    expected: list[OperationMessage] = []
    assert expected == out.ready
    expected_queue = ["other"]
    assert expected_queue == names(record.queue)


def test_unlock_drains_the_queue_in_order():
    """The owner's unlock runs everything that waited, in arrival order."""
    record = EntityRecord(E)
    admit(record, [lock("s1"), op("x1"), op("x2")])
    out = admit(record, [UnlockMessage("s1"), op("x3")])
    expected = ["x1", "x2", "x3"]
    assert expected == names(out.ready)
    expected_record = (None, None, [])
    assert expected_record == (record.lock_owner, record.locked_by, record.queue)
    assert out.changed


def test_queued_lock_request_takes_the_lock_on_unlock():
    """A queued lock request re-locks the entity; what queued behind it keeps waiting."""
    record = EntityRecord(E)
    admit(record, [lock("s1"), op("x1"), lock("s2"), op("x2"), op("x3")])
    out = admit(record, [UnlockMessage("s1")])
    expected_ready = ["x1"]
    assert expected_ready == names(out.ready)
    expected_lock = ("s2", "orch-s2", ["s2"])
    assert expected_lock == (record.lock_owner, record.locked_by, [s.owner for s in out.lock_steps])
    expected_queue = ["x2", "x3"]
    assert expected_queue == names(record.queue)
    out = admit(record, [UnlockMessage("s2")])
    assert expected_queue == names(out.ready)
    assert record.lock_owner is None


def test_a_request_already_holding_locks_goes_before_fresh_ones():
    """On unlock, a queued request that holds other entities' locks (position > 0) is
    granted before fresh requests ahead of it: its held locks sit idle while it waits."""
    record = EntityRecord(E)
    sets = ["@acct@0", E]
    admit(record, [lock("s1"), lock("fresh1"), lock("fresh2"), lock("held", sets, position=1)])
    out = admit(record, [UnlockMessage("s1")])
    assert "held" == record.lock_owner
    assert ["held"] == [s.owner for s in out.lock_steps]
    assert ["fresh1", "fresh2"] == [m.owner for m in record.queue]
    # The fresh head was passed over once; FIFO resumes among the rest.
    assert 1 == record.queue[0].passed
    admit(record, [UnlockMessage("held")])
    assert "fresh1" == record.lock_owner


def test_a_further_along_request_never_passes_an_operation():
    """Lock requests behind a queued operation keep their place: the operation's sender
    may have sent it before a lock request of its own."""
    record = EntityRecord(E)
    sets = ["@acct@0", E]
    admit(record, [lock("s1"), lock("fresh"), op("x1"), lock("held", sets, position=1)])
    out = admit(record, [UnlockMessage("s1")])
    assert "fresh" == record.lock_owner
    assert [] == names(out.ready)
    assert ["x1", "held"] == [getattr(m, "operation", None) or m.owner for m in record.queue]


def test_the_head_is_passed_over_at_most_max_passes_times():
    """A fresh request at the head lets at most MAX_PASSES further-along ones go first."""
    from duraray.entities.scheduler import MAX_PASSES

    record = EntityRecord(E)
    sets = ["@acct@0", E]
    admit(record, [lock("s0"), lock("fresh")])
    owner = "s0"
    granted = []
    for i in range(MAX_PASSES + 2):
        admit(record, [lock(f"held{i}", sets, position=1)])
        admit(record, [UnlockMessage(owner)])
        owner = record.lock_owner
        granted.append(owner)
    assert [f"held{i}" for i in range(MAX_PASSES)] + ["fresh"] == granted[: MAX_PASSES + 1]


def test_a_forwarded_request_starts_with_no_passes():
    """The pass count is per entity: a request forwarded onwards carries 0."""
    record = EntityRecord(E)
    first = replace(lock("s1", [E, "@acct@z"]), passed=3)
    out = admit(record, [first])
    assert [(1, 0)] == [(s.position, s.passed) for s in out.lock_steps]


def test_unlock_from_a_non_owner_is_ignored():
    """A stale unlock (from a section not holding the lock) changes nothing."""
    record = EntityRecord(E)
    admit(record, [lock("s1"), op("x1")])
    out = admit(record, [UnlockMessage("s2")])
    expected: tuple[list[OperationMessage], bool] = ([], False)
    assert expected == (out.ready, out.changed)
    expected_state = ("s1", ["x1"])
    assert expected_state == (record.lock_owner, names(record.queue))
    out = admit(EntityRecord(E), [UnlockMessage("s1")])
    assert not out.changed


def test_release_forces_the_unlock():
    """``release`` unlocks whoever holds the lock and runs what waited."""
    record = EntityRecord(E)
    admit(record, [lock("s1"), op("x1"), lock("s2"), op("x2")])
    out = release(record)
    expected = (["x1"], "s2", ["x2"])
    assert expected == (names(out.ready), record.lock_owner, names(record.queue))
    out = release(record)
    expected = (["x2"], None, [])
    assert expected == (names(out.ready), record.lock_owner, names(record.queue))


def test_release_of_an_unlocked_entity_does_nothing():
    """Releasing an entity nobody holds is a no-op."""
    out = release(EntityRecord(E, state=b"\x01"))
    expected = ([], [], False)
    assert expected == (out.ready, out.lock_steps, out.changed)


@pytest.mark.parametrize(
    ("record", "exists"),
    [
        (EntityRecord(E), False),
        (EntityRecord(E, state=b"\x00"), True),
        (EntityRecord(E, locked_by="orch", lock_owner="s1"), True),
        (EntityRecord(E, queue=[op("x")]), True),
    ],
)
def test_entity_exists_with_state_lock_or_queue(record, exists):
    """An entity exists while it has state, holds a lock or has waiting messages."""
    expected = exists
    assert expected == record.exists


def test_sorted_lock_set_sorts_and_deduplicates():
    """The lock set is sorted by (name, key), duplicates (any spelling) removed."""
    ids = ["@b@1", EntityId("A", "2"), ("a", "1"), "@B@1", "@a@2"]
    expected = ["@a@1", "@a@2", "@b@1"]
    assert expected == sorted_lock_set(ids)


def test_sorted_lock_set_rejects_empty_and_bad_ids():
    """An empty lock set and malformed ids are errors."""
    with pytest.raises(ValueError, match="at least one entity"):
        sorted_lock_set([])
    with pytest.raises(ValueError):
        sorted_lock_set(["counter"])


# -- property: ordering and mutual exclusion under random interleavings ----------------------

SENDERS = ["c0", "c1", "c2"]
OWNERS = ["A", "B"]


@st.composite
def scenarios(draw):
    """Each client sends some operations; each owner runs 0-2 critical sections."""
    scripts: dict[str, list[object]] = {}
    for sender in SENDERS:
        count = draw(st.integers(0, 5))
        scripts[sender] = [op(f"{sender}-{i}") for i in range(count)]
    for owner in OWNERS:
        script: list[object] = []
        for section in range(draw(st.integers(0, 2))):
            sid = f"{owner}{section}"
            ops = draw(st.integers(0, 3))
            script += [lock(sid), *(op(f"{sid}-{i}", sid) for i in range(ops)), UnlockMessage(sid)]
        scripts[owner] = script
    picks = draw(st.lists(st.sampled_from(SENDERS + OWNERS), max_size=80))
    return scripts, picks


def key(message: object) -> str:
    """A unique label of a scenario message (lock requests change when they advance)."""
    if isinstance(message, OperationMessage):
        return message.operation
    assert isinstance(message, LockRequest | UnlockMessage)
    return f"{type(message).__name__}:{message.owner}"


def simulate(scripts, picks):
    """Deliver messages one at a time; an owner sends after a lock only once it is granted."""
    record = EntityRecord(E)
    cursor = dict.fromkeys(scripts, 0)
    waiting_grant: set[str] = set()
    ran: list[OperationMessage] = []
    arrival: dict[str, int] = {}

    def enabled(sender: str) -> bool:
        return cursor[sender] < len(scripts[sender]) and sender not in waiting_grant

    order = iter(picks)
    while any(enabled(s) for s in scripts):
        pick = next(order, None)
        sender = pick if pick is not None and enabled(pick) else next(filter(enabled, scripts))
        message = scripts[sender][cursor[sender]]
        cursor[sender] += 1
        arrival[key(message)] = len(arrival)
        holder = record.lock_owner
        out = admit(record, [message])
        if isinstance(message, LockRequest):
            waiting_grant.add(sender)
        for step in out.lock_steps:
            assert step.is_granted
            waiting_grant.discard(step.instance_id.removeprefix("orch-")[0])
        unlocked = isinstance(message, UnlockMessage) and message.owner == holder
        for ready in out.ready:
            # (b) while a section holds the lock only its own operations run ...
            if holder is not None and not unlocked:
                assert holder == ready.lock_owner, f"{ready} ran while {holder} held the lock"
            # ... and an unlock runs what queued before the next lock request, not after it.
            for step in out.lock_steps:
                assert arrival[key(ready)] < arrival[key(step)], f"{ready} overtook {step}"
        ran.extend(out.ready)
    return record, ran


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_random_interleavings_keep_order_exclusion_and_exactly_once(scenario):
    """Operations run in send order per sender, never inside another's lock, exactly once."""
    scripts, picks = scenario
    record, ran = simulate(scripts, picks)
    # (a) each sender's operations run in the order it sent them
    for sender, script in scripts.items():
        sent = [m.operation for m in script if isinstance(m, OperationMessage)]
        expected = sent
        assert expected == [m.operation for m in ran if m.operation.startswith(sender)]
    # (c) once every section unlocked, nothing waits and every operation ran exactly once
    expected_end = (None, None, [])
    assert expected_end == (record.lock_owner, record.locked_by, record.queue)
    sent_all = [m.operation for s in scripts.values() for m in s if isinstance(m, OperationMessage)]
    expected_tally = Tally(sent_all)
    assert expected_tally == Tally(m.operation for m in ran)
