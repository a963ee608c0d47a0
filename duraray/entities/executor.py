"""The entity batch executor: run an entity's operations one at a time, in order.

Pure: state and inputs are encoded bytes in, encoded bytes and recorded actions out.
Each operation checkpoints: a successful one commits its state change and its actions
(signals, orchestration starts); a failing one rolls back only its own changes and
reports its failure, and the batch goes on with the next operation.
"""

from __future__ import annotations

import inspect
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
        except Exception as exc:
            # Roll back this operation only: its state writes and its actions are dropped.
            outcomes.append(Outcome(op, failure=FailureDetails.from_exception(exc)))
            continue
        if op_changed:
            state = new_state
            changed = True
        outcomes.append(Outcome(op, result=result, signals=ctx.signals, starts=ctx.starts))
    return BatchResult(state, outcomes, changed)


def _invoke(impl: Any, ctx: EntityContext, op: Operation) -> Any:
    if isinstance(impl, type) and issubclass(impl, DurableEntity):
        instance = impl()
        instance._bind(ctx)
        key = (impl, op.name)
        plan = _PLANS.get(key)
        if plan is None:
            method = _find_operation(impl, op.name)
            if method is None:
                plan = (None, False, None)
            else:
                bound = getattr(instance, method)
                takes = _takes_input(bound)
                plan = (method, takes, _input_hint(bound) if takes else None)
            _remember(key, plan)
        method, takes, hint = plan
        if method is None:
            if op.name.lower() == "delete":
                ctx.delete_state()
                return None
            raise UnknownOperationError(
                f"entity {ctx.entity_id.name!r} has no operation {op.name!r}"
            )
        bound = getattr(instance, method)
        if takes:
            return bound(ctx.get_input(hint))
        return bound()
    if callable(impl):
        plan = _PLANS.get((impl, None))
        if plan is None:
            takes = _takes_input(impl, skip=1)
            plan = (None, takes, _input_hint(impl, skip=1) if takes else None)
            _remember((impl, None), plan)
        if plan[1]:
            return impl(ctx, ctx.get_input(plan[2]))
        return impl(ctx)
    raise TypeError(f"entity implementation {impl!r} is neither a DurableEntity nor a function")


# (implementation, operation) -> (method name, takes an input, input type hint). Looking
# these up (dir(), inspect.signature, get_type_hints) costs far more than most operations.
_PLANS: dict[tuple[Any, str | None], tuple[str | None, bool, Any]] = {}
_MAX_PLANS = 10_000


def _remember(key: tuple[Any, str | None], plan: tuple[str | None, bool, Any]) -> None:
    if len(_PLANS) >= _MAX_PLANS:  # operation names come from callers: keep it bounded
        _PLANS.clear()
    _PLANS[key] = plan


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
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]


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
