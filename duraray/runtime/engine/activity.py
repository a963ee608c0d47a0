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
from duraray.runtime import tracing
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import ActivityResult, ActivityTask


@dataclass(frozen=True, slots=True)
class ActivityContext:
    """What an activity knows about the call: the orchestration, the task id, and which
    attempt this is (1 for the first call; a ``RetryPolicy`` retry counts on from 2)."""

    orchestration_id: str
    task_id: int
    name: str
    tags: dict[str, str] | None = None
    attempt: int = 1

    @property
    def instance_id(self) -> str:
        """Alias of ``orchestration_id``."""
        return self.orchestration_id


def execute_activity(registry: Registry, task: ActivityTask) -> ActivityResult:
    """Run ``task`` and return its result or failure (and how long it ran); never raises.

    A traced task (its instance is traced) runs inside its span (``activity:<name>``, a
    child of the orchestration's), emitted here when it finishes; the hub's
    ``otel_setup`` runs first, once per process.
    """
    if registry.otel_setup is not None:
        tracing.setup(registry.otel_setup)
    if task.trace_context is None:
        return _execute(registry, task)
    attributes = {
        "duraray.instance_id": task.instance_id,
        "duraray.execution_id": task.execution_id,
        "duraray.activity": task.name,
        "duraray.task_id": task.task_id,
        "duraray.attempt": task.attempt or 1,
    }
    return tracing.traced(
        task.trace_context,
        f"activity:{task.name}",
        attributes,
        lambda: _execute(registry, task),
        _failure_of,
    )


def _failure_of(result: ActivityResult) -> tuple[str, str, str | None] | None:
    failure = result.failure
    return None if failure is None else (failure.error_type, failure.message, failure.stack_trace)


def _execute(registry: Registry, task: ActivityTask) -> ActivityResult:
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
        ctx = ActivityContext(
            task.instance_id, task.task_id, task.name, task.tags, task.attempt or 1
        )
        outcome: Any = fn(ctx, value) if accepts_input(fn) else fn(ctx)
        if inspect.isawaitable(outcome):
            # One loop per thread, kept: an activity class's state tied to a loop (a
            # client session, a lock) stays usable on its next call.
            outcome = _thread_loop().run_until_complete(_await(outcome))
        encoded = codec.encode(outcome)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit, CancelledError: a failed attempt, not a crash
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

#: Instances of activity classes, one per registration per process, keyed by the
#: registration's token (it travels with the registry, so a class shipped by value, which
#: arrives as a new object with every task, still finds its instance; two apps that
#: register classes of the same name keep theirs apart).
_instances: dict[str, Any] = {}
_instances_lock = threading.Lock()
_loops = threading.local()


def prepare_activity(spec: ActivitySpec) -> None:
    """Build an activity class's instance in this process now (no-op for a function)."""
    _callable(spec)


def _callable(spec: ActivitySpec) -> Callable[..., Any]:
    """The function to call: the activity itself, or for an activity class its instance in
    this process (constructed on first use, so a model loads once per worker process).

    One instance serves every call in its process, from several threads at once where the
    process runs activities on threads (the shared pool, the in-process runtime); a warm
    pool of a resource shape runs one activity per process at a time."""
    fn: Any = spec.fn
    if not inspect.isclass(fn):
        return fn
    instance: Any = _instances.get(spec.token)
    if instance is None:
        with _instances_lock:  # two threads of a pool worker must not build it twice
            instance = _instances.get(spec.token)
            if instance is None:
                instance = fn()  # a failure fails this attempt; the next one tries again
                _instances[spec.token] = instance
    bound: Callable[..., Any] = instance.__call__
    return bound


class _LoopHolder:
    """A thread's event loop for async activities, closed when the thread ends (the
    thread-local that holds it is dropped then)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        self.loop.close()


def _thread_loop() -> asyncio.AbstractEventLoop:
    holder: _LoopHolder | None = getattr(_loops, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _loops.holder = _LoopHolder()
    return holder.loop


async def _await(awaitable: Any) -> Any:
    return await awaitable
