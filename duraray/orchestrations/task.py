"""Tasks an orchestrator yields, their composition (when_all, when_any) and RetryPolicy.

A task is a promise owned by one orchestration execution: the executor completes it when
the matching history event arrives. Tasks know nothing about history or storage; they
only hold a result or an exception and notify the composites that wait on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from duraray._errors import FailureDetails, TaskCancelledError, TaskFailedError
from duraray._limits import MAX_DURATION, check_seconds

T = TypeVar("T")

_NO_RESULT: Any = object()


class Task(Generic[T]):
    """Something an orchestrator can ``yield``; the value sent back is its result."""

    __slots__ = ("_exception", "_is_complete", "_parents", "_result")

    def __init__(self) -> None:
        self._is_complete = False
        self._result: Any = _NO_RESULT
        self._exception: BaseException | None = None
        self._parents: list[CompositeTask[Any]] | None = None

    @property
    def is_complete(self) -> bool:
        """True once the task has a result, has failed or was cancelled."""
        return self._is_complete

    @property
    def is_failed(self) -> bool:
        """True when the task completed with an exception (cancellation included)."""
        return self._is_complete and self._exception is not None

    def get_result(self) -> T:
        """The task's result; raises its exception if it failed."""
        if not self._is_complete:
            raise RuntimeError("the task has not completed yet")
        if self._exception is not None:
            raise self._exception
        return self._result

    def get_exception(self) -> BaseException | None:
        """The exception the task failed with, or None."""
        return self._exception

    # -- completion (called by the executor) ---------------------------------------------

    def _add_parent(self, parent: CompositeTask[Any]) -> None:
        if self._parents is None:
            self._parents = [parent]
        else:
            self._parents.append(parent)

    def _complete(self, result: Any) -> None:
        if self._is_complete:
            return
        self._is_complete = True
        self._result = result
        self._notify()

    def _fail(self, exc: BaseException) -> None:
        if self._is_complete:
            return
        self._is_complete = True
        self._exception = exc
        self._notify()

    def _notify(self) -> None:
        if self._parents:
            for parent in self._parents:
                parent._on_child_completed(self)


class CompletableTask(Task[T]):
    """A task completed by one history event: an activity, timer, event or sub-orchestration."""

    __slots__ = ("description", "result_hint")

    def __init__(self, description: str = "") -> None:
        super().__init__()
        #: what the task is, for error messages ("call_activity('charge') #3")
        self.description = description
        #: the type the result is converted to (the callee's return annotation)
        self.result_hint: Any = None


class EntityCallTask(CompletableTask[T]):
    """A call to an entity operation; remembers which entity and operation."""

    __slots__ = ("entity_id", "operation")

    def __init__(self, entity_id: str, operation: str, description: str = "") -> None:
        super().__init__(description)
        self.entity_id = entity_id
        self.operation = operation


class CancellableTask(CompletableTask[T]):
    """A timer or external-event wait that the orchestrator may cancel."""

    __slots__ = ("_is_cancelled", "_on_cancel")

    def __init__(self, description: str = "") -> None:
        super().__init__(description)
        self._is_cancelled = False
        self._on_cancel: Any = None

    @property
    def is_cancelled(self) -> bool:
        """True once ``cancel()`` was called before the task completed."""
        return self._is_cancelled

    def cancel(self) -> None:
        """Stop waiting: the task will not complete, and a cancelled event wait consumes
        no event (the event stays buffered for the next waiter). A no-op once complete."""
        if self._is_complete:
            return
        self._is_cancelled = True
        self._is_complete = True
        self._exception = TaskCancelledError(f"{self.description or 'task'} was cancelled")
        # Only when_all parents hear of it (they count the task as failed, so awaiting them
        # raises TaskCancelledError once the rest finish instead of waiting forever); a
        # cancelled task never wins a when_any.
        if self._parents:
            for parent in self._parents:
                if parent._counts_cancelled:
                    parent._on_child_completed(self)
        if self._on_cancel is not None:
            self._on_cancel(self)
            self._on_cancel = None


class TimerTask(CancellableTask[None]):
    """A durable timer; completes with None when it fires."""

    __slots__ = ("fire_at",)

    def __init__(self, fire_at: Any, description: str = "") -> None:
        super().__init__(description)
        self.fire_at = fire_at


class CompositeTask(Task[T]):
    """A task over several children."""

    __slots__ = ("_children", "_completed_count")

    #: whether a cancelled child counts as finished (failed) for this composite
    _counts_cancelled = False

    def __init__(self, tasks: Iterable[Task[Any]]) -> None:
        super().__init__()
        self._children: list[Task[Any]] = list(tasks)
        for child in self._children:
            if not isinstance(child, Task):
                raise TypeError(f"expected tasks, got {type(child).__name__!r}")
        self._completed_count = 0
        for child in self._children:
            child._add_parent(self)
        for child in self._children:
            if child.is_complete and (self._counts_cancelled or not _is_cancelled(child)):
                self._on_child_completed(child)

    @property
    def children(self) -> list[Task[Any]]:
        """The tasks this one waits on, in the order given."""
        return list(self._children)

    def _on_child_completed(self, child: Task[Any]) -> None:
        raise NotImplementedError


class WhenAllTask(CompositeTask[list[Any]]):
    """Completes when every child has; then fails with the first failure, if any."""

    __slots__ = ("_first_failure",)

    _counts_cancelled = True

    def __init__(self, tasks: Iterable[Task[Any]]) -> None:
        self._first_failure: BaseException | None = None
        super().__init__(tasks)
        if not self._children:
            self._complete([])

    def _on_child_completed(self, child: Task[Any]) -> None:
        if self._is_complete:
            return
        self._completed_count += 1
        if child._exception is not None and self._first_failure is None:
            self._first_failure = child._exception
        # A counter, not a scan of the children: a fan-out of n tasks costs O(n) in total.
        if self._completed_count == len(self._children):
            if self._first_failure is not None:
                self._fail(self._first_failure)
            else:
                self._complete([c._result for c in self._children])


class WhenAnyTask(CompositeTask[Task[Any]]):
    """Completes with the first child to finish (succeeded or failed); never raises."""

    __slots__ = ()

    def __init__(self, tasks: Iterable[Task[Any]]) -> None:
        super().__init__(tasks)
        if not self._children:
            raise ValueError("when_any needs at least one task")

    def _on_child_completed(self, child: Task[Any]) -> None:
        if not self._is_complete:
            self._complete(child)


class TimedWaitTask(CompositeTask[T]):
    """An external-event wait bounded by a durable timer (``wait_for_external_event(name,
    timeout=...)``): its result is the event's data; if the timer fires first, the wait is
    cancelled (it consumes no event) and the task fails with ``TimeoutError``."""

    __slots__ = ("_event", "_message", "_timer")

    def __init__(self, event: CancellableTask[T], timer: TimerTask, message: str) -> None:
        self._event, self._timer, self._message = event, timer, message
        super().__init__([event, timer])

    @property
    def is_cancelled(self) -> bool:
        """True once ``cancel()`` was called before the task completed."""
        return self._event.is_cancelled and self._timer.is_cancelled

    def cancel(self) -> None:
        """Stop waiting: neither the event nor the timeout completes the task."""
        if self._is_complete:
            return
        self._event.cancel()
        self._timer.cancel()
        self._is_complete = True
        self._exception = TaskCancelledError(f"{self._event.description} was cancelled")

    def _on_child_completed(self, child: Task[Any]) -> None:
        if self._is_complete:
            return
        if child is self._event:
            self._timer.cancel()
            if child._exception is not None:
                self._fail(child._exception)
            else:
                self._complete(child._result)
        else:
            self._event.cancel()
            self._fail(TimeoutError(self._message))


def _is_cancelled(task: Task[Any]) -> bool:
    return isinstance(task, CancellableTask) and task.is_cancelled


def when_all(tasks: Iterable[Task[Any]]) -> WhenAllTask:
    """A task that waits for all ``tasks``; its result is their results in input order.

    If any task fails, it still waits for the others, then raises the first failure.
    """
    return WhenAllTask(tasks)


def when_any(tasks: Iterable[Task[Any]]) -> WhenAnyTask:
    """A task whose result is the first of ``tasks`` to finish (the task itself).

    It never raises: call ``winner.get_result()`` to get the value or the failure.
    """
    return WhenAnyTask(tasks)


def _as_timedelta(value: timedelta | float | int | None, what: str) -> timedelta | None:
    # Finite and at most a century (duraray._limits): retry timers are durable times.
    return None if value is None else check_seconds(value, what)


@dataclass(frozen=True, slots=True, init=False)
class RetryPolicy:
    """How often and how long to retry a failed activity or sub-orchestration.

    The delay before attempt n+1 is ``first_retry_interval * backoff_coefficient**(n-1)``,
    capped by ``max_retry_interval`` (and by a century); each delay is a durable timer in
    the history. Intervals are finite and at most a century.
    ``retry_timeout`` is measured on the orchestration clock (``current_utc_datetime``)
    from the first attempt: no retry is scheduled whose start would fall after it, so
    replay can never change the number of attempts.
    """

    first_retry_interval: timedelta
    max_number_of_attempts: int
    backoff_coefficient: float
    max_retry_interval: timedelta | None
    retry_timeout: timedelta | None

    def __init__(
        self,
        first_retry_interval: timedelta | float,
        max_number_of_attempts: int,
        backoff_coefficient: float = 1.0,
        max_retry_interval: timedelta | float | None = None,
        retry_timeout: timedelta | float | None = None,
    ) -> None:
        first = _as_timedelta(first_retry_interval, "first_retry_interval")
        if first is None or first <= timedelta(0):
            raise ValueError("first_retry_interval must be positive")
        if not isinstance(max_number_of_attempts, int) or max_number_of_attempts < 1:
            raise ValueError("max_number_of_attempts must be an integer >= 1")
        if (
            isinstance(backoff_coefficient, bool)
            or not isinstance(backoff_coefficient, int | float)
            or not (math.isfinite(backoff_coefficient) and backoff_coefficient >= 1.0)
        ):
            raise ValueError(
                f"backoff_coefficient must be a finite number >= 1.0, got {backoff_coefficient!r}"
            )
        max_interval = _as_timedelta(max_retry_interval, "max_retry_interval")
        if max_interval is not None and max_interval < first:
            raise ValueError("max_retry_interval must be >= first_retry_interval")
        timeout = _as_timedelta(retry_timeout, "retry_timeout")
        if timeout is not None and timeout < timedelta(0):
            raise ValueError("retry_timeout must not be negative")
        object.__setattr__(self, "first_retry_interval", first)
        object.__setattr__(self, "max_number_of_attempts", max_number_of_attempts)
        object.__setattr__(self, "backoff_coefficient", float(backoff_coefficient))
        object.__setattr__(self, "max_retry_interval", max_interval)
        object.__setattr__(self, "retry_timeout", timeout)

    def delay_after(self, failed_attempts: int) -> timedelta:
        """The delay before the next attempt once ``failed_attempts`` attempts failed."""
        cap = MAX_DURATION
        if self.max_retry_interval is not None:
            cap = min(cap, self.max_retry_interval)
        try:
            seconds = self.first_retry_interval.total_seconds() * (
                self.backoff_coefficient ** (failed_attempts - 1)
            )
        except OverflowError:  # many attempts with a backoff: capped, never a crash
            return cap
        if seconds >= cap.total_seconds():
            return cap
        return timedelta(seconds=seconds)


class RetryableTask(CompletableTask[T]):
    """An activity or sub-orchestration call retried under a RetryPolicy.

    The executor reschedules it (with a new task id) after each failure until the policy
    gives up; the orchestrator sees one task throughout.
    """

    __slots__ = ("attempt", "first_attempt_at", "policy", "reschedule")

    def __init__(self, policy: RetryPolicy, first_attempt_at: Any, description: str) -> None:
        super().__init__(description)
        self.policy = policy
        self.attempt = 1
        self.first_attempt_at = first_attempt_at
        #: set by the context: schedules the next attempt and returns its task id
        self.reschedule: Any = None

    def should_retry(self, details: FailureDetails, now: datetime | None) -> bool:
        """Whether the policy retries after this failure, at orchestration time ``now``.

        Not after a non-retriable failure or the last attempt, nor when the next attempt
        would start after ``retry_timeout`` (counted from the first attempt).
        """
        policy = self.policy
        if details.non_retriable or self.attempt >= policy.max_number_of_attempts:
            return False
        if policy.retry_timeout is not None and now is not None:
            next_start = now + policy.delay_after(self.attempt)
            if next_start - self.first_attempt_at > policy.retry_timeout:
                return False
        return True


__all__ = [
    "CancellableTask",
    "CompletableTask",
    "CompositeTask",
    "EntityCallTask",
    "RetryPolicy",
    "RetryableTask",
    "Task",
    "TaskFailedError",
    "TimerTask",
    "WhenAllTask",
    "WhenAnyTask",
    "when_all",
    "when_any",
]
