"""A synchronous driver for PartitionCore: no thread, no Ray, every interleaving chosen here.

``Cluster`` holds one core per partition over a ``FaultyStore`` (which counts commits and
can fail one on demand) and gives every core one injected ``Clock``: a manual wall clock,
a manual monotonic clock and seeded ids, so resends, timers and wait deadlines move only
when a test says so, and a run is reproducible. ``run()`` plays the
shell's part: it calls ``run_batch`` on cores with work and releases effects the way the
in-process runtime does (replies kept by token, messages and acks routed between cores,
activities executed at once or held).
"""

from __future__ import annotations

import inspect
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.activity import execute_activity
from duraray.runtime.engine.clock import Clock
from duraray.runtime.engine.partition import PartitionCore
from duraray.runtime.engine.records import ActivityTask, ClientRequest, Effects, Message, Reply
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.engine.store import LmdbStore, MemoryStore, PartitionStore, WriteBatch

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class SimulatedCrash(Exception):
    """Raised by a FaultyStore commit told to fail: the process 'died' before committing."""


class InjectedFault(Exception):
    """Raised by a FaultyStore read or commit chosen by its ``FaultInjector``."""


@dataclass
class FaultInjector:
    """Makes a store's reads and commits raise at random, while a batch runs only, and
    never in two batches of one partition in a row (so no item fails twice alone: each
    fault must cost one rebuild of the core and nothing else)."""

    rng: random.Random
    rate: float
    armed: bool = False  # set by the driver around run_batch
    injected: int = 0
    cooling: bool = False  # the batch after a fault runs clean

    def maybe(self, where: str) -> None:
        if self.armed and not self.cooling and self.rng.random() < self.rate:
            self.injected += 1
            self.cooling = True
            raise InjectedFault(f"injected store fault in {where}")


class FaultyStore:
    """A store proxy that counts commits, fails the next ``fail_next`` of them, and lets
    a ``FaultInjector`` make reads and commits raise."""

    def __init__(self, inner: PartitionStore) -> None:
        self.inner = inner
        self.commits = 0
        self.fail_next = 0
        self.injector: FaultInjector | None = None

    def commit(self, batch: WriteBatch) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise SimulatedCrash("simulated crash before commit")
        if self.injector is not None:
            self.injector.maybe("commit")
        self.inner.commit(batch)
        self.commits += 1

    def get(self, db: str, key: bytes) -> bytes | None:
        if self.injector is not None:
            self.injector.maybe("get")
        return self.inner.get(db, key)

    def scan(self, db: str, *args: Any, **kwargs: Any) -> list[tuple[bytes, bytes]]:
        if self.injector is not None:
            self.injector.maybe("scan")
        return self.inner.scan(db, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ManualTime:
    """A monotonic clock we move."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class DriverClock(Clock):
    """The cluster's clock as the cores see it: its wall time, its monotonic time, and
    ids from a seeded generator."""

    def __init__(self, cluster: Cluster, seed: int) -> None:
        super().__init__(cluster.clock, seed=seed)
        self._mono = cluster.mono

    def monotonic(self) -> float:
        return self._mono.now


@dataclass
class Cluster:
    """P cores of one hub driven synchronously; see the module docstring."""

    registry: Registry
    partitions: int = 1
    config: HubConfig = field(default_factory=HubConfig)
    data_dir: Path | None = None  # None: memory stores
    hub: str = "hub"
    hold_activities: bool = False
    hold_messages: bool = False
    auto_advance: bool = False
    seed: int = 0
    #: rebuild a core whose batch raised, as the shells do (else the error propagates)
    isolate_failures: bool = True

    def __post_init__(self) -> None:
        self.config = self.config.with_options(partitions=self.partitions)
        self.now = T0
        self.mono = ManualTime()
        self.core_clock = DriverClock(self, self.seed)
        self.rebuilds = 0  # cores rebuilt after a batch raised
        self._memory: dict[int, MemoryStore] = {}
        self._tokens = itertools.count(1)
        self.stores: list[FaultyStore] = []
        self.cores: list[PartitionCore] = []
        self.replies: dict[int, list[Any]] = {}
        self.pending: dict[int, tuple[int, ClientRequest]] = {}
        self.executions: Counter[tuple[str, int]] = Counter()
        self.held: list[ActivityTask] = []
        self.in_transit: list[tuple[int, int, list[Message]]] = []
        for index in range(self.partitions):
            self.stores.append(self._open_store(index))
            self.cores.append(self._new_core(index))

    # -- lifecycle ------------------------------------------------------------------------

    def clock(self) -> datetime:
        return self.now

    def _open_store(self, index: int) -> FaultyStore:
        if self.data_dir is None:
            return FaultyStore(self._memory.setdefault(index, MemoryStore()))
        return FaultyStore(LmdbStore(self.data_dir / self.hub / f"p{index}", sync=False))

    def _new_core(self, index: int) -> PartitionCore:
        return PartitionCore(
            hub=self.hub,
            index=index,
            store=self.stores[index],  # type: ignore[arg-type]  # a proxy of one
            registry=self.registry,
            config=self.config,
            clock=self.core_clock,
        )

    def reopen(self, index: int) -> PartitionCore:
        """Throw core ``index`` away (a crash: its intake is lost) and recover a new one."""
        old = self.cores[index]
        if self.data_dir is None:
            for live in old.instances.values():  # release generators; the store lives on
                live.executor = None
        else:
            old.close()
            self.stores[index] = self._open_store(index)
        self.cores[index] = self._new_core(index)
        return self.cores[index]

    def crash_after_commit(self, index: int) -> PartitionCore:
        """Run one batch of core ``index``, lose its effects, then restart the core."""
        self.cores[index].run_batch()
        return self.reopen(index)

    def crash_before_commit(self, index: int) -> PartitionCore:
        """Run one batch of core ``index`` whose commit fails, then restart the core."""
        self.stores[index].fail_next = 1
        try:
            self.cores[index].run_batch()
        except SimulatedCrash:
            pass
        self.stores[index].fail_next = 0  # a batch with nothing to write commits nothing
        return self.reopen(index)

    def close(self) -> None:
        for core in self.cores:
            if not core.store.closed:
                core.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the shell's part -----------------------------------------------------------------

    def release(self, source: int, fx: Effects) -> None:
        """Deliver one batch's effects the way the in-process runtime does."""
        for token, value in fx.replies:
            self.replies.setdefault(token, []).append(value)
            self.pending.pop(token, None)
        for destination, messages in fx.messages.items():
            if self.hold_messages:
                self.in_transit.append((source, destination, list(messages)))
            else:
                self.cores[destination].submit_messages(source, list(messages))
        for destination, upto in fx.acks.items():
            self.cores[destination].submit_ack(source, upto)
        for task in fx.activities:
            if self.hold_activities:
                self.held.append(task)
            else:
                self.execute(task)

    def execute(self, task: ActivityTask) -> None:
        """Run one activity now and hand its result to its partition."""
        self.executions[(task.instance_id, task.task_id)] += 1
        self.cores[task.partition].submit_activity_results([execute_activity(self.registry, task)])

    def batch(self, index: int) -> Effects:
        """One batch of core ``index``, as a shell runs it: a batch that raises is
        followed by a core rebuilt from the store that isolates its work (poison.py);
        a ``SimulatedCrash`` is left to the caller. Effects are not released."""
        core = self.cores[index]
        injector = self.stores[index].injector
        if injector is not None:
            injector.armed = True
        try:
            fx = core.run_batch()
        except SimulatedCrash:
            raise
        except Exception as exc:
            if not self.isolate_failures:
                raise
            self.rebuilds += 1
            if injector is not None:
                injector.armed = False  # the rebuild reads the store: no fault there
            self.cores[index], fx = core.recover_from_failure(exc)
            return fx
        finally:
            if injector is not None:
                injector.armed = False
        if injector is not None:
            injector.cooling = False
        return fx

    def step(self, index: int) -> Effects:
        """One batch of core ``index``, effects released."""
        fx = self.batch(index)
        self.release(index, fx)
        return fx

    def run(
        self,
        max_batches: int = 20_000,
        *,
        resend: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> int:
        """Run batches until no core has work; with ``resend``, heal lost messages first.

        ``on_batch(batch_number, core_index)`` is called before each batch (crash hooks).
        With ``auto_advance`` set, an idle cluster jumps its clock to the next timer.
        Returns the number of batches run.
        """
        batches = 0
        quiet_rounds = 0
        while batches < max_batches:
            busy = False
            for index in range(len(self.cores)):
                if not (self.cores[index].has_work() or self.cores[index].resend_due()):
                    continue
                busy = True
                batches += 1
                if on_batch is not None:
                    on_batch(batches, index)
                core = self.cores[index]  # the hook may have replaced it
                if core.has_work() or core.resend_due():
                    self.release(index, self.batch(index))
            if busy:
                quiet_rounds = 0
                continue
            # Idle: a client retries what was never answered, and time passes so that
            # unacknowledged messages are resent. Stop once nothing is left to heal.
            if (
                resend
                and quiet_rounds <= 3
                and (self.pending or any(c.store.count("outbox") for c in self.cores))
            ):
                quiet_rounds += 1
                self.retry_unanswered()
                self.mono.now += self.config.resend_interval + 1
                continue
            dues = [d for d in (c.next_due() for c in self.cores) if d is not None]
            if not (self.auto_advance and dues):
                return batches
            self.now = max(self.now, min(dues))
        raise AssertionError(f"no quiescence after {max_batches} batches")

    # -- the client's part ----------------------------------------------------------------

    def submit(
        self, op: str, *, partition: int | None = None, request_id: str | None = None, **args: Any
    ) -> int:
        """Queue a client request; returns the token its reply is filed under."""
        token = next(self._tokens)
        if partition is None:
            partition = partition_for(args["instance_id"], self.partitions)
        request = ClientRequest(op, args, reply_to=token, request_id=request_id)
        if request_id is not None:
            self.pending[token] = (partition, request)
        self.cores[partition].submit_request(request)
        return token

    def retry_unanswered(self) -> None:
        """Resubmit requests with a request id that got no reply (a client's timeout)."""
        for partition, request in list(self.pending.values()):
            self.cores[partition].submit_request(request)

    def reply(self, token: int) -> Any:
        """The (first) reply filed under ``token``; a ``Reply`` is raised as its error."""
        value = self.replies[token][0]
        if isinstance(value, Reply):
            raise value.error
        return value

    def call(self, op: str, **kwargs: Any) -> Any:
        """Submit a request, run until idle and return its reply."""
        token = self.submit(op, **kwargs)
        self.run()
        return self.reply(token)

    def peek(self, op: str, **kwargs: Any) -> Any:
        """Like ``call`` but runs one batch of the target core only: no retries, no timers."""
        token = self.submit(op, **kwargs)
        self.step(partition_for(kwargs["instance_id"], self.partitions))
        return self.reply(token)

    def start(self, name: str, instance_id: str, value: Any = None, **extra: Any) -> int:
        """Queue a start with a request id derived from the instance id."""
        return self.submit(
            "start",
            instance_id=instance_id,
            name=name,
            input=codec.encode(value),
            request_id=f"start-{instance_id}",
            **extra,
        )

    def state(self, instance_id: str) -> Any:
        return self.call("get_state", instance_id=instance_id)

    def output(self, instance_id: str) -> Any:
        return codec.decode(self.state(instance_id).output)

    def history(self, instance_id: str) -> list[h.HistoryEvent]:
        return self.call("get_history", instance_id=instance_id)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def id_on(partition: int, partitions: int, prefix: str = "i") -> str:
    """The first id ``<prefix><n>`` that hashes to ``partition``."""
    return next(
        f"{prefix}{n}"
        for n in itertools.count()
        if partition_for(f"{prefix}{n}", partitions) == partition
    )


def completions(history: list[h.HistoryEvent]) -> Counter[int]:
    """How many TaskCompleted events each task id has in ``history``."""
    return Counter(e.task_scheduled_id for e in history if isinstance(e, h.TaskCompleted))


def make_registry(**orchestrations_and_activities: Any) -> Registry:
    """A registry of generator functions (orchestrations) and plain ones (activities)."""
    registry = Registry()
    for name, fn in orchestrations_and_activities.items():
        if inspect.isgeneratorfunction(fn):
            registry.add_orchestration(fn, name)
        else:
            registry.add_activity(fn, name)
    return registry
