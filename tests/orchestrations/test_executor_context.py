"""Replay executor: replay-visible context state (is_replaying, new_uuid, logger, status)."""

from __future__ import annotations

import uuid
from typing import Any

from duraray.orchestrations.context import replaying_var


class ListLogger:
    """A stand-in for a stdlib logger that appends each message to a list."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self.name = "orders"

    def info(self, message: str, *args: Any) -> None:
        self.records.append(("info", message % args if args else message))

    def warning(self, message: str, *args: Any) -> None:
        self.records.append(("warning", message % args if args else message))


def three_steps(ctx, _):
    yield ctx.call_activity("a")
    yield ctx.call_activity("b")
    yield ctx.call_activity("c")
    return "done"


def test_is_replaying_is_true_only_for_the_replayed_part(kit):
    """is_replaying is True while re-executing recorded episodes and False for new code."""
    seen: list[tuple[str, bool, bool]] = []

    def orch(ctx, _):
        seen.append(("start", ctx.is_replaying, replaying_var.get()))
        yield ctx.call_activity("a")
        seen.append(("after a", ctx.is_replaying, replaying_var.get()))
        yield ctx.call_activity("b")
        seen.append(("after b", ctx.is_replaying, replaying_var.get()))

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0)), check_replay=False)
    seen.clear()
    kit.replay(orch, run.history, kit.episode(2, kit.done(1)))
    expected = [("start", True, True), ("after a", True, True), ("after b", False, False)]
    assert expected == seen


def test_is_replaying_is_false_throughout_a_live_run(kit):
    """A live executor fed episode by episode never reports replaying."""
    seen: list[bool] = []

    def orch(ctx, _):
        seen.append(ctx.is_replaying)
        yield ctx.call_activity("a")
        seen.append(ctx.is_replaying)

    kit.run(orch, kit.start(), kit.episode(1, kit.done(0)), check_replay=False)
    expected = [False, False]
    assert expected == seen


def test_replay_safe_logger_logs_each_message_once(kit):
    """Across a live run, an eviction and a replay-then-resume, each message is logged once."""
    logger = ListLogger()

    def orch(ctx, _):
        log = ctx.create_replay_safe_logger(logger)
        log.info("start %s", ctx.instance_id)
        yield ctx.call_activity("a")
        log.info("after a")
        yield ctx.call_activity("b")
        log.warning("after b")
        return log.name

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0)), check_replay=False)
    run.executor.close()  # evicted: the next episode replays the history first
    fresh, _ = kit.replay(orch, run.history, kit.episode(2, kit.done(1)))
    expected = [("info", f"start {kit.INSTANCE_ID}"), ("info", "after a"), ("warning", "after b")]
    assert expected == logger.records
    assert fresh.is_complete


def test_replay_safe_logger_reports_whether_it_is_enabled(kit):
    """ReplaySafeLogger.is_enabled is False while replaying and passes other attributes through."""
    seen: list[tuple[bool, str]] = []

    def orch(ctx, _):
        log = ctx.create_replay_safe_logger(ListLogger())
        seen.append((log.is_enabled, log.name))
        yield ctx.call_activity("a")
        seen.append((log.is_enabled, log.name))

    run = kit.run(orch, kit.start(), check_replay=False)
    seen.clear()
    kit.replay(orch, run.history, kit.episode(1, kit.done(0)))
    expected = [(False, "orders"), (True, "orders")]
    assert expected == seen


def test_new_uuid_is_deterministic_and_distinct(kit):
    """Two UUIDs before and one after an activity are distinct and identical on every replay."""

    def orch(ctx, _):
        first, second = ctx.new_uuid(), ctx.new_uuid()
        yield ctx.call_activity("a")
        return [first, second, ctx.new_uuid()]

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0)))
    live = run.output()
    expected_count = 3
    assert expected_count == len(set(live))
    assert all(str(uuid.UUID(value)) == value for value in live)  # canonical strings
    _, replayed = kit.replay(orch, run.history[:-1])
    assert live == kit.dec(replayed[-1].result)


def test_new_uuid_differs_between_instances_and_executions(kit):
    """new_uuid depends on the instance id and the execution id."""

    def orch(ctx, _):
        return ctx.new_uuid()

    base = kit.run(orch, kit.start()).output()
    other_instance = kit.run(orch, kit.start(instance_id="order-2"), instance_id="order-2")
    other_execution = kit.run(orch, kit.start(execution_id="exec-2"))
    assert base != other_instance.output()
    assert base != other_execution.output()


def test_custom_status_is_encoded_and_none_clears_it(kit):
    """set_custom_status stores the encoded value; set_custom_status(None) clears it."""

    def orch(ctx, _):
        ctx.set_custom_status({"stage": 1})
        yield ctx.call_activity("a")
        ctx.set_custom_status({"stage": 2})
        yield ctx.call_activity("b")
        ctx.set_custom_status(None)
        yield ctx.call_activity("c")

    run = kit.run(orch, kit.start())
    expected = kit.enc({"stage": 1})
    assert expected == run.executor.custom_status
    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0)))
    expected = kit.enc({"stage": 2})
    assert expected == run.executor.custom_status
    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0)), kit.episode(2, kit.done(1)))
    assert run.executor.custom_status is None


def test_custom_status_is_restored_by_replay(kit):
    """A fresh executor that replays the history has the custom status the live one had."""

    def orch(ctx, _):
        ctx.set_custom_status("waiting for a")
        yield ctx.call_activity("a")
        ctx.set_custom_status("waiting for b")
        yield ctx.call_activity("b")

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0)))
    fresh, new = kit.replay(orch, run.history)
    expected = kit.enc("waiting for b")
    assert expected == fresh.custom_status
    expected_new: list[Any] = []
    assert expected_new == new


def test_unencodable_custom_status_raises_at_the_call_site(kit):
    """set_custom_status with a value msgpack cannot carry raises SerializationError."""
    from duraray._errors import SerializationError

    def orch(ctx, _):
        try:
            ctx.set_custom_status(object())
        except SerializationError:
            return "refused"

    run = kit.run(orch, kit.start())
    expected = "refused"
    assert expected == run.output()
    assert run.executor.custom_status is None


def test_replaying_the_whole_history_reproduces_the_state(kit):
    """A fresh executor replaying a waiting instance's history adds no new events and waits."""
    run = kit.run(
        three_steps, kit.start(), kit.episode(1, kit.done(0)), kit.episode(2, kit.done(1))
    )
    fresh, new = kit.replay(three_steps, run.history)
    expected: list[Any] = []
    assert expected == new
    assert fresh.is_waiting
    _, last = kit.replay(three_steps, run.history, kit.episode(3, kit.done(2)))
    expected_last = [kit.completed("done", t=3)]
    assert expected_last == last
