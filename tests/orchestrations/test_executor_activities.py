"""Replay executor: activities, orchestrator results and failures of the orchestration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from duraray._errors import SerializationError, TaskFailedError
from duraray.orchestrations import history as h


@dataclass
class Order:
    sku: str
    qty: int


def plus_one(ctx: Any, value: int) -> int:
    return value + 1


def load_order(ctx: Any, order_id: str) -> Order:
    return Order(order_id, 1)


def only_ctx(ctx):
    return "no input"
    yield  # pragma: no cover - makes it a generator function


def test_return_without_yield_completes_with_none(kit):
    """A generator orchestrator that returns before its first yield completes with None."""

    def orch(ctx, _):
        return None
        yield  # pragma: no cover

    run = kit.run(orch, kit.start())
    expected = [kit.completed(None)]
    assert expected == run.new
    expected_status = h.OrchestrationStatus.COMPLETED
    assert expected_status == run.status
    assert run.failure is None


def test_plain_function_orchestrator_completes_with_its_value(kit):
    """A plain (non-generator) orchestrator completes at once with its return value."""

    def orch(ctx, value):
        return value * 2

    run = kit.run(orch, kit.start(21))
    expected = [kit.completed(42)]
    assert expected == run.new


def test_orchestrator_without_input_parameter_is_called_with_context_only(kit):
    """An orchestrator taking only ``ctx`` is called without the input."""
    run = kit.run(only_ctx, kit.start("ignored"))
    expected = "no input"
    assert expected == run.output()


def test_first_episode_schedules_the_first_activity(kit):
    """The first episode returns one TaskScheduled with the encoded input, nothing else."""

    def orch(ctx, value):
        return (yield ctx.call_activity(plus_one, input=value))

    run = kit.run(orch, kit.start(1, t=3))
    expected = [kit.scheduled(0, "plus_one", 1, t=3)]
    assert expected == run.new
    assert run.executor.is_waiting


def test_ten_chained_activities(kit):
    """Ten chained call_activity(plus_one) from input 1 produce [1, ..., 11]."""

    def orch(ctx, value):
        values = [value]
        for _ in range(10):
            value = yield ctx.call_activity(plus_one, input=value)
            values.append(value)
        return values

    episodes = [kit.start(1)]
    for seq in range(10):
        episodes.append(kit.episode(seq + 1, kit.done(seq, seq + 2)))
    run = kit.run(orch, *episodes)
    expected = list(range(1, 12))
    assert expected == run.output()
    expected_inputs = list(range(1, 11))
    assert expected_inputs == [kit.dec(e.input) for e in run.of_type(h.TaskScheduled)]
    expected_ids = list(range(10))
    assert expected_ids == [e.event_id for e in run.of_type(h.TaskScheduled)]


def test_activity_by_name_and_by_function_record_the_same_name(kit):
    """Calling an activity by its function or by its name schedules the same name."""

    def orch(ctx, _):
        yield ctx.call_activity(plus_one, input=1)
        yield ctx.call_activity("plus_one", input=1)

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0, 2)))
    expected = ["plus_one", "plus_one"]
    assert expected == [e.name for e in run.of_type(h.TaskScheduled)]


def test_name_of_resolves_registered_names(kit):
    """The executor's ``name_of`` maps an activity function to its registered name."""

    def orch(ctx, _):
        yield ctx.call_activity(plus_one)

    executor = kit.executor(orch, name_of=lambda kind, target: f"{kind}:{target.__name__}")
    executor.process(kit.start())
    expected = ["activity:plus_one"]
    assert expected == [e.name for e in executor.take_new_events()]


def test_activity_tags_are_recorded(kit):
    """Tags passed to call_activity are copied onto the TaskScheduled event."""

    def orch(ctx, _):
        yield ctx.call_activity("charge", input=5, tags={"team": "billing"})

    run = kit.run(orch, kit.start())
    expected = [kit.scheduled(0, "charge", 5, tags={"team": "billing"})]
    assert expected == run.new


def test_invalid_tags_raise_at_the_call_site(kit):
    """Tags that are not str to str raise TypeError inside the orchestrator."""

    def orch(ctx, _):
        try:
            ctx.call_activity("charge", tags={"n": 1})
        except TypeError as exc:
            return str(exc)

    run = kit.run(orch, kit.start())
    expected = "tags must be a dict of str to str"
    assert expected == run.output()


def test_activity_result_is_restored_to_the_annotated_dataclass(kit):
    """An activity's return annotation turns its decoded result back into a dataclass."""

    def orch(ctx, _):
        order = yield ctx.call_activity(load_order, input="o-1")
        return [type(order).__name__, order.sku, order.qty]

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0, Order("o-1", 3))))
    expected = ["Order", "o-1", 3]
    assert expected == run.output()


def test_activity_called_by_name_returns_the_plain_value(kit):
    """Without a function there is no annotation: the result stays a plain dict."""

    def orch(ctx, _):
        return (yield ctx.call_activity("load_order", input="o-1"))

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0, Order("o-1", 3))))
    expected = {"sku": "o-1", "qty": 3}
    assert expected == run.output()


def order_total(ctx: Any, order: Order):
    return [type(order).__name__, order.qty * 10]
    yield  # pragma: no cover


def test_orchestrator_input_is_restored_to_the_annotated_dataclass(kit):
    """The orchestrator's input annotation turns its decoded input into a dataclass."""
    run = kit.run(order_total, kit.start(Order("o-2", 4)))
    expected = ["Order", 40]
    assert expected == run.output()


def test_orchestrator_exception_fails_with_failure_details(kit):
    """An exception escaping the orchestrator completes it FAILED with type, message and trace."""

    def exploding_orch(ctx, _):
        yield ctx.call_activity("a")
        raise RuntimeError("bad state")

    run = kit.run(exploding_orch, kit.start(), kit.episode(1, kit.done(0)))
    expected_status = h.OrchestrationStatus.FAILED
    assert expected_status == run.status
    expected = ("RuntimeError", "bad state")
    assert expected == (run.failure.error_type, run.failure.message)
    assert "exploding_orch" in run.failure.stack_trace
    assert "RuntimeError: bad state" in run.failure.stack_trace
    expected_last = [kit.at(1)]
    assert expected_last == [run.new[-1].timestamp]


def test_caught_activity_failure_runs_compensation_and_completes(kit):
    """A failed activity raises TaskFailedError; compensating activities run and it COMPLETES."""

    def orch(ctx, _):
        try:
            yield ctx.call_activity("charge")
        except TaskFailedError as exc:
            yield ctx.call_activity("refund", input=exc.details.message)
            return "compensated"
        return "charged"

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.fail(0, "boom")),
        kit.episode(2, kit.done(1)),
    )
    expected_step = [kit.scheduled(1, "refund", "boom", t=1)]
    assert expected_step == run.steps[1]
    expected = "compensated"
    assert expected == run.output()


def test_uncaught_activity_failure_fails_the_orchestration(kit):
    """An uncaught activity failure fails it as duraray.TaskFailedError wrapping the cause."""

    def orch(ctx, _):
        yield ctx.call_activity("charge")

    activity_failure = kit.failure("card declined", "ValueError")
    failed = h.TaskFailed(timestamp=kit.at(1), task_scheduled_id=0, failure=activity_failure)
    run = kit.run(orch, kit.start(), kit.episode(1, failed))
    expected = "duraray.TaskFailedError"
    assert expected == run.failure.error_type
    expected_message = "Activity task #0 failed: card declined"
    assert expected_message == run.failure.message
    assert activity_failure == run.failure.inner
    assert run.failure.is_caused_by(ValueError)
    assert "TaskFailedError" in run.failure.stack_trace


def test_yielding_a_non_task_fails_clearly(kit):
    """Yielding something that is not a task fails the orchestration with a TypeError."""

    def orch(ctx, _):
        yield 42

    run = kit.run(orch, kit.start())
    expected = "TypeError"
    assert expected == run.failure.error_type
    assert "yielded 'int'" in run.failure.message
    assert "ctx.call_activity" in run.failure.message


def test_unregistered_orchestrator_fails(kit):
    """An executor without a function fails the instance with OrchestratorNotRegisteredError."""
    run = kit.run(None, kit.start(name="missing_orch"))
    expected = "duraray.OrchestratorNotRegisteredError"
    assert expected == run.failure.error_type
    assert "'missing_orch'" in run.failure.message
    assert run.failure.non_retriable


def test_duplicate_and_unknown_completions_are_ignored(kit):
    """A second completion of a task, or one for an unknown id, changes nothing."""

    def orch(ctx, _):
        first = yield ctx.call_activity("a")
        second = yield ctx.call_activity("b")
        return [first, second]

    run = kit.run(
        orch,
        kit.start(),
        kit.episode(1, kit.done(0, "x"), kit.done(0, "again"), kit.done(99, "?")),
        kit.episode(2, kit.done(1, "y")),
    )
    expected = ["x", "y"]
    assert expected == run.output()


def test_unencodable_activity_input_raises_serialization_error_at_the_call_site(kit):
    """An activity input msgpack cannot carry raises SerializationError inside the orchestrator."""

    def orch(ctx, _):
        try:
            ctx.call_activity("a", input=object())
        except SerializationError:
            pass
        return (yield ctx.call_activity("b", input=1))

    run = kit.run(orch, kit.start(), kit.episode(1, kit.done(0, "ok")))
    expected = [kit.scheduled(0, "b", 1)]
    assert expected == run.steps[0]
    expected_output = "ok"
    assert expected_output == run.output()


def test_unencodable_output_fails_the_orchestration(kit):
    """An output msgpack cannot carry fails the orchestration with SerializationError."""

    def orch(ctx, _):
        return {1, 2}

    run = kit.run(orch, kit.start())
    expected = "duraray.SerializationError"
    assert expected == run.failure.error_type
    assert "set" in run.failure.message


def test_context_exposes_the_execution_started_fields(kit):
    """instance_id, name, version, tags, parent and execution id come from ExecutionStarted."""

    def orch(ctx, _):
        return [
            ctx.instance_id,
            ctx.name,
            ctx.version,
            ctx.tags,
            ctx.parent_instance_id,
            ctx.execution_id,
        ]

    start = kit.start(
        name="ship", version="2", tags={"tier": "gold"}, parent_instance_id="parent-1"
    )
    run = kit.run(orch, start)
    expected = [kit.INSTANCE_ID, "ship", "2", {"tier": "gold"}, "parent-1", "exec-1"]
    assert expected == run.output()


def test_failure_details_survive_as_task_failed_error_details(kit):
    """The caught TaskFailedError carries the activity's FailureDetails unchanged."""

    def orch(ctx, _):
        try:
            yield ctx.call_activity("a")
        except TaskFailedError as exc:
            return [exc.details.message, exc.details.error_type, str(exc)]

    run = kit.run(orch, kit.start(), kit.episode(1, kit.fail(0, "nope", error_type="KeyError")))
    expected = ["nope", "KeyError", "Activity task #0 failed: nope"]
    assert expected == run.output()
