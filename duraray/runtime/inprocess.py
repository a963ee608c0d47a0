"""The in-process runtime: every partition of a hub in one process, without Ray.

The same ``PartitionCore`` as on Ray, driven by one engine thread; activities run in a
thread pool. It serves unit tests of user code (with a memory store and a manual clock
that can skip ahead to the next timer) and of the engine itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from duraray._errors import StorageFullError
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.runtime import tracing
from duraray.runtime.engine.activity import execute_activity
from duraray.runtime.engine.client_ops import OFF_BATCH_READS
from duraray.runtime.engine.partition import PartitionCore, utc_now
from duraray.runtime.engine.records import ActivityTask, ClientRequest, Effects, Reply
from duraray.runtime.engine.store import LmdbStore, MemoryStore, PartitionStore

log = structlog.get_logger("duraray.inprocess")

MEMORY = ":memory:"


class ManualClock:
    """A clock that moves only when told to (or, with ``auto_advance``, when idle).

    With ``auto_advance=True`` the runtime jumps the clock to the next timer whenever no
    work is pending and no activity is running, so a one-hour timer fires at once.
    """

    def __init__(self, start: datetime | None = None, *, auto_advance: bool = False) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            self._now = self._now.replace(tzinfo=UTC)
        self.auto_advance = auto_advance
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> datetime:
        return self._now

    def now(self) -> datetime:
        """The current time of this clock."""
        return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move the clock forward by ``delta`` (a timedelta or seconds)."""
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        if delta < timedelta(0):
            raise ValueError("a clock cannot go backwards")
        return self.set(self._now + delta)

    def set(self, when: datetime) -> datetime:
        """Move the clock to ``when`` (never backwards)."""
        with self._lock:
            if when > self._now:
                self._now = when
        for listener in list(self._listeners):
            listener()
        return self._now

    def _subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)


class InProcessHub:
    """All partitions of one hub in this process, an engine thread and an activity pool."""

    def __init__(
        self,
        name: str,
        registry: Registry,
        config: HubConfig,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if config.determinism_warnings is None:
            # Tests are where the warnings help most, and the profile hook's cost (see
            # HubConfig) matters least there: the in-process default is everything on.
            config = config.with_options(determinism_warnings=True)
        tracing.setup(config.otel_setup)  # once per process, before anything is traced
        self.name = name
        self.registry = registry
        self.config = config
        self.clock = clock or utc_now
        self._manual = clock if isinstance(clock, ManualClock) else None
        self.cores: list[PartitionCore] = []
        try:
            for index in range(config.partitions):
                store = self._open_store(index)
                try:
                    core = PartitionCore(
                        hub=name,
                        index=index,
                        store=store,
                        registry=registry,
                        config=config,
                        clock=self.clock,
                    )
                except BaseException:
                    store.close()  # releases the data dir's lock for the next attempt
                    raise
                self.cores.append(core)
        except BaseException:
            for core in self.cores:
                core.close()
            raise
        self._wake = threading.Event()
        self._stopping = False
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        # Held by the engine around its batches and by anyone asking the cores whether
        # they are idle: has_work()/next_due() prune the timer heap, which a batch running
        # in the engine thread pushes to and pops from (a lost or early timer otherwise).
        self._engine_lock = threading.RLock()
        self._pool = ThreadPoolExecutor(
            max_workers=config.activity_threads, thread_name_prefix=f"duraray-{name}-activity"
        )
        if self._manual is not None:
            self._manual._subscribe(self._wake.set)
        self._thread = threading.Thread(
            target=self._loop, name=f"duraray-{name}-engine", daemon=True
        )
        self._failure: BaseException | None = None
        self._thread.start()

    def _open_store(self, index: int) -> PartitionStore:
        if self.config.data_dir == MEMORY:
            return MemoryStore()
        path = Path(self.config.data_dir) / self.name / f"p{index}"
        return LmdbStore(path, sync=self.config.fsync, max_map_size=self.config.max_map_size)

    # -- the client's transport ----------------------------------------------------------

    @property
    def partition_count(self) -> int:
        """Number of partitions of the hub."""
        return len(self.cores)

    def submit(
        self, partition: int, op: str, args: dict[str, Any], request_id: str | None = None
    ) -> Future[Any]:
        """Queue a client operation on a partition; the future resolves after its commit."""
        if self._stopping:
            raise RuntimeError(f"hub {self.name!r} is stopped")
        if self._failure is not None:
            raise self._engine_error()
        future: Future[Any] = Future()
        if op in OFF_BATCH_READS:
            # Listings and counts read committed data on the caller's thread.
            result = self.cores[partition].client_ops.read(op, args)
            if isinstance(result, Reply):
                future.set_exception(result.error)
            else:
                future.set_result(result)
            return future
        self.cores[partition].submit_request(
            ClientRequest(op=op, args=args, reply_to=future, request_id=request_id)
        )
        self._wake.set()
        if self._failure is not None:  # the engine died while we queued: nobody answers
            self._fail(future)
        return future

    def _engine_error(self) -> RuntimeError:
        error = RuntimeError(
            f"hub {self.name!r} cannot answer: its engine thread failed with "
            f"{self._failure!r}; its data is kept up to its last commit (close the hub and "
            "open it again)"
        )
        error.__cause__ = self._failure
        return error

    def _fail(self, caller: Any) -> None:
        if isinstance(caller, Future) and not caller.done():
            try:
                caller.set_exception(self._engine_error())
            except InvalidStateError:
                pass  # answered or cancelled meanwhile

    # -- the engine ----------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stopping:
                self._wake.clear()
                busy = False
                with self._engine_lock:
                    for index, core in enumerate(self.cores):
                        if core.has_work() or core.resend_due():
                            try:
                                fx = core.run_batch()
                            except StorageFullError as exc:
                                # Not committed: answer its callers, go on with a core
                                # rebuilt from the store (engine/storage_full.py).
                                core, fx = core.recover_from_storage_full(exc)
                                self.cores[index] = core
                            except Exception as exc:
                                # Not committed: go on with a core rebuilt from the store
                                # that applies the batch's items one at a time and sets
                                # aside the one that fails (engine/poison.py). It raises
                                # again when failures look systemic: the engine then stops.
                                core, fx = core.recover_from_failure(exc)
                                self.cores[index] = core
                            self._release(core, fx)
                            busy = True
                if busy:
                    continue
                self._wait_idle()
        except BaseException as exc:  # the engine must not die silently
            self._failure = exc
            log.exception("engine thread failed", hub=self.name)
            # Nobody will answer the calls in flight: fail them rather than leave them
            # hanging; later calls fail in submit().
            try:
                with self._engine_lock:
                    for core in self.cores:
                        for caller in core.abandon_callers():
                            self._fail(caller)
            except Exception:
                log.exception("failing the calls in flight failed", hub=self.name)

    def _wait_idle(self) -> None:
        with self._engine_lock:
            dues = [d for d in (core.next_due() for core in self.cores) if d is not None]
            if self._manual is not None and dues and self._manual.auto_advance and self._idle():
                self._manual.set(min(dues))
                return
        if self._manual is not None:
            self._wake.wait(0.5 if dues else 1.0)
            return
        timeout = 1.0
        if dues:
            timeout = max(0.0, min(timeout, (min(dues) - self.clock()).total_seconds()))
        if timeout > 0:
            self._wake.wait(timeout)

    def _idle(self) -> bool:
        with self._in_flight_lock:
            if self._in_flight:
                return False
        with self._engine_lock:
            return not any(core.has_work() for core in self.cores)

    def _release(self, core: PartitionCore, fx: Effects) -> None:
        # Messages and activities first, replies last: a client that gets its answer and
        # then checks wait_idle() must not see the hub idle before the work it caused.
        for destination, messages in fx.messages.items():
            self.cores[destination].submit_messages(core.index, messages)
        for source, upto in fx.acks.items():
            self.cores[source].submit_ack(core.index, upto)
        if fx.activities:
            with self._in_flight_lock:
                self._in_flight += len(fx.activities)
            for task in fx.activities:
                self._pool.submit(self._run_activity, task)
        for reply_to, result in fx.replies:
            if isinstance(reply_to, Future) and not reply_to.done():
                if isinstance(result, Reply):
                    reply_to.set_exception(result.error)
                else:
                    reply_to.set_result(result)

    def _run_activity(self, task: ActivityTask) -> None:
        try:
            result = execute_activity(self.registry, task)
            self.cores[task.partition].submit_activity_results([result])
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
            self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no partition has work and no activity runs (for tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle():
                return True
            time.sleep(0.005)
        return False

    def shutdown(self) -> None:
        """Stop the hub (as ``Client.shutdown_hub`` does)."""
        self.close()

    def close(self) -> None:
        """Stop the engine and the activity pool, then close every partition's store."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for core in self.cores:
            core.close()
