"""The entity batch executor: operations run one at a time, each one checkpointed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from duraray.entities.entity import DurableEntity, EntityContext, SignalAction, StartAction
from duraray.entities.executor import BatchResult, Operation, execute_batch
from duraray.entities.ids import EntityId
from duraray.runtime.engine import codec

COUNTER = EntityId("counter", "k")
NOW = datetime(2024, 1, 1, tzinfo=UTC)


class Converter:
    """The codec as the entity executor's payload converter (as the partition wires it)."""

    encode = staticmethod(codec.encode)
    decode = staticmethod(codec.decode)
    convert = staticmethod(codec.convert)


@dataclass
class Point:
    x: int
    y: int


class Counter(DurableEntity):
    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)

    def get(self) -> int:
        return self.get_state(int, 0)

    def Get(self) -> str:  # differs from get() only in case, on purpose
        return "exact-case"

    def add_and_notify(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)
        self.signal_entity("@log@main", "note", amount)
        self.schedule_new_orchestration("audit", input=amount, instance_id=f"audit-{amount}")

    def add_then_fail(self, amount: int) -> None:
        self.add_and_notify(amount)
        raise RuntimeError(f"cannot add {amount}")

    def reset(self) -> None:
        self.set_state(None)

    def whoami(self) -> list[str]:
        return [str(self.entity_id), self.operation]

    def echo(self, value: Any) -> Any:
        return value

    def move(self, point: Point) -> str:
        self.set_state(point)
        return type(point).__name__

    def where(self) -> Any:
        point = self.get_state(Point, "nowhere")
        return point if isinstance(point, str) else [type(point).__name__, point.x, point.y]

    def unencodable(self) -> object:
        self.set_state(1)
        return object()

    def later(self, seconds: int) -> None:
        self.signal_entity(COUNTER, "add", 1, signal_time=timedelta(seconds=seconds))

    def start(self, instance_id: str | None) -> str:
        return self.schedule_new_orchestration(audit, input=1, instance_id=instance_id)

    def _secret(self) -> str:
        return "private"


class Bin(DurableEntity):
    def append(self, item: int) -> None:
        items = self.get_state(list, [])
        items.append(item)
        self.set_state(items)

    def append_in_place_then_fail(self, item: int) -> None:
        self.get_state().append(item)
        raise ValueError("no")

    def delete(self) -> str:
        return "kept"


def audit(ctx: Any, amount: int) -> None:
    """An orchestration function (only its name matters here)."""


def account(ctx: EntityContext, amount: int) -> Any:
    if ctx.operation == "deposit":
        ctx.set_state(ctx.get_state(int, 0) + amount)
        ctx.signal_entity(("log", "main"), "deposited", amount)
        return None
    if ctx.operation == "withdraw":
        balance = ctx.get_state(int, 0) - amount
        ctx.set_state(balance)
        ctx.schedule_new_orchestration("alert", input=amount)
        if balance < 0:
            raise ValueError(f"overdrawn by {-balance}")
        return None
    if ctx.operation == "close":
        ctx.delete_state()
        return None
    return [ctx.get_state(int, 0), ctx.has_state()]


def pinger(ctx: EntityContext) -> Any:
    point = ctx.get_input(Point)
    return [ctx.operation, type(point).__name__, point.x]


def op(name: str, value: Any = None, *, reply_to: Any = None) -> Operation:
    return Operation(name, codec.encode(value), reply_to)


def run(
    impl: Any,
    ops: list[Operation],
    state: Any = None,
    *,
    entity_id: EntityId = COUNTER,
    now: datetime | None = NOW,
) -> BatchResult:
    ids = iter(f"generated-{i}" for i in range(100))
    return execute_batch(
        impl,
        entity_id,
        None if state is None else codec.encode(state),
        ops,
        converter=Converter(),
        name_of=lambda kind, target: target if isinstance(target, str) else target.__name__,
        new_instance_id=lambda: next(ids),
        now=now,
    )


def results(batch: BatchResult) -> list[Any]:
    """Each outcome as its decoded result, or ``"!" + message`` for a failure."""
    return [
        "!" + o.failure.message if o.failure else codec.decode(o.result) for o in batch.outcomes
    ]


def test_class_operations_run_in_order_and_each_commits():
    """Each operation sees the state the previous one committed."""
    batch = run(Counter, [op("add", 1), op("get"), op("add", 2), op("get")])
    expected = [None, 1, None, 3]
    assert expected == results(batch)
    expected_state = 3
    assert expected_state == codec.decode(batch.state)
    assert batch.state_changed


def test_results_are_encoded_and_operations_kept():
    """An outcome carries the encoded result and the operation (with its reply handle)."""
    batch = run(Counter, [op("get", reply_to="caller-1")], state=7)
    outcome = batch.outcomes[0]
    expected = codec.encode(7)
    assert expected == outcome.result
    expected_reply = "caller-1"
    assert expected_reply == outcome.operation.reply_to
    assert outcome.failure is None
    assert not batch.state_changed


def test_failing_operation_rolls_back_only_its_own_effects():
    """A failure undoes its state change, signals and starts; its neighbours keep theirs."""
    batch = run(
        Counter, [op("add_and_notify", 1), op("add_then_fail", 10), op("add_and_notify", 2)]
    )
    expected = 3
    assert expected == codec.decode(batch.state)
    first, failed, last = batch.outcomes
    expected_first = (
        [SignalAction("@log@main", "note", codec.encode(1))],
        [StartAction("audit", "audit-1", codec.encode(1))],
    )
    assert expected_first == (first.signals, first.starts)
    expected_failed = ([], [], None, "RuntimeError", "cannot add 10")
    actual_failed = (
        failed.signals,
        failed.starts,
        failed.result,
        failed.failure.error_type,
        failed.failure.message,
    )
    assert expected_failed == actual_failed
    expected_last = ["@log@main"], ["audit-2"]
    assert expected_last == (
        [s.entity_id for s in last.signals],
        [s.instance_id for s in last.starts],
    )


def test_in_place_mutation_of_a_failing_operation_does_not_leak():
    """State mutated in place by a failing operation is not seen by the next one."""
    batch = run(Bin, [op("append", 1), op("append_in_place_then_fail", 2), op("append", 3)])
    expected = [1, 3]
    assert expected == codec.decode(batch.state)


def test_unencodable_result_fails_the_operation_and_rolls_it_back():
    """A result msgpack cannot carry fails that operation, and its state write is undone."""
    batch = run(Counter, [op("unencodable")], state=5)
    expected = (5, "SerializationError")
    actual = (codec.decode(batch.state), batch.outcomes[0].failure.error_type.rsplit(".")[-1])
    assert expected == actual


def test_set_state_none_deletes_the_entity():
    """``set_state(None)`` leaves the entity without state."""
    batch = run(Counter, [op("reset")], state=5)
    assert batch.state is None
    assert batch.state_changed


@pytest.mark.parametrize("name", ["delete", "Delete"])
def test_every_entity_has_a_delete_operation(name):
    """``delete`` deletes the state unless the class defines its own."""
    batch = run(Counter, [op(name)], state=5)
    assert batch.outcomes[0].failure is None
    assert batch.state is None


def test_a_class_can_define_its_own_delete():
    """A ``delete`` method of the class replaces the default one."""
    batch = run(Bin, [op("delete")], state=[1])
    expected = ([1], ["kept"])
    assert expected == (codec.decode(batch.state), results(batch))


def test_unknown_operation_fails_clearly_and_the_batch_goes_on():
    """An unknown operation fails with a message naming the entity and the operation."""
    batch = run(Counter, [op("nope"), op("add", 1)])
    failure = batch.outcomes[0].failure
    assert "'counter'" in failure.message and "'nope'" in failure.message
    assert failure.error_type.endswith("UnknownOperationError")
    expected = 1
    assert expected == codec.decode(batch.state)


def test_operation_names_fall_back_to_case_insensitive_match():
    """``ADD`` runs ``add``; an exact-case match wins over a case-insensitive one."""
    batch = run(Counter, [op("ADD", 2), op("get"), op("Get"), op("GET")])
    expected = [None, 2, "exact-case"]
    actual = results(batch)
    assert expected == actual[:3]
    assert actual[3] in (2, "exact-case")


def test_methods_with_and_without_input():
    """A method without a parameter ignores the input; one with a parameter receives it."""
    batch = run(Counter, [op("get", "ignored"), op("echo", {"a": (1, 2)}), op("echo")], state=4)
    expected = [4, {"a": (1, 2)}, None]
    assert expected == results(batch)


def test_input_type_hint_restores_a_dataclass():
    """The annotation of the input parameter turns a dict back into the dataclass."""
    batch = run(Counter, [op("move", Point(1, 2))])
    expected = ["Point"]
    assert expected == results(batch)
    expected_state = {"x": 1, "y": 2}
    assert expected_state == codec.decode(batch.state)


def test_get_state_converts_to_the_type_or_returns_the_default():
    """``get_state(type, default)`` converts existing state and defaults missing state."""
    expected = [["Point", 3, 4]]
    assert expected == results(run(Counter, [op("where")], state=Point(3, 4)))
    expected = ["nowhere"]
    assert expected == results(run(Counter, [op("where")]))


def test_entity_sees_its_id_and_operation():
    """``self.entity_id`` and ``self.operation`` describe the running operation."""
    batch = run(Counter, [op("whoami")], entity_id=EntityId("Counter", "Key"))
    expected = [["@counter@Key", "whoami"]]
    assert expected == results(batch)


def test_unregistered_entity_fails_every_operation_clearly():
    """With no implementation each operation fails, naming the entity, and state stays."""
    batch = run(None, [op("add", 1), op("get")], state=9)
    messages = [o.failure.message for o in batch.outcomes]
    expected = ["no entity named 'counter' is registered with this hub"] * 2
    assert expected == messages
    expected_state = 9
    assert expected_state == codec.decode(batch.state)
    assert not batch.state_changed


def test_relative_signal_time_is_added_to_now():
    """A timedelta ``signal_time`` is measured from the batch's ``now``."""
    batch = run(Counter, [op("later", 5)])
    expected = [SignalAction("@counter@k", "add", codec.encode(1), NOW + timedelta(seconds=5))]
    assert expected == batch.outcomes[0].signals


def test_relative_signal_time_without_now_fails_the_operation():
    """Without ``now`` a relative ``signal_time`` fails the operation, sending nothing."""
    outcome = run(Counter, [op("later", 5)], now=None).outcomes[0]
    assert "needs the current time" in outcome.failure.message
    expected: list[SignalAction] = []
    assert expected == outcome.signals


def test_schedule_new_orchestration_returns_the_instance_id():
    """The id is the given one, or the one ``new_instance_id`` makes; the name is resolved."""
    batch = run(Counter, [op("start", "fixed-id"), op("start", None)])
    expected = ["fixed-id", "generated-0"]
    assert expected == results(batch)
    expected_starts = [
        [StartAction("audit", "fixed-id", codec.encode(1))],
        [StartAction("audit", "generated-0", codec.encode(1))],
    ]
    assert expected_starts == [o.starts for o in batch.outcomes]


def test_schedule_new_orchestration_validates_the_instance_id():
    """An invalid explicit instance id fails the operation."""
    outcome = run(Counter, [op("start", "bad\x00id")]).outcomes[0]
    assert "control characters" in outcome.failure.message


@pytest.mark.parametrize(
    "name",
    [
        "get_state",
        "set_state",
        "signal_entity",
        "schedule_new_orchestration",
        "entity_id",
        "operation",
        "Set_State",
    ],
)
def test_reserved_names_are_not_operations(name):
    """DurableEntity's own API cannot be invoked as an operation."""
    batch = run(Counter, [op(name, 99)], state=1)
    assert f"no operation {name!r}" in batch.outcomes[0].failure.message
    expected = 1
    assert expected == codec.decode(batch.state)


@pytest.mark.parametrize("name", ["_secret", "_bind", "__init__", "__class__"])
def test_private_methods_are_not_operations(name):
    """Names starting with an underscore are never operations."""
    batch = run(Counter, [op(name)])
    assert f"no operation {name!r}" in batch.outcomes[0].failure.message


def test_function_entity_dispatches_on_the_operation():
    """A function entity receives the context and the decoded input for every operation."""
    batch = run(account, [op("deposit", 10), op("withdraw", 3), op("balance")])
    expected = [None, None, [7, True]]
    assert expected == results(batch)
    expected_effects = (
        [SignalAction("@log@main", "deposited", codec.encode(10))],
        [StartAction("alert", "generated-0", codec.encode(3))],
    )
    assert expected_effects == (batch.outcomes[0].signals, batch.outcomes[1].starts)


def test_function_entity_failure_rolls_back_that_operation_only():
    """A failing function-entity operation undoes its own state write and start."""
    batch = run(account, [op("deposit", 5), op("withdraw", 8), op("withdraw", 1)])
    expected = 4
    assert expected == codec.decode(batch.state)
    failed = batch.outcomes[1]
    expected_failed = ("overdrawn by 3", [])
    assert expected_failed == (failed.failure.message, failed.starts)


def test_function_entity_can_delete_its_state():
    """``ctx.delete_state()`` makes the entity stop existing."""
    batch = run(account, [op("close"), op("balance")], state=3)
    expected = [None, [0, False]]
    assert expected == results(batch)
    assert batch.state is None


def test_function_entity_without_input_parameter_reads_input_from_context():
    """``fn(ctx)`` gets no input argument and reads it with ``ctx.get_input(type)``."""
    batch = run(pinger, [op("ping", Point(1, 1))])
    expected = [["ping", "Point", 1]]
    assert expected == results(batch)


def test_repeated_operations_give_the_same_results_as_the_first():
    """The per-operation lookup is remembered; later batches behave like the first,
    including unknown operations, case-insensitive names and typed inputs."""
    ops = [op("ADD", 2), op("get"), op("nope"), op("move", Point(1, 2)), op("delete")]
    first = results(run(Counter, ops, state=1))
    for _ in range(3):
        assert first == results(run(Counter, ops, state=1))


def test_remembered_lookups_stay_bounded(monkeypatch: pytest.MonkeyPatch):
    """Unknown operation names (callers choose them) are not remembered, and the
    remembered lookups never pass their cap, however many entity classes run."""
    from duraray.entities import executor

    monkeypatch.setattr(executor, "_MAX_PLANS", 5)
    monkeypatch.setattr(executor, "_PLANS", {})
    run(Counter, [op(f"unknown{i}") for i in range(100)])
    assert {} == executor._PLANS
    for i in range(20):
        cls = type(f"Counter{i}", (Counter,), {})
        assert [None, 1] == results(run(cls, [op("add", 1), op("get")]))
        assert len(executor._PLANS) <= 5


def test_an_operation_added_or_replaced_at_run_time_is_seen(monkeypatch: pytest.MonkeyPatch):
    """A class changed after its operations were looked up is looked up again."""

    class Late(DurableEntity):
        def get(self) -> int:
            return int(self.get_state(int, 0))

    assert ["!" + "entity 'counter' has no operation 'bump'"] == [
        r.split(" (")[0] for r in results(run(Late, [op("bump", 1)]))
    ]

    def bump(self: Late, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)

    monkeypatch.setattr(Late, "bump", bump, raising=False)
    assert [None, 2] == results(run(Late, [op("bump", 2), op("get")]))

    def bump_twice(self: Late) -> None:  # a new arity: no input any more
        self.set_state(self.get_state(int, 0) + 2)

    monkeypatch.setattr(Late, "bump", bump_twice)
    assert [None, 2] == results(run(Late, [op("bump", 99), op("get")]))


def test_an_unhashable_callable_entity_works():
    """A function entity need not be hashable (an instance with __call__ and __eq__)."""

    class Adder:
        __hash__ = None  # type: ignore[assignment]

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Adder)

        def __call__(self, ctx: EntityContext, amount: int) -> None:
            ctx.set_state(ctx.get_state(int, 0) + amount)

    batch = run(Adder(), [op("add", 2), op("add", 3)], state=1)
    assert 6 == codec.decode(batch.state)
