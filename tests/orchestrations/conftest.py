"""Fixtures for the replay-executor tests: history builders and an episode driver.

The tests drive ``OrchestrationExecutor`` with synthetic histories, the way the partition
does: an episode is ``[OrchestratorStarted(t), *incoming events]``; after
``executor.process(episode)``, ``executor.take_new_events()`` returns the action events
(then the completion, if any) that the partition appends to the history after the episode.

Helpers are reached through the ``kit`` fixture (session scoped, stateless), so that test
modules import nothing from this directory and Hypothesis tests may use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from duraray._errors import FailureDetails
from duraray.orchestrations import history as h
from duraray.orchestrations.executor import ExecutorOptions, OrchestrationExecutor, replay
from duraray.runtime.engine import codec

T0 = datetime(2024, 1, 1, tzinfo=UTC)
INSTANCE_ID = "order-1"


class Converter:
    """The codec as the executor's payload converter (as the partition wires it)."""

    encode = staticmethod(codec.encode)
    decode = staticmethod(codec.decode)


@dataclass
class Run:
    """What a live executor produced over a sequence of episodes."""

    executor: OrchestrationExecutor
    #: the new events returned after each episode, one list per episode
    steps: list[list[h.HistoryEvent]]
    #: every episode followed by its new events, as the partition would store them
    history: list[h.HistoryEvent] = field(default_factory=list)

    @property
    def new(self) -> list[h.HistoryEvent]:
        """The new events of the last episode."""
        return self.steps[-1]

    @property
    def actions(self) -> list[h.HistoryEvent]:
        """Every action event of the run (completion events left out)."""
        return [
            e
            for step in self.steps
            for e in step
            if not isinstance(e, h.ExecutionCompleted | h.ContinueAsNew)
        ]

    @property
    def completion(self) -> h.HistoryEvent | None:
        return self.executor.completion

    @property
    def status(self) -> h.OrchestrationStatus | None:
        done = self.executor.completion
        if isinstance(done, h.ExecutionCompleted):
            return done.status
        if isinstance(done, h.ContinueAsNew):
            return h.OrchestrationStatus.CONTINUED_AS_NEW
        return None

    @property
    def failure(self) -> FailureDetails | None:
        done = self.executor.completion
        return done.failure if isinstance(done, h.ExecutionCompleted) else None

    def output(self, type_hint: Any = None) -> Any:
        """The decoded output of a COMPLETED execution."""
        done = self.executor.completion
        assert isinstance(done, h.ExecutionCompleted), f"not completed: {done!r}"
        assert done.status is h.OrchestrationStatus.COMPLETED, done.failure
        return codec.decode(done.result, type_hint)

    def of_type(self, cls: type[h.HistoryEvent]) -> list[Any]:
        """The run's new events of one class, in order."""
        return [e for step in self.steps for e in step if isinstance(e, cls)]


class Kit:
    """Builders of history events and drivers of executors."""

    T0 = T0
    INSTANCE_ID = INSTANCE_ID
    converter = Converter()

    # -- time and payloads ---------------------------------------------------------------

    @staticmethod
    def at(seconds: float) -> datetime:
        """The orchestration clock ``seconds`` after T0."""
        return T0 + timedelta(seconds=seconds)

    @staticmethod
    def enc(value: Any) -> bytes:
        return codec.encode(value)

    @staticmethod
    def dec(data: bytes | None, type_hint: Any = None) -> Any:
        return codec.decode(data, type_hint)

    # -- incoming events -----------------------------------------------------------------

    def episode(self, t: float, *events: h.HistoryEvent) -> list[h.HistoryEvent]:
        """``[OrchestratorStarted(t), *events]``."""
        return [h.OrchestratorStarted(timestamp=self.at(t)), *events]

    def started(
        self,
        input: Any = None,
        *,
        name: str = "orch",
        instance_id: str = INSTANCE_ID,
        execution_id: str = "exec-1",
        t: float = 0,
        **fields: Any,
    ) -> h.ExecutionStarted:
        return h.ExecutionStarted(
            timestamp=self.at(t),
            name=name,
            instance_id=instance_id,
            execution_id=execution_id,
            input=codec.encode(input),
            **fields,
        )

    def start(self, input: Any = None, *, t: float = 0, **fields: Any) -> list[h.HistoryEvent]:
        """The first episode: ``[OrchestratorStarted(t), ExecutionStarted(input)]``."""
        return self.episode(t, self.started(input, t=t, **fields))

    def done(self, seq: int, result: Any = None, *, t: float = 0) -> h.TaskCompleted:
        return h.TaskCompleted(
            timestamp=self.at(t), task_scheduled_id=seq, result=codec.encode(result)
        )

    @staticmethod
    def failure(
        message: str = "boom",
        error_type: str = "RuntimeError",
        *,
        non_retriable: bool = False,
        inner: FailureDetails | None = None,
    ) -> FailureDetails:
        return FailureDetails(
            message=message,
            error_type=error_type,
            stack_trace=f"Traceback: {error_type}: {message}",
            inner=inner,
            non_retriable=non_retriable,
        )

    def fail(self, seq: int, message: str = "boom", *, t: float = 0, **kw: Any) -> h.TaskFailed:
        return h.TaskFailed(
            timestamp=self.at(t), task_scheduled_id=seq, failure=self.failure(message, **kw)
        )

    def sub_done(
        self, seq: int, result: Any = None, *, t: float = 0
    ) -> h.SubOrchestrationInstanceCompleted:
        return h.SubOrchestrationInstanceCompleted(
            timestamp=self.at(t), task_scheduled_id=seq, result=codec.encode(result)
        )

    def sub_fail(
        self, seq: int, message: str = "boom", *, t: float = 0, **kw: Any
    ) -> h.SubOrchestrationInstanceFailed:
        return h.SubOrchestrationInstanceFailed(
            timestamp=self.at(t), task_scheduled_id=seq, failure=self.failure(message, **kw)
        )

    def fired(self, seq: int, fire_at: float, *, t: float | None = None) -> h.TimerFired:
        """Timer ``seq`` (due ``fire_at`` seconds after T0) fired."""
        return h.TimerFired(
            timestamp=self.at(fire_at if t is None else t),
            timer_id=seq,
            fire_at=self.at(fire_at),
        )

    @staticmethod
    def fire(created: h.TimerCreated) -> h.TimerFired:
        """The TimerFired that answers ``created``, on time."""
        return h.TimerFired(
            timestamp=created.fire_at, timer_id=created.event_id, fire_at=created.fire_at
        )

    def raised(self, name: str, data: Any = None, *, t: float = 0) -> h.EventRaised:
        return h.EventRaised(timestamp=self.at(t), name=name, input=codec.encode(data))

    # -- expected action events ----------------------------------------------------------

    def scheduled(
        self,
        seq: int,
        name: str,
        input: Any = None,
        *,
        t: float = 0,
        tags: dict[str, str] | None = None,
        attempt: int | None = None,
    ) -> h.TaskScheduled:
        return h.TaskScheduled(
            timestamp=self.at(t),
            event_id=seq,
            name=name,
            input=codec.encode(input),
            tags=tags,
            attempt=attempt,
        )

    def timer(
        self,
        seq: int,
        fire_at: float,
        *,
        t: float = 0,
        final: float | None = None,
        retry: bool = False,
    ) -> h.TimerCreated:
        """A timer (or a chunk of one ending at ``fire_at``) the code asked to fire at
        ``final`` (default: ``fire_at``); a retry's back-off timer records no such time."""
        final_at = None if retry else self.at(fire_at if final is None else final)
        return h.TimerCreated(
            timestamp=self.at(t), event_id=seq, fire_at=self.at(fire_at), final_fire_at=final_at
        )

    def sub_created(
        self,
        seq: int,
        name: str,
        instance_id: str,
        input: Any = None,
        *,
        t: float = 0,
        version: str | None = None,
    ) -> h.SubOrchestrationInstanceCreated:
        return h.SubOrchestrationInstanceCreated(
            timestamp=self.at(t),
            event_id=seq,
            name=name,
            instance_id=instance_id,
            input=codec.encode(input),
            version=version,
        )

    def sent(
        self, seq: int, instance_id: str, name: str, data: Any = None, *, t: float = 0
    ) -> h.EventSent:
        return h.EventSent(
            timestamp=self.at(t),
            event_id=seq,
            instance_id=instance_id,
            name=name,
            input=codec.encode(data),
        )

    def completed(self, result: Any = None, *, t: float = 0) -> h.ExecutionCompleted:
        return h.ExecutionCompleted(
            timestamp=self.at(t),
            status=h.OrchestrationStatus.COMPLETED,
            result=codec.encode(result),
        )

    # -- entity events -------------------------------------------------------------------

    @staticmethod
    def section_id(
        seq: int, *, instance_id: str = INSTANCE_ID, execution_id: str = "exec-1"
    ) -> str:
        """The critical-section id of the ``lock_entities`` call that got task id ``seq``."""
        return f"{instance_id}#{execution_id}#{seq}"

    def entity_called(
        self,
        seq: int,
        entity_id: str,
        operation: str,
        input: Any = None,
        *,
        t: float = 0,
        lock_owner: str | None = None,
    ) -> h.EntityOperationCalled:
        return h.EntityOperationCalled(
            timestamp=self.at(t),
            event_id=seq,
            entity_id=entity_id,
            operation=operation,
            input=codec.encode(input),
            lock_owner=lock_owner,
        )

    def entity_signaled(
        self,
        seq: int,
        entity_id: str,
        operation: str,
        input: Any = None,
        *,
        t: float = 0,
        signal_at: float | None = None,
    ) -> h.EntityOperationSignaled:
        """A signal; ``signal_at`` is its due time in seconds after T0, if any."""
        return h.EntityOperationSignaled(
            timestamp=self.at(t),
            event_id=seq,
            entity_id=entity_id,
            operation=operation,
            input=codec.encode(input),
            signal_time=None if signal_at is None else self.at(signal_at),
        )

    def entity_done(
        self, seq: int, result: Any = None, *, t: float = 0
    ) -> h.EntityOperationCompleted:
        return h.EntityOperationCompleted(
            timestamp=self.at(t), task_scheduled_id=seq, result=codec.encode(result)
        )

    def entity_fail(
        self, seq: int, message: str = "boom", *, t: float = 0, **kw: Any
    ) -> h.EntityOperationFailed:
        return h.EntityOperationFailed(
            timestamp=self.at(t), task_scheduled_id=seq, failure=self.failure(message, **kw)
        )

    def lock_requested(
        self, seq: int, lock_set: list[str], *, t: float = 0
    ) -> h.EntityLockRequested:
        return h.EntityLockRequested(
            timestamp=self.at(t),
            event_id=seq,
            critical_section_id=self.section_id(seq),
            lock_set=list(lock_set),
        )

    def lock_granted(self, seq: int, lock_set: list[str], *, t: float = 0) -> h.EntityLockGranted:
        """The grant of the lock requested as task ``seq``."""
        return h.EntityLockGranted(
            timestamp=self.at(t),
            task_scheduled_id=seq,
            critical_section_id=self.section_id(seq),
            lock_set=list(lock_set),
        )

    def unlock_sent(
        self, seq: int, lock_set: list[str], *, section: int, t: float = 0
    ) -> h.EntityUnlockSent:
        """Task ``seq`` released the section that ``lock_entities`` task ``section`` opened."""
        return h.EntityUnlockSent(
            timestamp=self.at(t),
            event_id=seq,
            critical_section_id=self.section_id(section),
            lock_set=list(lock_set),
        )

    # -- executors -----------------------------------------------------------------------

    def executor(
        self,
        fn: Callable[..., Any] | None,
        *,
        instance_id: str = INSTANCE_ID,
        options: ExecutorOptions | None = None,
        name_of: Callable[[str, Any], str] | None = None,
    ) -> OrchestrationExecutor:
        return OrchestrationExecutor(
            fn,
            instance_id=instance_id,
            converter=self.converter,
            options=options,
            name_of=name_of,
        )

    def replay(
        self,
        fn: Callable[..., Any] | None,
        history: Iterable[h.HistoryEvent],
        new_events: Iterable[h.HistoryEvent] = (),
        *,
        instance_id: str = INSTANCE_ID,
        options: ExecutorOptions | None = None,
    ) -> tuple[OrchestrationExecutor, list[h.HistoryEvent]]:
        """``executor.replay`` with this kit's converter."""
        return replay(
            fn,
            history,
            new_events,
            instance_id=instance_id,
            converter=self.converter,
            options=options,
        )

    def run(
        self,
        fn: Callable[..., Any] | None,
        *episodes: list[h.HistoryEvent],
        instance_id: str = INSTANCE_ID,
        options: ExecutorOptions | None = None,
        check_replay: bool = True,
    ) -> Run:
        """Feed ``episodes`` to one live executor, collecting the new events of each.

        With ``check_replay`` (the default) every episode is also run by a fresh executor
        that replays the history before it: both must produce the same new events, the
        same completion and the same custom status, or the run fails. Tests whose
        orchestration has side effects (a logger, a counter) turn it off.
        """
        run = Run(executor=self.executor(fn, instance_id=instance_id, options=options), steps=[])
        for ep in episodes:
            self._step(fn, run, ep, instance_id=instance_id, options=options, check=check_replay)
        return run

    def drive(
        self,
        fn: Callable[..., Any] | None,
        first: list[h.HistoryEvent],
        respond: Callable[[h.HistoryEvent], h.HistoryEvent | None],
        *,
        instance_id: str = INSTANCE_ID,
        options: ExecutorOptions | None = None,
        check_replay: bool = True,
        limit: int = 200,
    ) -> Run:
        """Run ``fn`` from the episode ``first`` until it ends, answering its actions.

        ``respond(action)`` returns the event that completes an action (or None to leave it
        open). Answers are delivered one per episode, first come first served; an episode
        happens at the current time, or at a timer's ``fire_at`` if that is later, so a
        failure answered at once fails "instantly" on the orchestration clock.
        """
        run = Run(executor=self.executor(fn, instance_id=instance_id, options=options), steps=[])
        now = self._seconds(first[0].timestamp)
        pending: list[h.HistoryEvent] = []
        ep: list[h.HistoryEvent] | None = first
        while ep is not None:
            assert len(run.steps) < limit, "the orchestration does not end"
            new = self._step(
                fn, run, ep, instance_id=instance_id, options=options, check=check_replay
            )
            pending.extend(a for a in map(respond, new) if a is not None)
            if run.executor.is_complete or not pending:
                break
            answer = pending.pop(0)
            if isinstance(answer, h.TimerFired):
                now = max(now, self._seconds(answer.fire_at))
            ep = self.episode(now, answer)
        return run

    @staticmethod
    def _seconds(moment: datetime) -> float:
        return (moment - T0).total_seconds()

    def _step(
        self,
        fn: Callable[..., Any] | None,
        run: Run,
        ep: list[h.HistoryEvent],
        *,
        instance_id: str,
        options: ExecutorOptions | None,
        check: bool,
    ) -> list[h.HistoryEvent]:
        before = list(run.history)
        executor = run.executor
        executor.process(ep)
        new = executor.take_new_events()
        run.steps.append(new)
        run.history.extend([*ep, *new])
        if check:
            fresh, replayed = self.replay(fn, before, ep, instance_id=instance_id, options=options)
            assert new == replayed, "live and replayed episodes differ"
            assert executor.completion == fresh.completion
            assert executor.custom_status == fresh.custom_status
        return new


@pytest.fixture(scope="session")
def kit() -> Kit:
    """History builders and executor drivers (stateless, shared by every test)."""
    return Kit()
