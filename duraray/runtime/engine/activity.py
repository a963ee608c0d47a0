"""Executing one activity: look it up, decode its input, call it, encode its outcome.

Shared by every host of activities (the in-process thread pool, Ray workers), so an
activity behaves the same wherever it runs. No storage, no scheduling.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from duraray._errors import ActivityNotRegisteredError, FailureDetails
from duraray._registry import ActivitySpec, Registry
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
    cold = task.name not in _warm
    _warm.add(task.name)
    started = time.perf_counter()
    cpu_started = time.thread_time()
    try:
        if spec is None:
            raise ActivityNotRegisteredError(
                f"activity {task.name!r} is not registered with this hub"
            )
        fn = _callable(spec)
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
            cpu=time.thread_time() - cpu_started,
            name=task.name,
            cold=cold,
        )
    return ActivityResult(
        task.instance_id,
        task.execution_id,
        task.task_id,
        result=encoded,
        duration=time.perf_counter() - started,
        cpu=time.thread_time() - cpu_started,
        name=task.name,
        cold=cold,
    )


#: Activities that have run in this process: a first run is reported as cold.
_warm: set[str] = set()

#: Instances of activity classes, one per class per process: ``(name, module, qualname)``
#: -> instance. Keyed by names, not by the class object, since a class shipped by value
#: arrives as a new object with every task.
_instances: dict[tuple[str, str, str], Any] = {}
_instances_lock = threading.Lock()


def _callable(spec: ActivitySpec) -> Callable[..., Any]:
    """The function to call: the activity itself, or for an activity class its instance in
    this process (constructed on first use, so a model loads once per worker process)."""
    fn: Any = spec.fn
    if not inspect.isclass(fn):
        return fn
    key = (spec.name, fn.__module__, fn.__qualname__)
    instance: Any = _instances.get(key)
    if instance is None:
        with _instances_lock:  # two threads of a pool worker must not build it twice
            instance = _instances.get(key)
            if instance is None:
                instance = fn()  # a failure fails this attempt; the next one tries again
                _instances[key] = instance
    bound: Callable[..., Any] = instance.__call__
    return bound


async def _await(awaitable: Any) -> Any:
    return await awaitable
