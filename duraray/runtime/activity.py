"""Executing one activity: look it up, decode its input, call it, encode its outcome.

Shared by every host of activities (the in-process thread pool, Ray workers), so an
activity behaves the same wherever it runs. No storage, no scheduling.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any

from duraray._errors import ActivityNotRegisteredError, FailureDetails
from duraray._registry import Registry
from duraray.orchestrations.executor import accepts_input, input_type_hint
from duraray.runtime import codec
from duraray.runtime.records import ActivityResult, ActivityTask


@dataclass(frozen=True, slots=True)
class ActivityContext:
    """What an activity knows about the call: the orchestration and the task id."""

    orchestration_id: str
    task_id: int
    name: str
    tags: dict[str, str] | None = None

    @property
    def instance_id(self) -> str:
        """Alias of ``orchestration_id``."""
        return self.orchestration_id


def execute_activity(registry: Registry, task: ActivityTask) -> ActivityResult:
    """Run ``task`` and return its result or failure; never raises."""
    spec = registry.activities.get(task.name)
    try:
        if spec is None:
            raise ActivityNotRegisteredError(
                f"activity {task.name!r} is not registered with this hub"
            )
        fn = spec.fn
        value = codec.decode(task.input, input_type_hint(fn))
        ctx = ActivityContext(task.instance_id, task.task_id, task.name, task.tags)
        outcome: Any = fn(ctx, value) if accepts_input(fn) else fn(ctx)
        if inspect.isawaitable(outcome):
            outcome = asyncio.run(_await(outcome))
        encoded = codec.encode(outcome)
    except Exception as exc:
        return ActivityResult(
            task.instance_id, task.execution_id, task.task_id,
            failure=FailureDetails.from_exception(exc),
        )
    return ActivityResult(task.instance_id, task.execution_id, task.task_id, result=encoded)


async def _await(awaitable: Any) -> Any:
    return await awaitable
