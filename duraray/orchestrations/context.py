"""OrchestrationContext: everything orchestration code may use to act on the world.

Every source of non-determinism goes through the context: time comes from the history
(``current_utc_datetime``), ids from ``new_uuid()``, and every effect is an action that
the executor records and the partition carries out after the episode commits.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, overload

from duraray import _limits
from duraray._errors import LockingRuleError
from duraray.entities.ids import EntityId
from duraray.entities.scheduler import sorted_lock_set
from duraray.orchestrations import history as h
from duraray.orchestrations.hints import return_type_hint
from duraray.orchestrations.ids import validate_instance_id
from duraray.orchestrations.matching import ActionEvent
from duraray.orchestrations.options import ExecutorOptions, PayloadConverter
from duraray.orchestrations.replay_logger import ReplaySafeLogger
from duraray.orchestrations.task import (
    CancellableTask,
    CompletableTask,
    EntityCallTask,
    RetryableTask,
    RetryPolicy,
    Task,
    TimedWaitTask,
    TimerTask,
)

T = TypeVar("T")

#: True while orchestration code runs during replay; log processors read it to drop
#: records that were already emitted the first time the code ran.
replaying_var: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "duraray_replaying", default=False
)

# A fixed namespace keeps new_uuid() stable across processes and versions.
_UUID_NAMESPACE = uuid.UUID("9e952958-5e33-4daf-827f-2fa12937b875")


@dataclass(slots=True)
class RetryTimer:
    """Marks a timer id as the delay before the next attempt of a retryable task."""

    task: RetryableTask[Any]


@dataclass(slots=True)
class TimerChunk:
    """Marks a timer id as one chunk of a timer longer than the maximum interval."""

    task: TimerTask


class ExecutorPort(Protocol):
    """What the context needs of the executor that runs it (``executor.py`` implements
    it). A protocol, so the context does not import the executor that imports it."""

    instance_id: str
    converter: PayloadConverter
    options: ExecutorOptions
    started: h.ExecutionStarted | None
    now: datetime | None
    replaying: bool
    custom_status: bytes | None
    continue_as_new_input: Any
    continue_as_new_called: bool
    save_events: bool
    critical_section: CriticalSection | None
    lock_pending: CriticalSection | None

    @property
    def sequence(self) -> int:
        """The sequence number the next action will take."""
        ...

    def name_of(self, kind: str, target: Any) -> str:
        """The registered name of an activity or orchestration given by name or function."""
        ...

    def next_sequence(self) -> int:
        """Take the next action sequence number."""
        ...

    def next_uuid_counter(self) -> int:
        """Take the next ``new_uuid`` counter value."""
        ...

    def record_action(self, event: ActionEvent, task: Any) -> None:
        """Register an action the code produced and what its completion completes."""
        ...

    def release_section(self, section: CriticalSection) -> None:
        """Record the end of a critical section."""
        ...

    def cancel_open(self, task: CancellableTask[Any]) -> None:
        """Forget what a cancelled task waited for."""
        ...

    def wait_for_event(self, name: str, task: CancellableTask[Any]) -> None:
        """Complete ``task`` with the next external event ``name``."""
        ...


class OrchestrationContext:
    """The orchestration's view of its execution; passed as the first argument."""

    __slots__ = ("_ex",)

    def __init__(self, executor: ExecutorPort) -> None:
        self._ex = executor

    # -- read-only state ---------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        """The id of this orchestration instance."""
        return self._ex.instance_id

    @property
    def execution_id(self) -> str | None:
        """The id of this execution (a new one per continue_as_new, restart or reuse)."""
        started = self._ex.started
        return started.execution_id if started else None

    @property
    def name(self) -> str | None:
        """The registered name of the orchestration."""
        started = self._ex.started
        return started.name if started else None

    @property
    def parent_instance_id(self) -> str | None:
        """The parent orchestration's instance id for a sub-orchestration, else None."""
        started = self._ex.started
        return started.parent_instance_id if started else None

    @property
    def version(self) -> str | None:
        """The version given when the instance was scheduled."""
        started = self._ex.started
        return started.version if started else None

    @property
    def tags(self) -> dict[str, str]:
        """The tags given when the instance was scheduled."""
        started = self._ex.started
        return dict(started.tags or {}) if started else {}

    @property
    def current_utc_datetime(self) -> datetime:
        """The orchestration clock: the time the current episode started, from history.

        Identical on every replay at the same point; advances between episodes.
        """
        now = self._ex.now
        assert now is not None, "the orchestration has not started"
        return now

    @property
    def is_replaying(self) -> bool:
        """True while the code re-executes what an earlier episode already ran."""
        return self._ex.replaying

    # -- status ----------------------------------------------------------------------------

    def set_custom_status(self, value: Any) -> None:
        """Publish a status value visible to clients; ``None`` clears it."""
        self._ex.custom_status = None if value is None else self._ex.converter.encode(value)

    def new_uuid(self) -> str:
        """A UUID, as its canonical string (as durabletask returns it), the same on every
        replay and unique within the instance; ``uuid.UUID(ctx.new_uuid())`` for the object."""
        counter = self._ex.next_uuid_counter()
        name = f"{self.instance_id}/{self.execution_id}/{counter}"
        return str(uuid.uuid5(_UUID_NAMESPACE, name))

    def create_replay_safe_logger(self, logger: Any) -> ReplaySafeLogger:
        """Wrap a stdlib or structlog logger so it logs nothing while replaying."""
        return ReplaySafeLogger(logger, self)

    # -- actions -------------------------------------------------------------------------

    @overload
    def call_activity(
        self,
        activity: str | type[Any],
        *,
        input: Any = None,
        retry_policy: RetryPolicy | None = None,
        tags: dict[str, str] | None = None,
    ) -> CompletableTask[Any]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[..., Coroutine[Any, Any, T]],
        *,
        input: Any = None,
        retry_policy: RetryPolicy | None = None,
        tags: dict[str, str] | None = None,
    ) -> CompletableTask[T]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[..., T],
        *,
        input: Any = None,
        retry_policy: RetryPolicy | None = None,
        tags: dict[str, str] | None = None,
    ) -> CompletableTask[T]: ...

    def call_activity(
        self,
        activity: Any,
        *,
        input: Any = None,
        retry_policy: RetryPolicy | None = None,
        tags: dict[str, str] | None = None,
    ) -> CompletableTask[Any]:
        """Schedule an activity (function, activity class or registered name); the task
        yields its result (typed as the function returns it)."""
        ex = self._ex
        name = _limits.check_name(ex.name_of("activity", activity), "activity name")
        _limits.check_tags(tags)
        encoded = ex.converter.encode(input)
        hint = _result_hint(activity)

        def schedule(task: CompletableTask[Any]) -> None:
            seq = ex.next_sequence()
            task.description = f"call_activity({name!r}) #{seq}"
            attempt = getattr(task, "attempt", 1)  # a retry's count (RetryableTask)
            ex.record_action(
                h.TaskScheduled(
                    timestamp=self.current_utc_datetime,
                    event_id=seq,
                    name=name,
                    input=encoded,
                    tags=dict(tags) if tags else None,
                    attempt=attempt if attempt > 1 else None,
                ),
                task,
            )

        return self._schedule(schedule, retry_policy, hint, f"call_activity({name!r})")

    def call_sub_orchestrator(
        self,
        orchestrator: Any,
        *,
        input: Any = None,
        instance_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
        version: str | None = None,
    ) -> CompletableTask[Any]:
        """Start a child orchestration and wait for its output.

        Without ``instance_id`` the child's id is ``<parent id>:<task id as 4 hex digits>``,
        the same on every replay; a parent id too long for that suffix needs an explicit
        ``instance_id`` (ids are at most 256 bytes of UTF-8).
        """
        ex = self._ex
        if ex.critical_section is not None or ex.lock_pending is not None:
            raise LockingRuleError("cannot call a sub-orchestrator inside a critical section")
        name = _limits.check_name(ex.name_of("orchestration", orchestrator), "orchestration name")
        _limits.check_text(version, "version")
        encoded = ex.converter.encode(input)
        hint = _result_hint(orchestrator)
        if instance_id is not None:
            validate_instance_id(instance_id)

        def schedule(task: CompletableTask[Any]) -> None:
            seq = ex.sequence  # taken only once the child id is known to be valid
            child_id = instance_id or _default_child_id(self.instance_id, seq)
            ex.next_sequence()
            task.description = f"call_sub_orchestrator({name!r}) #{seq}"
            ex.record_action(
                h.SubOrchestrationInstanceCreated(
                    timestamp=self.current_utc_datetime,
                    event_id=seq,
                    name=name,
                    instance_id=child_id,
                    input=encoded,
                    version=version,
                ),
                task,
            )

        return self._schedule(schedule, retry_policy, hint, f"call_sub_orchestrator({name!r})")

    def _schedule(
        self, schedule: Any, retry_policy: RetryPolicy | None, hint: Any, description: str
    ) -> CompletableTask[Any]:
        if retry_policy is None:
            task: CompletableTask[Any] = CompletableTask(description)
        else:
            if not isinstance(retry_policy, RetryPolicy):
                raise TypeError("retry_policy must be a duraray.RetryPolicy")
            task = RetryableTask(retry_policy, self.current_utc_datetime, description)
            task.reschedule = schedule
        task.result_hint = hint
        schedule(task)
        return task

    def create_timer(self, fire_at: datetime | timedelta) -> TimerTask:
        """A durable timer firing at ``fire_at`` (a UTC datetime or a delay from now).

        The time must lie between 1970 and about year 9899 and a delay be at most a
        century (``duraray._limits``); ValueError otherwise, raised here.
        """
        if not isinstance(fire_at, datetime | timedelta):
            raise TypeError("create_timer takes a datetime or a timedelta")
        due = _limits.resolve_time(fire_at, self.current_utc_datetime, "timer fire_at")
        task = TimerTask(due, "create_timer")
        task._on_cancel = self._ex.cancel_open
        self._schedule_timer_chunk(task)
        return task

    def _schedule_timer_chunk(self, task: TimerTask) -> None:
        ex = self._ex
        now = self.current_utc_datetime
        due = task.fire_at
        limit = ex.options.maximum_timer_interval
        marker: Any = task
        if limit is not None and due - now > limit:
            due = now + limit
            marker = TimerChunk(task)
        seq = ex.next_sequence()
        task.description = f"create_timer #{seq}"
        # The time asked for goes with every chunk: replay compares it (matching.py), not
        # the chunk's end, which depends on the hub's maximum_timer_interval.
        created = h.TimerCreated(
            timestamp=now, event_id=seq, fire_at=due, final_fire_at=task.fire_at
        )
        ex.record_action(created, marker)

    @overload
    def wait_for_external_event(self, name: str) -> CancellableTask[Any]: ...

    @overload
    def wait_for_external_event(
        self, name: str, *, timeout: timedelta | float
    ) -> TimedWaitTask[Any]: ...

    def wait_for_external_event(
        self, name: str, *, timeout: timedelta | float | None = None
    ) -> CancellableTask[Any] | TimedWaitTask[Any]:
        """A task completed by the next event called ``name`` (case-insensitive).

        Events that arrived before the wait are buffered and consumed first-in first-out;
        a cancelled wait consumes nothing. With ``timeout`` (a ``timedelta`` or seconds,
        on the orchestration's clock: a durable timer), the task fails with
        ``TimeoutError`` if no such event came in time, and the event, should it come
        later, stays buffered for the next wait.
        """
        _limits.check_name(name, "event name")
        wait: CancellableTask[Any] = CancellableTask(f"wait_for_external_event({name!r})")
        delay = None if timeout is None else _timeout(timeout)
        self._ex.wait_for_event(name, wait)
        if delay is None:
            return wait
        timer = self.create_timer(delay)
        return TimedWaitTask(wait, timer, f"no event {name!r} within {delay}")

    def send_event(self, instance_id: str, event_name: str, *, data: Any = None) -> None:
        """Raise ``event_name`` on another instance, exactly once, after this episode commits.

        Sending to a missing or completed instance, or to itself, does not fail the sender.
        """
        _limits.check_name(event_name, "event name")
        validate_instance_id(instance_id)
        ex = self._ex
        encoded = ex.converter.encode(data)
        seq = ex.next_sequence()
        ex.record_action(
            h.EventSent(
                timestamp=self.current_utc_datetime,
                event_id=seq,
                instance_id=instance_id,
                name=event_name,
                input=encoded,
            ),
            None,
        )

    def continue_as_new(self, new_input: Any = None, *, save_events: bool = False) -> None:
        """End this execution and start the next with ``new_input`` and a fresh history.

        With ``save_events=True`` external events received but not yet consumed are
        carried over to the next execution; otherwise they are dropped.
        """
        ex = self._ex
        ex.continue_as_new_input = ex.converter.encode(new_input)
        ex.continue_as_new_called = True
        ex.save_events = bool(save_events)

    # -- entities ------------------------------------------------------------------------

    @property
    def is_in_critical_section(self) -> bool:
        """True between the grant of ``lock_entities`` and the end of its ``with`` block."""
        return self._ex.critical_section is not None

    def call_entity(self, entity: Any, operation: str, input: Any = None) -> CompletableTask[Any]:
        """Call an entity operation and wait for its result.

        A failing operation raises ``EntityOperationFailedError`` (a TaskFailedError).
        Inside a critical section only entities of the lock set can be called, one call
        per entity at a time.
        """
        ex = self._ex
        entity_id = EntityId.of(entity)
        target = str(entity_id)
        _check_operation(operation)
        section = ex.critical_section
        if ex.lock_pending is not None:
            raise LockingRuleError("cannot call an entity while lock_entities is pending")
        if section is not None:
            if target not in section.lock_set:
                raise LockingRuleError(
                    f"cannot call {target} inside a critical section that does not lock it "
                    f"(locked: {', '.join(section.lock_set)})"
                )
            if target in section.pending_calls:
                raise LockingRuleError(
                    f"a call to {target} is already pending in this critical section; "
                    "wait for it before calling the entity again"
                )
        encoded = ex.converter.encode(input)
        seq = ex.next_sequence()
        task: EntityCallTask[Any] = EntityCallTask(
            target, operation, f"call_entity({target!r}, {operation!r}) #{seq}"
        )
        ex.record_action(
            h.EntityOperationCalled(
                timestamp=self.current_utc_datetime,
                event_id=seq,
                entity_id=target,
                operation=operation,
                input=encoded,
                lock_owner=section.id if section is not None else None,
            ),
            task,
        )
        if section is not None:
            section.pending_calls.add(target)
        return task

    def signal_entity(
        self,
        entity: Any,
        operation: str,
        input: Any = None,
        *,
        signal_time: datetime | timedelta | None = None,
    ) -> None:
        """Send a one-way operation to an entity (at ``signal_time``, if given).

        Inside a critical section, entities of the lock set cannot be signalled.
        """
        ex = self._ex
        target = str(EntityId.of(entity))
        _check_operation(operation)
        section = ex.critical_section
        if section is not None and target in section.lock_set:
            raise LockingRuleError(
                f"cannot signal {target}: it is locked by this critical section (call it instead)"
            )
        when: datetime | None = None
        if signal_time is not None:
            when = _limits.resolve_time(signal_time, self.current_utc_datetime, "signal_time")
        encoded = ex.converter.encode(input)
        seq = ex.next_sequence()
        ex.record_action(
            h.EntityOperationSignaled(
                timestamp=self.current_utc_datetime,
                event_id=seq,
                entity_id=target,
                operation=operation,
                input=encoded,
                signal_time=when,
            ),
            None,
        )

    def lock_entities(self, entities: Any) -> CompletableTask[CriticalSection]:
        """Lock entities for a critical section: ``with (yield ctx.lock_entities([a, b])):``.

        The lock set is sorted and de-duplicated; locks are released when the ``with``
        block exits and, at the latest, when the orchestration ends.
        """
        ex = self._ex
        if ex.critical_section is not None or ex.lock_pending is not None:
            raise LockingRuleError("cannot lock entities inside a critical section (nested lock)")
        lock_set = sorted_lock_set(entities)
        seq = ex.next_sequence()
        section_id = f"{self.instance_id}#{self.execution_id}#{seq}"
        task: CompletableTask[CriticalSection] = CompletableTask(f"lock_entities #{seq}")
        ex.lock_pending = CriticalSection(ex, section_id, lock_set)
        ex.record_action(
            h.EntityLockRequested(
                timestamp=self.current_utc_datetime,
                event_id=seq,
                critical_section_id=section_id,
                lock_set=lock_set,
            ),
            task,
        )
        return task


class CriticalSection:
    """Entities locked by one orchestration; a context manager that releases them."""

    def __init__(self, executor: ExecutorPort, section_id: str, lock_set: list[str]) -> None:
        self._ex = executor
        self.id = section_id
        self.lock_set = list(lock_set)
        self.pending_calls: set[str] = set()
        self.released = False

    @property
    def locked_entities(self) -> list[EntityId]:
        """The locked entities, in lock order."""
        return [EntityId.parse(e) for e in self.lock_set]

    def release(self) -> None:
        """Release the locks now (the ``with`` block does this on exit)."""
        if not self.released:
            self._ex.release_section(self)

    def __enter__(self) -> CriticalSection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _check_operation(operation: Any) -> None:
    _limits.check_name(operation, "entity operation")


def _default_child_id(parent_id: str, seq: int) -> str:
    child_id = f"{parent_id}:{seq:04x}"
    try:
        return validate_instance_id(child_id)
    except ValueError as exc:
        raise ValueError(
            f"the sub-orchestration's default instance id (the parent's id plus "
            f"':{seq:04x}') is too long: {exc}; pass a shorter instance_id"
        ) from None


def _timeout(value: Any) -> timedelta:
    """A wait's timeout: a positive ``timedelta`` or number of seconds."""
    delay = _limits.check_seconds(value, "timeout")
    if delay <= timedelta(0):
        raise ValueError(f"timeout must be positive, got {value!r}")
    return delay


def _result_hint(target: Any) -> Any:
    if callable(target) and not isinstance(target, str):
        return return_type_hint(target)
    return None


__all__ = ["OrchestrationContext", "ReplaySafeLogger", "Task", "replaying_var"]
