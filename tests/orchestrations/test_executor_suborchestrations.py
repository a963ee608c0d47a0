"""Replay executor: sub-orchestrations (child ids, outputs, failures and retries)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from duraray._errors import TaskFailedError
from duraray.orchestrations import history as h
from duraray.orchestrations.task import RetryPolicy, when_all


@dataclass
class Receipt:
    total: int


def make_receipt(ctx: Any, order: int) -> Receipt:
    return Receipt(order)


def parent(ctx, value):
    return (yield ctx.call_sub_orchestrator("child", input=value))


def test_default_child_id_is_parent_id_and_task_id_in_hex(kit):
    """Without an explicit id the child's id is ``<parent>:<task id as 4 hex digits>``."""

    def orch(ctx, _):
        for i in range(17):
            ctx.send_event("elsewhere", f"e{i}")
        yield ctx.call_sub_orchestrator("child", input=1)

    run = kit.run(orch, kit.start())
    expected = kit.sub_created(17, "child", f"{kit.INSTANCE_ID}:0011", 1)
    assert expected == run.new[-1]


def test_default_child_id_is_stable_across_replays(kit):
    """Replaying the parent's history produces the same child id (no new creation)."""

    def orch(ctx, _):
        first = yield ctx.call_sub_orchestrator("child", input=1)
        second = yield ctx.call_sub_orchestrator("child", input=2)
        return [first, second]

    run = kit.run(orch, kit.start(), kit.episode(1, kit.sub_done(0, "one")))
    expected_ids = [f"{kit.INSTANCE_ID}:0000", f"{kit.INSTANCE_ID}:0001"]
    assert expected_ids == [e.instance_id for e in run.of_type(h.SubOrchestrationInstanceCreated)]
    _, new = kit.replay(orch, run.history, kit.episode(2, kit.sub_done(1, "two")))
    expected = [kit.completed(["one", "two"], t=2)]
    assert expected == new


def test_explicit_child_id_and_version_are_used(kit):
    """An explicit instance id and version are recorded on the creation event."""

    def orch(ctx, _):
        yield ctx.call_sub_orchestrator("child", instance_id="child-7", version="3")

    run = kit.run(orch, kit.start())
    expected = [kit.sub_created(0, "child", "child-7", version="3")]
    assert expected == run.new


def test_child_output_is_returned_to_the_parent(kit):
    """The sub-orchestration's output is the value of its task."""
    run = kit.run(parent, kit.start(5), kit.episode(2, kit.sub_done(0, {"sum": 5})))
    expected = {"sum": 5}
    assert expected == run.output()


def test_child_output_is_restored_to_the_annotated_type(kit):
    """Called by function, the child's return annotation shapes its output."""

    def orch(ctx, _):
        receipt = yield ctx.call_sub_orchestrator(make_receipt, input=3)
        return [type(receipt).__name__, receipt.total]

    run = kit.run(orch, kit.start(), kit.episode(1, kit.sub_done(0, Receipt(3))))
    expected = ["Receipt", 3]
    assert expected == run.output()
    expected_name = "make_receipt"
    assert expected_name == run.of_type(h.SubOrchestrationInstanceCreated)[0].name


def test_child_failure_is_a_catchable_task_failure(kit):
    """A failed child surfaces as TaskFailedError "Sub-orchestration task #n failed: ..."."""

    def orch(ctx, _):
        try:
            yield ctx.call_sub_orchestrator("child")
        except TaskFailedError as exc:
            return [str(exc), exc.details.message, exc.details.inner.message]

    inner = kit.failure("card declined")
    child_failure = kit.failure(
        "Activity task #0 failed: card declined", "duraray.TaskFailedError", inner=inner
    )
    failed = h.SubOrchestrationInstanceFailed(
        timestamp=kit.at(1), task_scheduled_id=0, failure=child_failure
    )
    run = kit.run(orch, kit.start(), kit.episode(1, failed))
    expected = [
        "Sub-orchestration task #0 failed: Activity task #0 failed: card declined",
        "Activity task #0 failed: card declined",
        "card declined",
    ]
    assert expected == run.output()


def test_uncaught_child_failure_fails_the_parent(kit):
    """An uncaught child failure fails the parent, keeping the child's failure as inner."""
    run = kit.run(parent, kit.start(), kit.episode(1, kit.sub_fail(0, "child broke")))
    expected = ("duraray.TaskFailedError", "Sub-orchestration task #0 failed: child broke")
    assert expected == (run.failure.error_type, run.failure.message)
    expected_inner = "child broke"
    assert expected_inner == run.failure.inner.message


def test_retry_reschedules_the_child_with_a_new_id(kit):
    """Each retry of a failed child creates a new child instance with a new default id."""
    policy = RetryPolicy(timedelta(seconds=1), 3)

    def orch(ctx, _):
        return (yield ctx.call_sub_orchestrator("child", input="job", retry_policy=policy))

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.sub_fail(0)),
        kit.episode(2, kit.fired(1, 2)),
        kit.episode(3, kit.sub_fail(2)),
        kit.episode(4, kit.fired(3, 4)),
        kit.episode(5, kit.sub_done(4, "third time")),
    )
    expected_created = [
        kit.sub_created(0, "child", f"{kit.INSTANCE_ID}:0000", "job"),
        kit.sub_created(2, "child", f"{kit.INSTANCE_ID}:0002", "job", t=2),
        kit.sub_created(4, "child", f"{kit.INSTANCE_ID}:0004", "job", t=4),
    ]
    assert expected_created == run.of_type(h.SubOrchestrationInstanceCreated)
    expected = "third time"
    assert expected == run.output()


def test_retry_with_an_explicit_id_reuses_it(kit):
    """A retried child with an explicit id is started again under that same id."""
    policy = RetryPolicy(timedelta(seconds=1), 2)

    def orch(ctx, _):
        yield ctx.call_sub_orchestrator("child", instance_id="fixed", retry_policy=policy)

    run = kit.run(
        orch, kit.start(), kit.episode(1, kit.sub_fail(0)), kit.episode(2, kit.fired(1, 2))
    )
    expected = ["fixed", "fixed"]
    assert expected == [e.instance_id for e in run.of_type(h.SubOrchestrationInstanceCreated)]


def test_fan_out_of_children_returns_outputs_in_order(kit):
    """when_all over children returns their outputs in call order."""

    def orch(ctx, n):
        return (yield when_all([ctx.call_sub_orchestrator("child", input=i) for i in range(n)]))

    run = kit.run(
        orch,
        kit.start(3),
        kit.episode(1, kit.sub_done(2, "c"), kit.sub_done(0, "a")),
        kit.episode(2, kit.sub_done(1, "b")),
    )
    expected = ["a", "b", "c"]
    assert expected == run.output()


@pytest.mark.parametrize("child_id", ["", "bad\nid", "x" * 257])
def test_invalid_explicit_child_id_raises_at_the_call_site(kit, child_id):
    """An invalid explicit child id raises ValueError before anything is recorded."""

    def orch(ctx, _):
        try:
            ctx.call_sub_orchestrator("child", instance_id=child_id)
        except ValueError:
            return "rejected"

    run = kit.run(orch, kit.start())
    expected = [kit.completed("rejected")]
    assert expected == run.new
