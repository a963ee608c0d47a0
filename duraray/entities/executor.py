"""The entity batch executor: run an entity's operations one at a time, in order.

Pure: state and inputs are encoded bytes in, encoded bytes and recorded actions out.
Each operation checkpoints: a successful one commits its state change and its actions
(signals, orchestration starts); a failing one rolls back only its own changes and
reports its failure, and the batch goes on with the next operation.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from duraray._errors import FailureDetails
from duraray.entities.entity import (
    RESERVED,
    DurableEntity,
    EntityContext,
    SignalAction,
    StartAction,
)
from duraray.entities.ids import EntityId


class UnknownOperationError(Exception):
    """The entity has no operation of that name."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation to run: its name, encoded input and an opaque reply handle."""

    name: str
    input: bytes | None = None
    reply_to: Any = None


@dataclass(slots=True)
class Outcome:
    """What one operation did: its encoded result or its failure, and its actions."""

    operation: Operation
    result: bytes | None = None
    failure: FailureDetails | None = None
    signals: list[SignalAction] = field(default_factory=list)
    starts: list[StartAction] = field(default_factory=list)
    #: seconds it ran (for its span when traced; never steers anything)
    duration: float = field(default=0.0, compare=False)


@dataclass(slots=True)
class BatchResult:
    """The state after the batch and each operation's outcome, in order."""

    state: bytes | None
    outcomes: list[Outcome]
    state_changed: bool = False


def execute_batch(
    impl: Any,
    entity_id: EntityId,
    state: bytes | None,
    operations: list[Operation],
    *,
    converter: Any,
    name_of: Callable[[str, Any], str],
    new_instance_id: Callable[[], str],
    now: datetime | None = None,
) -> BatchResult:
    """Run ``operations`` against ``impl`` (a DurableEntity subclass or a function)."""
    outcomes: list[Outcome] = []
    changed = False
    for op in operations:
        started = time.perf_counter()
        ctx = EntityContext(
            entity_id,
            op.name,
            op.input,
            state,
            converter=converter,
            name_of=name_of,
            new_instance_id=new_instance_id,
            now=now,
        )
        try:
            if impl is None:
                raise UnknownOperationError(
                    f"no entity named {entity_id.name!r} is registered with this hub"
                )
            value = _invoke(impl, ctx, op)
            result = converter.encode(value)
            op_changed, new_state = ctx._final_state()
        except BaseException as exc:  # SystemExit & co. from user code fail the operation
            # Roll back this operation only: its state writes and its actions are dropped.
            failure = FailureDetails.from_exception(exc)
            outcomes.append(Outcome(op, failure=failure, duration=time.perf_counter() - started))
            continue
        if op_changed:
            state = new_state
            changed = True
        outcomes.append(
            Outcome(
                op,
                result=result,
                signals=ctx.signals,
                starts=ctx.starts,
                duration=time.perf_counter() - started,
            )
        )
    return BatchResult(state, outcomes, changed)


def _invoke(impl: Any, ctx: EntityContext, op: Operation) -> Any:
    if isinstance(impl, type) and issubclass(impl, DurableEntity):
        instance = impl()
        instance._bind(ctx)
        plan = _class_plan(impl, op.name, instance)
        if plan is None:
            if op.name.lower() == "delete":
                ctx.delete_state()
                return None
            raise UnknownOperationError(
                f"entity {ctx.entity_id.name!r} has no operation {op.name!r}"
            )
        method, takes, hint = plan
        bound = getattr(instance, method)
        if takes:
            return bound(ctx.get_input(hint))
        return bound()
    if callable(impl):
        takes, hint = _function_plan(impl)
        if takes:
            return impl(ctx, ctx.get_input(hint))
        return impl(ctx)
    raise TypeError(f"entity implementation {impl!r} is neither a DurableEntity nor a function")


# Looking an operation up (dir(), inspect.signature, get_type_hints) costs far more than
# most operations, so each (implementation, operation) is looked up once. Keys use id():
# an implementation need not be hashable. Each entry keeps the implementation (so the id
# stays its own) and, for classes, the attribute it found, so a class changed at run time
# is looked up again.
_PLANS: dict[tuple[int, str | None], tuple[Any, Any, tuple[str, bool, Any]]] = {}
_MAX_PLANS = 10_000


def _class_plan(impl: type, name: str, instance: Any) -> tuple[str, bool, Any] | None:
    entry = _PLANS.get((id(impl), name))
    if entry is not None and entry[0] is impl:
        method = entry[2][0]
        if inspect.getattr_static(impl, method, None) is entry[1]:
            return entry[2]
    found = _find_operation(impl, name)
    if found is None:
        return None  # not remembered: callers choose names, and a class may gain one
    bound = getattr(instance, found)
    takes = _takes_input(bound)
    plan = (found, takes, _input_hint(bound) if takes else None)
    _remember((id(impl), name), (impl, inspect.getattr_static(impl, found, None), plan))
    return plan


def _function_plan(impl: Any) -> tuple[bool, Any]:
    entry = _PLANS.get((id(impl), None))
    if entry is not None and entry[0] is impl:
        return entry[2][1], entry[2][2]
    takes = _takes_input(impl, skip=1)
    hint = _input_hint(impl, skip=1) if takes else None
    _remember((id(impl), None), (impl, None, ("", takes, hint)))
    return takes, hint


def _remember(key: tuple[int, str | None], entry: tuple[Any, Any, tuple[str, bool, Any]]) -> None:
    if len(_PLANS) >= _MAX_PLANS:  # bounded, whatever the number of classes and names
        _PLANS.clear()
    _PLANS[key] = entry


def _find_operation(cls: type, name: str) -> str | None:
    candidates = [
        attr
        for attr in dir(cls)
        if not attr.startswith("_") and attr not in RESERVED and callable(getattr(cls, attr))
    ]
    if name in candidates:
        return name
    lowered = name.lower()
    for attr in candidates:
        if attr.lower() == lowered:
            return attr
    return None


def _positional(fn: Any) -> list[inspect.Parameter]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    return [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]


def _takes_input(fn: Any, skip: int = 0) -> bool:
    return len(_positional(fn)) > skip


def _input_hint(fn: Any, skip: int = 0) -> Any:
    params = _positional(fn)
    if len(params) <= skip:
        return None
    try:
        from typing import get_type_hints

        return get_type_hints(fn).get(params[skip].name)
    except Exception:
        return None
