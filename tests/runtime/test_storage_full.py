"""Disk full is an error: a commit that does not fit answers StorageFullError, not a crash.

Store level: a commit failing with ENOSPC or EIO (as LMDB reports a short write on a full
filesystem) raises ``StorageFullError`` and writes nothing, and space freed by a commit is
usable by the next one even at ``max_map_size``. Hub level (in process, LMDB with a 1 MiB
``max_map_size``): the caller of a write that does not fit gets the error, nothing of it
is stored, reads and waits go on, work that did not fit is retried once space is freed
(without re-running its activity). HTTP's 507 is tested in tests/http/test_http_storage_full.py.
The in-process engine, if it dies, fails the calls in flight and later ones instead of leaving them hanging.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

import duraray as dr
from duraray.runtime.engine.store import LmdbStore, WriteBatch
from duraray.runtime.inprocess import InProcessHub
from duraray.testing import run_in_process

TIMEOUT = 10.0
MiB = 1 << 20


def check(expected: Any, actual: Any) -> None:
    assert expected == actual


def _batch(*rows: tuple[bytes, bytes]) -> WriteBatch:
    wb = WriteBatch()
    for key, value in rows:
        wb.put("instances", key, value)
    return wb


# -- the store ---------------------------------------------------------------------------


class _EnvFailingCommits:
    """Wraps an LMDB environment so that every write transaction fails at its commit
    with ``error`` (the transaction is aborted: nothing of it is written)."""

    def __init__(self, env: Any, error: lmdb.Error) -> None:
        self._env = env
        self.error: lmdb.Error | None = error

    def begin(self, write: bool = False, **kwargs: Any) -> Any:
        txn = self._env.begin(write=write, **kwargs)
        if not write or self.error is None:
            return txn
        return _FailingCommit(txn, self.error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


class _FailingCommit:
    def __init__(self, txn: Any, error: lmdb.Error) -> None:
        self._txn = txn
        self._error = error

    def __enter__(self) -> Any:
        return self._txn

    def __exit__(self, *exc: object) -> None:
        self._txn.abort()
        if exc[0] is None:
            raise self._error


class _Statvfs:
    """What ``os.statvfs`` says about a filesystem with ``free`` bytes available."""

    def __init__(self, free: int) -> None:
        self.f_bavail, self.f_frsize = free // 4096, 4096


@pytest.fixture
def disk_nearly_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every filesystem reports 8 KiB free (what a full disk shows)."""
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(8192))


def _eio_with_code() -> lmdb.Error:
    error = lmdb.Error("mdb_txn_commit: Input/output error")
    error.code = errno.EIO  # type: ignore[attr-defined]  # as the C extension sets it
    return error


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: lmdb.DiskError("mdb_txn_commit: No space left on device"),
        _eio_with_code,
        lambda: lmdb.Error("mdb_txn_commit: Input/output error"),
    ],
    ids=["ENOSPC", "EIO-code", "EIO-message"],
)
def test_commit_failing_for_lack_of_space_is_storage_full(
    tmp_path: Path, make_error: Callable[[], lmdb.Error], disk_nearly_full: None
) -> None:
    """ENOSPC, or the EIO of a short write, at commit: StorageFullError, nothing written,
    and the store takes the next commit once the disk has room again."""
    with LmdbStore(tmp_path / "p", sync=False) as store:
        store.commit(_batch((b"before", b"1")))
        failing = _EnvFailingCommits(store._env, make_error())
        store._env = failing
        with pytest.raises(dr.StorageFullError, match="no space left on device") as info:
            store.commit(_batch((b"lost", b"2")))
        check(True, str(tmp_path / "p") in str(info.value))
        check(True, "8192 bytes free" in str(info.value))
        check(True, isinstance(info.value, dr.DurableError))
        check((b"1", None), (store.get("instances", b"before"), store.get("instances", b"lost")))
        failing.error = None  # space is back
        store.commit(_batch((b"after", b"3")))
        check(b"3", store.get("instances", b"after"))


def test_eio_with_plenty_of_free_space_points_at_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO at commit while the disk has room: still refused as StorageFullError (nothing
    written, the partition goes on), but the message says the disk may be failing."""
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(100 << 30))
    with LmdbStore(tmp_path / "p", sync=False) as store:
        store._env = _EnvFailingCommits(store._env, _eio_with_code())
        with pytest.raises(dr.StorageFullError, match="disk may be failing"):
            store.commit(_batch((b"k", b"v")))


def test_other_lmdb_errors_are_not_storage_full(tmp_path: Path) -> None:
    """A corrupt page is not a full disk: the LMDB error surfaces as it is."""
    with LmdbStore(tmp_path / "p", sync=False) as store:
        store._env = _EnvFailingCommits(store._env, lmdb.CorruptedError("mdb_txn_commit"))
        with pytest.raises(lmdb.CorruptedError):
            store.commit(_batch((b"k", b"v")))


def test_space_freed_by_a_commit_serves_the_next_one(tmp_path: Path) -> None:
    """At max_map_size, a value that fits only in pages the previous commit freed is
    stored (LMDB reuses freed pages only from the transaction after next)."""
    big = b"x" * (600 * 1024)
    with LmdbStore(tmp_path / "p", sync=False, max_map_size=MiB) as store:
        store.commit(_batch((b"a", big)))
        with pytest.raises(dr.StorageFullError, match="max_map_size"):
            store.commit(_batch((b"b", big)))
        wb = WriteBatch()
        wb.delete("instances", b"a")
        store.commit(wb)
        store.commit(_batch((b"b", big)))
        check((None, len(big)), (store.get("instances", b"a"), len(store.get("instances", b"b"))))


def test_map_starts_at_max_map_size_when_that_is_smaller(tmp_path: Path) -> None:
    """A max_map_size below the default initial map needs no map_size of its own."""
    with LmdbStore(tmp_path / "p", sync=False, max_map_size=2 * MiB) as store:
        stats = store.stats()
    check((2 * MiB, 2 * MiB), (stats["map_size"], stats["max_map_size"]))


# -- a hub on a small store ----------------------------------------------------------------

app = dr.App("storage-full", partitions=1)
executions: list[str] = []


@app.activity
def make_text(ctx: dr.ActivityContext, size: int) -> str:
    executions.append(ctx.orchestration_id)
    return "y" * size


@app.orchestration
def echo_length(ctx: dr.OrchestrationContext, text: str):
    return len(text)


@app.orchestration
def text_length(ctx: dr.OrchestrationContext, size: int):
    text = yield ctx.call_activity(make_text, input=size)
    return len(text)


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@pytest.fixture
def small_hub(tmp_path: Path) -> Iterator[dr.Client]:
    """The app in process on LMDB with a 1 MiB max_map_size."""
    executions.clear()
    with run_in_process(app, data_dir=str(tmp_path), max_map_size=MiB, fsync=False) as client:
        yield client


def _hub(client: dr.Client) -> InProcessHub:
    return client.hub_runtime  # type: ignore[attr-defined,no-any-return]


def _until(probe: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s")
        time.sleep(0.005)
    return value


def test_write_that_does_not_fit_fails_and_the_partition_goes_on(small_hub: dr.Client) -> None:
    """The caller gets StorageFullError; nothing of the instance is stored; reads, a wait
    registered before and small writes after all work, on a core rebuilt from the store."""
    client = small_hub
    done = client.schedule_new_orchestration(echo_length, input="small", instance_id="done")
    check(5, client.wait_for_orchestration_completion(done, timeout=TIMEOUT).output)
    waiter = client.schedule_new_orchestration(wait_go, instance_id="waiter")
    waited: list[dr.OrchestrationState] = []
    thread = threading.Thread(
        target=lambda: waited.append(client.wait_for_orchestration_completion(waiter, timeout=30))
    )
    thread.start()
    core_before = _hub(client).cores[0]
    _until(lambda: "waiter" in core_before.waits)

    with pytest.raises(dr.StorageFullError, match=r"partition p0 .* max_map_size") as info:
        client.schedule_new_orchestration(echo_length, input="x" * 700_000, instance_id="big")
    check(True, "could not commit" in str(info.value))

    core = _hub(client).cores[0]
    check((False, 1), (core is core_before, core.counters["storage_full"]))
    check(None, client.get_orchestration_state("big"))  # not half-stored
    with pytest.raises(dr.InstanceNotFoundError):
        client.get_orchestration_history("big")
    page = client.query_instances()
    check(["done", "waiter"], sorted(s.instance_id for s in page.items))
    check(dr.OrchestrationStatus.RUNNING, client.get_orchestration_state("waiter").runtime_status)

    small = client.schedule_new_orchestration(echo_length, input="fits", instance_id="small")
    check(4, client.wait_for_orchestration_completion(small, timeout=TIMEOUT).output)
    client.raise_orchestration_event(waiter, "go", data="now")
    thread.join(TIMEOUT)
    check(["now"], [s.output for s in waited])


def test_full_disk_fails_writes_until_space_returns(tmp_path: Path, disk_nearly_full: None) -> None:
    """A disk that has no room (EIO from LMDB's short write): the write fails with the
    reason, nothing is stored, and writes succeed again as soon as the disk has room."""
    with run_in_process(app, data_dir=str(tmp_path), fsync=False) as client:
        store = _hub(client).cores[0].store
        failing = _EnvFailingCommits(store._env, _eio_with_code())
        store._env = failing  # type: ignore[attr-defined]
        with pytest.raises(dr.StorageFullError, match="no space left on device"):
            client.schedule_new_orchestration(echo_length, input="a", instance_id="a")
        check(None, client.get_orchestration_state("a"))
        failing.error = None
        iid = client.schedule_new_orchestration(echo_length, input="b", instance_id="b")
        check(1, client.wait_for_orchestration_completion(iid, timeout=TIMEOUT).output)


def test_work_that_did_not_fit_is_retried_once_space_is_freed(small_hub: dr.Client) -> None:
    """An activity result too large for the store is held, not lost and not re-run: the
    instance keeps running (reads answer meanwhile) and completes once a purge frees
    space; the activity ran once."""
    client = small_hub
    filler = client.schedule_new_orchestration(
        echo_length, input="x" * 350_000, instance_id="filler"
    )
    client.wait_for_orchestration_completion(filler, timeout=TIMEOUT)
    worker = client.schedule_new_orchestration(text_length, input=300_000, instance_id="worker")
    _until(lambda: _hub(client).cores[0].counters.get("storage_full", 0) >= 1)

    state = client.get_orchestration_state(worker)
    check(dr.OrchestrationStatus.RUNNING, state.runtime_status)
    check(1, client.purge_orchestration(filler).deleted_instance_count)
    final = client.wait_for_orchestration_completion(worker, timeout=TIMEOUT)
    check((dr.OrchestrationStatus.COMPLETED, 300_000), (final.runtime_status, final.output))
    check(["worker"], executions)


# -- the in-process engine dies ------------------------------------------------------------


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``call`` in a thread; the list gets what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_calls_fail_when_the_in_process_engine_dies() -> None:
    """An exception escaping the engine thread fails the call in flight, a wait in
    flight and every later call with a clear error; none of them hangs."""
    with run_in_process(app, partitions=2) as client:
        hub = _hub(client)
        waiter = client.schedule_new_orchestration(wait_go, instance_id="w")
        waiting, wait_errors = _in_thread(
            lambda: client.wait_for_orchestration_completion(waiter, timeout=3 * TIMEOUT)
        )
        core = hub.cores[client._partition(waiter)]
        _until(lambda: waiter in core.waits)

        def boom() -> Any:
            raise RuntimeError("injected engine failure")

        # Outside a batch: a batch that raises is rebuilt and isolated (poison.py); an
        # exception in the engine's own loop is what kills it.
        core.has_work = boom  # type: ignore[method-assign]
        raising, raise_errors = _in_thread(lambda: client.raise_orchestration_event(waiter, "go"))
        raising.join(TIMEOUT)
        waiting.join(TIMEOUT)
        check((False, False), (raising.is_alive(), waiting.is_alive()))
        check([RuntimeError, RuntimeError], [type(e) for e in raise_errors + wait_errors])
        message = str(raise_errors[0])
        check((True, True), ("engine thread failed" in message, "injected" in message))
        with pytest.raises(RuntimeError, match="engine thread failed"):
            client.get_orchestration_state(waiter)
