"""Executing one activity: look it up, decode its input, call it, encode its outcome.

Shared by every host of activities (the in-process thread pool, Ray workers), so an
activity behaves the same wherever it runs. No storage, no scheduling.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass
from typing import Any

from duraray._errors import ActivityNotRegisteredError, FailureDetails
from duraray._registry import Registry
from duraray.orchestrations.executor import accepts_input, input_type_hint
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import ActivityResult, ActivityTask


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
    """Run ``task`` and return its result or failure (and how long it ran); never raises."""
    spec = registry.activities.get(task.name)
    started = time.perf_counter()
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
            task.instance_id,
            task.execution_id,
            task.task_id,
            failure=FailureDetails.from_exception(exc),
            duration=time.perf_counter() - started,
        )
    return ActivityResult(
        task.instance_id,
        task.execution_id,
        task.task_id,
        result=encoded,
        duration=time.perf_counter() - started,
    )


async def _await(awaitable: Any) -> Any:
    return await awaitable


class ActivityCostModel:
    """Learns which activities are cheap enough to run inside the partition's process.

    A Ray round trip to a worker costs about a millisecond; for an activity that runs for
    microseconds that is most of a step's latency. Each activity's run time is followed
    as an exponential moving average; after ``warmup`` runs, one whose average stays below
    ``threshold`` seconds is cheap. A cheap activity that turns slow is noticed on its
    next runs and goes back to the workers, so CPU-heavy work never starves a partition.
    """

    def __init__(self, threshold: float = 0.0005, warmup: int = 8, alpha: float = 0.2) -> None:
        self.threshold = threshold
        self.warmup = warmup
        self.alpha = alpha
        self._average: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def observe(self, name: str, duration: float) -> None:
        """Record one run of ``name`` that took ``duration`` seconds."""
        count = self._count.get(name, 0) + 1
        self._count[name] = count
        previous = self._average.get(name)
        self._average[name] = (
            duration if previous is None else previous + self.alpha * (duration - previous)
        )

    def is_cheap(self, name: str) -> bool:
        """True once ``name`` has run ``warmup`` times and its average is below threshold."""
        return self._count.get(name, 0) >= self.warmup and self._average[name] < self.threshold

    def average(self, name: str) -> float | None:
        """The moving average run time of ``name`` in seconds (None before its first run)."""
        return self._average.get(name)
