"""The replay executor: history events in, new history events (actions) and status out.

One ``OrchestrationExecutor`` drives one execution (generation) of one orchestration
instance. It is pure: no I/O, no clock, no Ray, no storage. Time comes from
``OrchestratorStarted`` events, ids from the instance id and a counter.

Two ways to reach the same state, which must produce identical actions:

- **replay**: a fresh executor processes the committed history with ``replaying=True``;
  every action the code produces is matched against the action events recorded in the
  history (``TaskScheduled``, ``TimerCreated`` ...), and a mismatch is a
  ``NonDeterminismError`` that names both sides;
- **resume**: the partition keeps the executor (and so the live generator) in memory
  after an episode and feeds it only the next episode's events.

Each episode the partition calls ``process(new_events)`` and ``take_new_events()``; the
returned events (the actions, then the completion, if any) are appended to the history
after the episode's input events, so that replaying the history reproduces the episode.

The matching of replayed actions lives in ``matching`` (``ReplayLedger``), the external
events waited for and buffered in ``inbox`` (``EventInbox``), what the hub supplies (the
payload converter, ``ExecutorOptions``) in ``options``. With
``ExecutorOptions.determinism_warnings`` the code's first run (not a replay) is watched
for clocks, random sources and id generators (``determinism``): it warns, and changes
nothing the executor computes.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Generator, Iterable
from datetime import datetime
from typing import Any, NoReturn

from duraray._errors import (
    EntityOperationFailedError,
    FailureDetails,
    NonDeterminismError,
    OrchestratorNotRegisteredError,
    SerializationError,
    TaskFailedError,
)
from duraray.orchestrations import determinism
from duraray.orchestrations import history as h
from duraray.orchestrations.context import (
    CriticalSection,
    OrchestrationContext,
    RetryTimer,
    TimerChunk,
    replaying_var,
)
from duraray.orchestrations.hints import accepts_input, input_type_hint, return_type_hint
from duraray.orchestrations.inbox import EventInbox
from duraray.orchestrations.matching import ActionEvent, ReplayLedger, action_label, event_id
from duraray.orchestrations.options import ExecutorOptions, PayloadConverter, default_name_of
from duraray.orchestrations.task import (
    CancellableTask,
    EntityCallTask,
    RetryableTask,
    Task,
    TimerTask,
)


class _StopExecution(BaseException):
    """Unwinds the executor when the execution has ended (e.g. a replay mismatch).

    A BaseException so that user code's ``except Exception`` cannot swallow it.
    """


class OrchestrationExecutor:
    """Runs one orchestration execution, by replay or by resuming its live generator."""

    def __init__(
        self,
        fn: Callable[..., Any] | None,
        *,
        instance_id: str,
        converter: PayloadConverter,
        name_of: Callable[[str, Any], str] | None = None,
        options: ExecutorOptions | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.converter = converter
        self.options = options or ExecutorOptions()
        self._fn = fn
        self._name_of = name_of or default_name_of
        self.context = OrchestrationContext(self)

        self.started: h.ExecutionStarted | None = None
        self.now: datetime | None = None
        self.replaying = False
        #: the ExecutionCompleted or ContinueAsNew event once the execution has ended
        self.completion: h.HistoryEvent | None = None
        #: encoded custom status (None = cleared)
        self.custom_status: bytes | None = None
        self.continue_as_new_input: Any = None
        self.continue_as_new_called = False
        self.save_events = False

        self._gen: Generator[Any, Any, Any] | None = None
        self._awaited: Task[Any] | None = None
        self._sequence = 0
        self._uuid_counter = 0
        # Actions the code produced while replaying, until the history confirms them.
        self._ledger = ReplayLedger()
        # Actions produced for the current episode (live).
        self._new_events: list[h.HistoryEvent] = []
        # Open tasks by task id: what a completion event for that id completes.
        self._open: dict[int, Any] = {}
        self._inbox = EventInbox(converter)
        #: the granted critical section, and one whose lock request is pending
        self.critical_section: CriticalSection | None = None
        self.lock_pending: CriticalSection | None = None
        # Set while the generator is closed: code in finally/__exit__ blocks must not
        # produce actions then (eviction is not an orchestration step).
        self._closing = False
        # Whether the code's first runs are watched for clocks, random sources and id
        # generators (determinism.py); replays never are.
        self._watch = self.options.determinism_warnings
        self._hook = self.options.determinism_hook
        if self._watch:
            determinism.install()
            determinism.watch_code_of(fn)

    # -- the episode interface -----------------------------------------------------------

    def process(self, events: Iterable[h.HistoryEvent], *, replaying: bool = False) -> None:
        """Apply events in order; ``replaying=True`` for events already in the history."""
        if not replaying:
            self._begin_live()
        self.replaying = replaying
        token = replaying_var.set(replaying)
        try:
            for event in events:
                try:
                    if self.completion is None:
                        self._apply(event)
                    else:
                        self._apply_after_end(event)
                except _StopExecution:
                    break
        finally:
            replaying_var.reset(token)
            self.replaying = False

    def take_new_events(self) -> list[h.HistoryEvent]:
        """The action events (then the completion) produced since the last call."""
        self._begin_live()
        events, self._new_events = self._new_events, []
        return events

    @property
    def is_complete(self) -> bool:
        """True once the execution ended (completed, failed or continued as new)."""
        return self.completion is not None

    @property
    def is_waiting(self) -> bool:
        """True while the generator waits for a task (the normal idle state)."""
        return self.completion is None and self._awaited is not None

    def buffered_events(self) -> list[tuple[str, Any]]:
        """External events received but not consumed: (name, encoded data), arrival order."""
        return self._inbox.buffered()

    def close(self) -> None:
        """Drop the live generator (eviction); user ``finally`` blocks see GeneratorExit."""
        gen, self._gen = self._gen, None
        if gen is not None:
            token = replaying_var.set(True)
            self._closing = True
            try:
                gen.close()
            except Exception:
                pass
            finally:
                replaying_var.reset(token)

    # -- internal: actions ---------------------------------------------------------------

    def _begin_live(self) -> None:
        # Actions produced during replay that the history does not contain are new actions
        # (e.g. the code schedules more work at the end of the last episode): emit them,
        # then a completion held back during the replay.
        self._new_events.extend(self._ledger.drain())

    @property
    def sequence(self) -> int:
        """The sequence number the next action will take."""
        return self._sequence

    def name_of(self, kind: str, target: Any) -> str:
        """The registered name of an activity or orchestration given by name or function."""
        return self._name_of(kind, target)

    def next_sequence(self) -> int:
        """Take the next action sequence number."""
        seq = self._sequence
        self._sequence += 1
        return seq

    def next_uuid_counter(self) -> int:
        """Take the next ``new_uuid`` counter value."""
        value = self._uuid_counter
        self._uuid_counter += 1
        return value

    def record_action(self, event: ActionEvent, task: Any) -> None:
        """Register an action the code produced and what its completion completes."""
        if self._closing:
            return
        seq = event_id(event)
        if task is not None:
            self._open[seq] = task
        if self.replaying:
            self._ledger.produced(event)
        else:
            self._new_events.append(event)

    def release_section(self, section: CriticalSection) -> None:
        """Record the end of a critical section: unlock every entity of its lock set."""
        if section.released or self._closing:
            return
        section.released = True
        if self.critical_section is section:
            self.critical_section = None
        if self.lock_pending is section:
            self.lock_pending = None
        seq = self.next_sequence()
        self.record_action(
            h.EntityUnlockSent(
                timestamp=self._timestamp(),
                event_id=seq,
                critical_section_id=section.id,
                lock_set=section.lock_set,
            ),
            None,
        )

    def cancel_open(self, task: CancellableTask[Any]) -> None:
        """Forget what a cancelled task waited for."""
        for seq, entry in list(self._open.items()):
            if entry is task or (isinstance(entry, TimerChunk) and entry.task is task):
                del self._open[seq]

    # -- internal: event application -------------------------------------------------------

    def _apply(self, event: h.HistoryEvent) -> None:
        if isinstance(event, h.OrchestratorStarted):
            self.now = event.timestamp
        elif isinstance(event, h.ExecutionStarted):
            self._start(event)
        elif isinstance(event, h.TaskCompleted | h.SubOrchestrationInstanceCompleted):
            self._on_success(event.task_scheduled_id, event.result)
        elif isinstance(event, h.TaskFailed | h.SubOrchestrationInstanceFailed):
            self._on_failure(event)
        elif isinstance(event, h.TimerFired):
            self._on_timer(event)
        elif isinstance(event, h.EventRaised):
            self._on_event(event)
        elif isinstance(event, h.EntityOperationCompleted):
            self._on_entity_result(event.task_scheduled_id, event.result, None)
        elif isinstance(event, h.EntityOperationFailed):
            self._on_entity_result(event.task_scheduled_id, None, event.failure)
        elif isinstance(event, h.EntityLockGranted):
            self._on_lock_granted(event)
        elif isinstance(event, ActionEvent):
            self._match(event)
        # Suspension, resumption, rewind markers and unknown events carry no code-visible
        # effect: the partition decides when events reach the executor.

    def _apply_after_end(self, event: h.HistoryEvent) -> None:
        if isinstance(event, h.EventRaised):
            # Buffered, not dropped: continue_as_new(save_events=True) carries over events
            # that arrive in the same episode after the execution ended.
            self._on_event(event)
        elif self._ledger.held is not None and isinstance(event, ActionEvent):
            # The code ended while replaying, yet the history recorded more actions: they
            # must still match, or the code now ends where it used to go on.
            self._match(event)

    def _match(self, recorded: ActionEvent) -> None:
        mismatch = self._ledger.match(recorded)
        if mismatch is not None:
            self._non_determinism(mismatch)

    def _non_determinism(self, message: str) -> NoReturn:
        err = NonDeterminismError(
            f"{message}; was the orchestration changed while instances were running?"
        )
        # Actions the changed code produced during replay are not new work: drop them. A
        # completion the changed code reached during replay gives way to this failure.
        self._ledger.discard()
        self.completion = None
        # The history, not the changed code, says which locks the entities hold: the code's
        # sections may never have been requested, or their unlock was just dropped above.
        for section in (self.critical_section, self.lock_pending):
            if section is not None:
                section.released = True
        self.critical_section = self.lock_pending = None
        # Not record_action: these are the engine's, not the code's, so they are emitted
        # (before the failure) even when the changed code had already ended.
        self._ledger.unlock_recorded(self.next_sequence, self._timestamp())
        self._finish_failed(err)
        raise _StopExecution

    def _start(self, event: h.ExecutionStarted) -> None:
        self.started = event
        if self.now is None:
            self.now = event.timestamp
        fn = self._fn
        if fn is None:
            self._finish_failed(
                OrchestratorNotRegisteredError(
                    f"orchestrator {event.name!r} is not registered with this hub"
                )
            )
            return
        try:
            value = self.converter.decode(event.input, input_type_hint(fn))
            args = (self.context, value) if accepts_input(fn) else (self.context,)
            result = self._run_code(fn, *args)
        except _StopExecution:
            raise
        except BaseException as exc:  # SystemExit & co. from user code fail the instance
            self._finish_failed(exc)
            return
        if isinstance(result, types.GeneratorType):
            self._gen = result
            self._step(None, None)
        else:
            self._finish_completed(result)

    def _on_success(self, seq: int, result: bytes | None) -> None:
        task = self._open.pop(seq, None)
        if task is None:
            return  # duplicate, cancelled or unknown completion: nothing waits for it
        try:
            value = self.converter.decode(result, task.result_hint)
        except SerializationError as exc:
            task._fail(TaskFailedError(f"{task.description} returned an undecodable result: {exc}"))
        else:
            task._complete(value)
        self._resume()

    def _on_failure(self, event: h.TaskFailed | h.SubOrchestrationInstanceFailed) -> None:
        seq = event.task_scheduled_id
        task = self._open.pop(seq, None)
        if task is None:
            return
        details = event.failure
        if isinstance(task, RetryableTask) and task.should_retry(details, self.now):
            delay = task.policy.delay_after(task.attempt)
            assert self.now is not None
            timer_seq = self.next_sequence()
            self.record_action(
                h.TimerCreated(timestamp=self.now, event_id=timer_seq, fire_at=self.now + delay),
                RetryTimer(task),
            )
            return
        kind = (
            "Sub-orchestration"
            if isinstance(event, h.SubOrchestrationInstanceFailed)
            else "Activity"
        )
        task._fail(TaskFailedError(f"{kind} task #{seq} failed: {details.message}", details))
        self._resume()

    def _on_entity_result(
        self, seq: int, result: bytes | None, failure: FailureDetails | None
    ) -> None:
        task = self._open.get(seq)
        if task is None:
            return
        section = self.critical_section
        if section is not None and isinstance(task, EntityCallTask):
            section.pending_calls.discard(task.entity_id)
        if failure is None:
            self._on_success(seq, result)
            return
        del self._open[seq]
        target = getattr(task, "entity_id", "entity")
        operation = getattr(task, "operation", "operation")
        task._fail(
            EntityOperationFailedError(
                f"Entity operation {target}.{operation} failed: {failure.message}", failure
            )
        )
        self._resume()

    def _on_lock_granted(self, event: h.EntityLockGranted) -> None:
        task = self._open.pop(event.task_scheduled_id, None)
        section = self.lock_pending
        if task is None or section is None or section.id != event.critical_section_id:
            return
        self.lock_pending = None
        self.critical_section = section
        task._complete(section)
        self._resume()

    def _on_timer(self, event: h.TimerFired) -> None:
        entry = self._open.pop(event.timer_id, None)
        if entry is None:
            return
        if isinstance(entry, RetryTimer):
            entry.task.attempt += 1
            try:
                entry.task.reschedule(entry.task)
            except (ValueError, TypeError) as exc:
                # The next attempt cannot be scheduled (e.g. its default child id grew too
                # long): the task fails in the orchestration, not the partition's batch.
                entry.task._fail(exc)
                self._resume()
            return
        if isinstance(entry, TimerChunk):
            entry = entry.task
        timer: TimerTask = entry
        assert self.now is not None
        if event.fire_at < timer.fire_at:
            self.context._schedule_timer_chunk(timer)
            return
        timer._complete(None)
        self._resume()

    def _on_event(self, event: h.EventRaised) -> None:
        if self._inbox.deliver(event.name, event.input):
            self._resume()

    def wait_for_event(self, name: str, task: CancellableTask[Any]) -> None:
        self._inbox.wait(name, task)

    # -- internal: driving the generator -------------------------------------------------

    def _resume(self) -> None:
        awaited = self._awaited
        if awaited is not None and awaited.is_complete and self.completion is None:
            self._awaited = None
            if awaited.is_failed:
                self._step(None, awaited.get_exception())
            else:
                self._step(awaited._result, None)

    def _run_code(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run the orchestrator's code: watched for non-deterministic calls on its first
        run, never when replaying (that code ran before; a replay must stay silent)."""
        if self._watch and not self.replaying and self.started is not None:
            return determinism.watched(self.started.name, self._hook, fn, *args)
        return fn(*args)

    def _step(self, value: Any, exc: BaseException | None) -> None:
        """Run the generator until it waits on an incomplete task or ends."""
        gen = self._gen
        assert gen is not None
        while True:
            try:
                yielded = (
                    self._run_code(gen.throw, exc)
                    if exc is not None
                    else self._run_code(gen.send, value)
                )
            except StopIteration as stop:
                self._finish_completed(stop.value)
                return
            except _StopExecution:
                raise
            except BaseException as error:
                # SystemExit, KeyboardInterrupt, GeneratorExit raised by orchestration code
                # fail the instance like any error: they must not unwind the partition.
                self._finish_failed(error)
                return
            if self.continue_as_new_called:
                self._finish_continue_as_new()
                return
            if not isinstance(yielded, Task):
                self._finish_failed(
                    TypeError(
                        f"orchestrator yielded {type(yielded).__name__!r}; yield tasks from the "
                        "context (ctx.call_activity, ctx.create_timer, when_all, ...)"
                    )
                )
                return
            if not yielded.is_complete:
                self._awaited = yielded
                return
            value, exc = (
                (None, yielded.get_exception()) if yielded.is_failed else (yielded._result, None)
            )

    # -- internal: completion --------------------------------------------------------------

    def _finish_completed(self, result: Any) -> None:
        if self.continue_as_new_called:
            self._finish_continue_as_new()
            return
        try:
            encoded = self.converter.encode(result)
        except SerializationError as exc:
            self._finish_failed(exc)
            return
        self._finish(
            h.ExecutionCompleted(
                timestamp=self._timestamp(), status=h.OrchestrationStatus.COMPLETED, result=encoded
            )
        )

    def _finish_failed(self, exc: BaseException) -> None:
        self._finish(
            h.ExecutionCompleted(
                timestamp=self._timestamp(),
                status=h.OrchestrationStatus.FAILED,
                failure=FailureDetails.from_exception(exc),
            )
        )

    def _finish_continue_as_new(self) -> None:
        self._finish(h.ContinueAsNew(timestamp=self._timestamp(), input=self.continue_as_new_input))

    def _finish(self, event: h.HistoryEvent) -> None:
        if self.completion is not None:
            return
        # Locks never outlive the execution: however it ends, release what it holds
        # (or asked for) before the completion event.
        for section in (self.critical_section, self.lock_pending):
            if section is not None and not section.released:
                self.release_section(section)
        self.completion = event
        self._awaited = None
        self._open.clear()
        # Nothing can wait any more: later events must be buffered, not handed to a waiter.
        self._inbox.stop_waiting()
        # The completion is always a new event: completed executions are never replayed.
        # One reached while replaying is held until the replay is over, since the rest of
        # the history may still show that the code changed (see _apply_after_end).
        if self.replaying:
            self._ledger.held = event
        else:
            self._begin_live()
            self._new_events.append(event)
        gen, self._gen = self._gen, None
        if gen is not None:
            self._closing = True
            try:
                gen.close()
            except Exception:
                pass

    def _timestamp(self) -> datetime:
        assert self.now is not None
        return self.now


def replay(
    fn: Callable[..., Any] | None,
    history: Iterable[h.HistoryEvent],
    new_events: Iterable[h.HistoryEvent] = (),
    *,
    instance_id: str,
    converter: PayloadConverter,
    name_of: Callable[[str, Any], str] | None = None,
    options: ExecutorOptions | None = None,
) -> tuple[OrchestrationExecutor, list[h.HistoryEvent]]:
    """The executor as a pure function: (history, new events) -> (state, new action events).

    Builds a fresh executor, replays ``history``, applies ``new_events`` live and returns
    the executor (for its status, custom status and completion) with the new events.
    """
    executor = OrchestrationExecutor(
        fn, instance_id=instance_id, converter=converter, name_of=name_of, options=options
    )
    executor.process(history, replaying=True)
    executor.process(new_events, replaying=False)
    return executor, executor.take_new_events()


__all__ = [
    "ExecutorOptions",
    "OrchestrationExecutor",
    "PayloadConverter",
    "accepts_input",
    "action_label",
    "input_type_hint",
    "replay",
    "return_type_hint",
]
