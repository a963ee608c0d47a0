"""Replay executor: entity locks are released however an execution ends, never by
eviction, and changed entity code is a NonDeterminismError that still releases locks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from duraray.orchestrations import history as h

A, B = "@acct@a", "@acct@b"


def transfer(ctx, amount):
    """Move ``amount`` from A to B inside a critical section."""
    with (yield ctx.lock_entities([B, A])):
        balance = yield ctx.call_entity(A, "get")
        yield ctx.call_entity(A, "add", -amount)
        yield ctx.call_entity(B, "add", amount)
    return balance


def returns_without_leaving(ctx, _):
    yield ctx.lock_entities([A, B])
    return "done"


def returns_inside_with(ctx, _):
    with (yield ctx.lock_entities([A, B])):
        return "done"


def raises_inside_with(ctx, _):
    with (yield ctx.lock_entities([A, B])):
        raise ValueError("bad")


def raises_without_leaving(ctx, _):
    yield ctx.lock_entities([A, B])
    raise ValueError("bad")


def continues_inside_with(ctx, n):
    with (yield ctx.lock_entities([A, B])):
        ctx.continue_as_new(n + 1)


def continues_and_waits(ctx, n):
    with (yield ctx.lock_entities([A, B])):
        ctx.continue_as_new(n + 1)
        yield ctx.create_timer(timedelta(seconds=1))


@pytest.mark.parametrize(
    ("fn", "status"),
    [
        (returns_without_leaving, h.OrchestrationStatus.COMPLETED),
        (returns_inside_with, h.OrchestrationStatus.COMPLETED),
        (raises_inside_with, h.OrchestrationStatus.FAILED),
        (raises_without_leaving, h.OrchestrationStatus.FAILED),
        (continues_inside_with, h.OrchestrationStatus.CONTINUED_AS_NEW),
        (continues_and_waits, h.OrchestrationStatus.CONTINUED_AS_NEW),
    ],
)
def test_locks_are_released_however_the_execution_ends(kit, fn, status):
    """Ending inside a section sends the unlock once, before the completion event."""
    run = kit.run(fn, kit.start(0), kit.episode(1, kit.lock_granted(0, [A, B])))
    *_, unlock, completion = run.new
    expected = (kit.section_id(0), [A, B], status)
    assert expected == (unlock.critical_section_id, unlock.lock_set, run.status)
    assert completion is run.completion
    expected_unlocks = 1
    assert expected_unlocks == len(run.of_type(h.EntityUnlockSent))


def test_pending_lock_request_is_released_when_the_orchestration_fails(kit):
    """A lock request not yet granted is unlocked when the execution fails."""

    def orch(ctx, _):
        ctx.lock_entities([B, A])
        yield ctx.call_activity("charge")
        raise ValueError("late failure")

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(1)))
    expected = [kit.lock_requested(0, [A, B])]
    assert expected == run.steps[0][:1]
    unlock, completion = run.new
    expected_unlock = kit.unlock_sent(2, [A, B], section=0, t=1)
    assert expected_unlock == unlock
    assert h.OrchestrationStatus.FAILED is completion.status


def test_eviction_inside_a_section_emits_nothing(kit):
    """Closing the executor inside a section records no unlock; a replay carries on."""
    run = kit.run(
        transfer,
        kit.start(2),
        kit.episode(1, kit.lock_granted(0, [A, B])),
        kit.episode(2, kit.entity_done(1, 10)),
    )
    run.executor.close()
    expected: list[h.HistoryEvent] = []
    assert expected == run.executor.take_new_events()
    _, new = kit.replay(transfer, run.history, kit.episode(3, kit.entity_done(2)))
    expected = [kit.entity_called(3, B, "add", 2, t=3, lock_owner=kit.section_id(0))]
    assert expected == new


def caller_v1(ctx, _):
    yield ctx.call_entity("@counter@a", "add", 1)
    yield ctx.call_entity("@counter@a", "get")


@pytest.mark.parametrize(
    ("changed", "now_calls"),
    [
        (lambda ctx: ctx.call_entity("@counter@b", "add", 1), "call_entity('@counter@b', 'add')"),
        (lambda ctx: ctx.call_entity("@counter@a", "sub", 1), "call_entity('@counter@a', 'sub')"),
        (lambda ctx: ctx.lock_entities(["@counter@a"]), "lock_entities(['@counter@a'])"),
    ],
)
def test_changed_entity_call_is_a_non_determinism_error(kit, changed, now_calls):
    """Replaying a recorded call against changed code fails, naming both calls."""

    def caller_v2(ctx, _):
        yield changed(ctx)
        yield ctx.call_entity("@counter@a", "get")

    run = kit.run(caller_v1, kit.start(), kit.episode(1, kit.entity_done(0)))
    executor, _ = kit.replay(caller_v2, run.history, kit.episode(2, kit.entity_done(1, 1)))
    failure = executor.completion.failure
    expected = "duraray.NonDeterminismError"
    assert expected == failure.error_type
    assert "call_entity('@counter@a', 'add') at #0" in failure.message
    assert f"the code now calls {now_calls}" in failure.message


def holds_a_lock_v1(ctx, _):
    with (yield ctx.lock_entities([A])):
        yield ctx.call_entity(A, "get")
        yield ctx.call_entity(A, "get")


def leaves_early_v2(ctx, _):
    with (yield ctx.lock_entities([A])):
        yield ctx.call_entity(A, "get")
    yield ctx.call_activity("audit")


def returns_early_v2(ctx, _):
    with (yield ctx.lock_entities([A])):
        yield ctx.call_entity(A, "get")
        return "early"


@pytest.mark.parametrize("changed", [leaves_early_v2, returns_early_v2])
def test_non_determinism_releases_the_locks_the_history_holds(kit, changed):
    """A changed orchestration failing inside a recorded section still unlocks it."""
    run = kit.run(
        holds_a_lock_v1,
        kit.start(),
        kit.episode(1, kit.lock_granted(0, [A])),
        kit.episode(2, kit.entity_done(1)),
    )
    executor, new = kit.replay(changed, run.history, kit.episode(3, kit.entity_done(2)))
    expected = "duraray.NonDeterminismError"
    assert expected == executor.completion.failure.error_type
    unlocks = [e for e in new if isinstance(e, h.EntityUnlockSent)]
    expected_unlocks = [(kit.section_id(0), [A])]
    assert expected_unlocks == [(e.critical_section_id, e.lock_set) for e in unlocks]
    assert new[-1] is executor.completion


def test_non_determinism_sends_no_unlock_for_a_lock_never_requested(kit):
    """A lock request that only the changed code makes is dropped with its unlock."""

    def changed(ctx, _):
        yield ctx.lock_entities([A])

    run = kit.run(caller_v1, kit.start(), kit.episode(1, kit.entity_done(0)))
    executor, new = kit.replay(changed, run.history, kit.episode(2, kit.entity_done(1)))
    expected = [executor.completion]
    assert expected == new


def test_non_determinism_after_a_recorded_unlock_sends_no_second_unlock(kit):
    """A section the history already released is not unlocked again."""

    def v1(ctx, _):
        with (yield ctx.lock_entities([A])):
            pass
        yield ctx.call_activity("audit")

    def v2(ctx, _):
        with (yield ctx.lock_entities([A])):
            pass
        yield ctx.call_activity("report")

    run = kit.run(v1, kit.start(), kit.episode(1, kit.lock_granted(0, [A])))
    executor, new = kit.replay(v2, run.history, kit.episode(2, kit.done(2)))
    expected = [executor.completion]
    assert expected == new
    assert "call_activity('audit')" in executor.completion.failure.message
