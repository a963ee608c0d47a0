"""Replay executor: entity calls, signals and critical sections (locks and their rules)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from duraray._errors import EntityOperationFailedError, LockingRuleError, TaskFailedError
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.orchestrations.context import CriticalSection
from duraray.orchestrations.task import when_all

A, B, C = "@acct@a", "@acct@b", "@acct@c"


def test_call_entity_records_the_call_and_returns_the_result(kit):
    """``call_entity`` emits EntityOperationCalled and its task yields the decoded result."""

    def orch(ctx, _):
        return (yield ctx.call_entity(EntityId("Counter", "k"), "add", {"by": 2}))

    run = kit.run(orch, kit.start(), kit.episode(1, kit.entity_done(0, [1, (2, 3)])))
    expected = [kit.entity_called(0, "@counter@k", "add", {"by": 2})]
    assert expected == run.steps[0]
    expected_output = [1, (2, 3)]
    assert expected_output == run.output()


def test_call_entity_validates_its_arguments(kit):
    """A malformed entity id or an empty operation is rejected at the call site."""

    def orch(ctx, _):
        errors = []
        for entity, operation in [("@counter@", "get"), ("@counter@k", ""), (5, "get")]:
            try:
                ctx.call_entity(entity, operation)
            except (ValueError, TypeError) as exc:
                errors.append(type(exc).__name__)
        return errors
        yield

    expected = ["ValueError", "ValueError", "TypeError"]
    assert expected == kit.run(orch, kit.start()).output()


def test_failed_entity_call_raises_entity_operation_failed_error(kit):
    """A failed call raises EntityOperationFailedError (a TaskFailedError) naming everything."""

    def orch(ctx, _):
        try:
            yield ctx.call_entity("@Counter@k", "withdraw", 5)
        except TaskFailedError as exc:
            return [
                isinstance(exc, EntityOperationFailedError),
                str(exc),
                exc.details.message,
                exc.details.error_type,
            ]

    run = kit.run(
        orch, kit.start(), kit.episode(1, kit.entity_fail(0, "overdrawn", error_type="ValueError"))
    )
    flag, message, inner, error_type = run.output()
    expected = (True, "overdrawn", "ValueError")
    assert expected == (flag, inner, error_type)
    for part in ("@counter@k", "withdraw", "overdrawn"):
        assert part in message


def test_uncaught_entity_failure_fails_the_orchestration(kit):
    """An uncaught failed call fails the orchestration with EntityOperationFailedError."""

    def orch(ctx, _):
        yield ctx.call_entity(A, "get")

    run = kit.run(orch, kit.start(), kit.episode(1, kit.entity_fail(0, "no")))
    expected = (h.OrchestrationStatus.FAILED, "duraray.EntityOperationFailedError")
    assert expected == (run.status, run.failure.error_type)
    expected_inner = "no"
    assert expected_inner == run.failure.inner.message


def test_signal_entity_records_a_signal_with_its_due_time(kit):
    """A timedelta ``signal_time`` is relative to current_utc_datetime; none means now."""

    def orch(ctx, _):
        ctx.signal_entity(("Counter", "k"), "add", 1, signal_time=timedelta(seconds=10))
        ctx.signal_entity(A, "reset")
        ctx.signal_entity(B, "add", 2, signal_time=datetime(2024, 1, 1, 0, 1))  # naive = UTC
        return None
        yield

    run = kit.run(orch, kit.start(t=5))
    expected = [
        kit.entity_signaled(0, "@counter@k", "add", 1, t=5, signal_at=15),
        kit.entity_signaled(1, A, "reset", t=5),
        kit.entity_signaled(2, B, "add", 2, t=5, signal_at=60),
        kit.completed(t=5),
    ]
    assert expected == run.new


def test_lock_entities_requests_the_sorted_deduplicated_set(kit):
    """The lock request carries the sorted, de-duplicated set and a critical-section id."""

    def orch(ctx, _):
        yield ctx.lock_entities([C, "@ACCT@a", ("acct", "b"), A])

    run = kit.run(orch, kit.start())
    expected = [kit.lock_requested(0, [A, B, C])]
    assert expected == run.new
    expected_id = f"{kit.INSTANCE_ID}#exec-1#0"
    assert expected_id == run.new[0].critical_section_id


def transfer(ctx, amount):
    """Move ``amount`` from A to B inside a critical section."""
    with (yield ctx.lock_entities([B, A])) as section:
        seen = [
            type(section).__name__,
            [str(e) for e in section.locked_entities],
            ctx.is_in_critical_section,
        ]
        balance = yield ctx.call_entity(A, "get")
        yield when_all([ctx.call_entity(A, "add", -amount), ctx.call_entity(B, "add", amount)])
    return [*seen, balance, ctx.is_in_critical_section]


def test_critical_section_runs_and_releases_its_locks(kit):
    """The grant yields a CriticalSection; calls carry its id; leaving it sends the unlock."""
    section = kit.section_id(0)
    run = kit.run(
        transfer,
        kit.start(5),
        kit.episode(1, kit.lock_granted(0, [A, B])),
        kit.episode(2, kit.entity_done(1, 10)),
        kit.episode(3, kit.entity_done(2), kit.entity_done(3)),
    )
    expected = [
        [kit.lock_requested(0, [A, B])],
        [kit.entity_called(1, A, "get", t=1, lock_owner=section)],
        [
            kit.entity_called(2, A, "add", -5, t=2, lock_owner=section),
            kit.entity_called(3, B, "add", 5, t=2, lock_owner=section),
        ],
        [
            kit.unlock_sent(4, [A, B], section=0, t=3),
            kit.completed(["CriticalSection", [A, B], True, 10, False], t=3),
        ],
    ]
    assert expected == run.steps


def test_replaying_a_history_with_entity_events_adds_nothing(kit):
    """A fresh executor replaying a section's history matches every recorded action."""
    run = kit.run(
        transfer,
        kit.start(5),
        kit.episode(1, kit.lock_granted(0, [A, B])),
        kit.episode(2, kit.entity_done(1, 10)),
    )
    executor, new = kit.replay(transfer, run.history)
    expected: list[h.HistoryEvent] = []
    assert expected == new
    assert executor.is_waiting and executor.context.is_in_critical_section


def test_grant_task_value_is_a_critical_section(kit):
    """The lock task's result is the CriticalSection, which can be released by hand."""
    sections = []

    def orch(ctx, _):
        section = yield ctx.lock_entities([A])
        sections.append(section)
        section.release()
        section.release()  # releasing twice sends one unlock
        yield ctx.call_entity(A, "get")

    run = kit.run(orch, kit.start(), kit.episode(1, kit.lock_granted(0, [A])))
    assert isinstance(sections[0], CriticalSection)
    expected = [kit.unlock_sent(1, [A], section=0, t=1), kit.entity_called(2, A, "get", t=1)]
    assert expected == run.new


VIOLATIONS = {
    "nested lock": (lambda ctx: ctx.lock_entities([C]), "nested lock"),
    "call outside the lock set": (lambda ctx: ctx.call_entity(C, "get"), "does not lock it"),
    "signal a locked entity": (lambda ctx: ctx.signal_entity(B, "add", 1), "locked by this"),
    "sub-orchestrator": (lambda ctx: ctx.call_sub_orchestrator("child"), "sub-orchestrator"),
}


@pytest.mark.parametrize("rule", list(VIOLATIONS))
def test_locking_rules_raise_at_the_call_site(kit, rule):
    """Breaking a locking rule raises a catchable LockingRuleError and records nothing."""
    violate, fragment = VIOLATIONS[rule]

    def orch(ctx, _):
        with (yield ctx.lock_entities([A, B])):
            try:
                violate(ctx)
            except LockingRuleError as exc:
                message = str(exc)
            yield ctx.call_entity(A, "get")
        return message

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.lock_granted(0, [A, B])),
        kit.episode(2, kit.entity_done(1)),
    )
    expected = [kit.entity_called(1, A, "get", t=1, lock_owner=kit.section_id(0))]
    assert expected == run.steps[1]
    assert fragment in run.output()


def test_second_concurrent_call_to_a_locked_entity_is_refused(kit):
    """While a call to a locked entity is pending another call to it raises; once it ended
    (even by failing) the entity can be called again."""

    def orch(ctx, _):
        with (yield ctx.lock_entities([A])):
            first = ctx.call_entity(A, "get")
            try:
                ctx.call_entity(A, "get")
            except LockingRuleError as exc:
                refused = "already pending" in str(exc)
            try:
                yield first
            except EntityOperationFailedError:
                pass
            yield ctx.call_entity(A, "get")
        return refused

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.lock_granted(0, [A])),
        kit.episode(2, kit.entity_fail(1, "no")),
        kit.episode(3, kit.entity_done(2)),
    )
    expected = [kit.entity_called(2, A, "get", t=2, lock_owner=kit.section_id(0))]
    assert expected == run.steps[2]
    assert run.output() is True


def test_signal_to_an_unlocked_entity_is_allowed_inside_a_section(kit):
    """Only entities of the lock set are off limits to signals."""

    def orch(ctx, _):
        with (yield ctx.lock_entities([A])):
            ctx.signal_entity(C, "add", 1)

    run = kit.run(orch, kit.start(), kit.episode(1, kit.lock_granted(0, [A])))
    expected = [kit.entity_signaled(1, C, "add", 1, t=1), kit.unlock_sent(2, [A], section=0, t=1)]
    assert expected == run.new[:2]


PENDING = {
    "call a locked entity": lambda ctx: ctx.call_entity(A, "get"),
    "call another entity": lambda ctx: ctx.call_entity(C, "get"),
    "lock again": lambda ctx: ctx.lock_entities([C]),
    "sub-orchestrator": lambda ctx: ctx.call_sub_orchestrator("child"),
}


@pytest.mark.parametrize("action", list(PENDING))
def test_locking_rules_apply_while_the_lock_is_pending(kit, action):
    """Before the grant arrives, entity calls, locks and sub-orchestrations are refused."""

    def orch(ctx, _):
        task = ctx.lock_entities([A])
        try:
            PENDING[action](ctx)
        except LockingRuleError:
            pass
        else:
            return "allowed"
        with (yield task):
            pass
        return "refused"

    run = kit.run(orch, kit.start(), kit.episode(1, kit.lock_granted(0, [A])))
    expected = [kit.unlock_sent(1, [A], section=0, t=1), kit.completed("refused", t=1)]
    assert expected == run.new
