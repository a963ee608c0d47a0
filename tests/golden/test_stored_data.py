"""A store written by an earlier version opens, reads back and runs on with the current code.

``store_v3/`` is a two-partition LMDB hub (format version 3) left at rest by
``make_store_fixture.py`` with ``store_workload``'s instances, entities, timers and stored
client replies (its README lists them). Each test opens a copy with the synchronous
driver (no Ray) and checks, in turn: the raw rows decode and the current code encodes
them to the very bytes stored; every instance, entity, timer and inbox reads back as it
was left; retried client requests get their stored replies; and every waiting instance
runs to its end once given what it waits for. A change that breaks reading users' data
dirs fails here, not in production.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import store_workload as w
from partition_driver import T0, Cluster

from duraray.entities.scheduler import EntityRecord, OperationMessage
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.status_counts import count_records
from duraray.runtime.engine.store import LmdbStore

Status = h.OrchestrationStatus

FIXTURE = Path(__file__).resolve().parent / "store_v3"
#: the format version the fixture was written in (the current code may be newer)
STORED_FORMAT = 3

#: Execution ids as the generator drew them (``uuid.UUID(int=n, version=4)``, n counting
#: from 1), in the order the partitions created the executions.
EXECUTIONS = {
    iid: uuid.UUID(int=n, version=4).hex
    for n, iid in enumerate(
        [
            w.COMPLETED,
            w.FAILED,
            w.AWAITING_EVENT,
            w.SUSPENDED,
            w.AWAITING_TIMER,
            w.PARENT,
            w.LOCKER,
            w.DELAYED,
            w.CHILD,
        ],
        start=3,  # 1 and 2 went to ids drawn before the first start
    )
}
SECTION = f"{w.LOCKER}#{EXECUTIONS[w.LOCKER]}#0"  # LOCKER's critical section

#: each instance's stored history, by event type
HISTORIES: dict[str, list[str]] = {
    w.COMPLETED: [
        "OrchestratorStarted",
        "ExecutionStarted",
        "TaskScheduled",
        "OrchestratorStarted",
        "TaskCompleted",
        "ExecutionCompleted",
    ],
    w.FAILED: [
        "OrchestratorStarted",
        "ExecutionStarted",
        "TaskScheduled",
        "OrchestratorStarted",
        "TaskFailed",
        "ExecutionCompleted",
    ],
    w.AWAITING_EVENT: ["OrchestratorStarted", "ExecutionStarted"],
    w.AWAITING_TIMER: ["OrchestratorStarted", "ExecutionStarted", "TimerCreated"],
    w.PARENT: ["OrchestratorStarted", "ExecutionStarted", "SubOrchestrationInstanceCreated"],
    w.CHILD: ["OrchestratorStarted", "ExecutionStarted"],
    w.SUSPENDED: ["OrchestratorStarted", "ExecutionStarted", "ExecutionSuspended"],
    w.LOCKER: [
        "OrchestratorStarted",
        "ExecutionStarted",
        "EntityLockRequested",
        "OrchestratorStarted",
        "EntityLockGranted",
        "EntityOperationCalled",
        "OrchestratorStarted",
        "EntityOperationCompleted",
    ],
    w.DELAYED: [],  # its ExecutionStarted waits in the inbox for the delayed start
}

STATUSES = {
    w.COMPLETED: Status.COMPLETED,
    w.FAILED: Status.FAILED,
    w.AWAITING_EVENT: Status.RUNNING,
    w.AWAITING_TIMER: Status.RUNNING,
    w.PARENT: Status.RUNNING,
    w.CHILD: Status.RUNNING,
    w.SUSPENDED: Status.SUSPENDED,
    w.LOCKER: Status.RUNNING,
    w.DELAYED: Status.PENDING,
}


@pytest.fixture
def fixture_copy(tmp_path: Path) -> Path:
    """A copy of the fixture (opening a store writes to its directory)."""
    shutil.copytree(FIXTURE / "hub", tmp_path / "hub")
    return tmp_path


@pytest.fixture
def hub(fixture_copy: Path) -> Iterator[Cluster]:
    """The fixture's hub opened by the current code, its clock where the writer left it."""
    with Cluster(
        w.make_workload_registry(), partitions=w.PARTITIONS, data_dir=fixture_copy
    ) as cluster:
        yield cluster


def _rows(directory: Path, db: str) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of every row of ``db``, read without opening a partition."""
    rows = []
    for index in range(w.PARTITIONS):
        with LmdbStore(directory / "hub" / f"p{index}", sync=False) as store:
            rows += [(index, key, value) for key, value in store.scan(db)]
    return rows


def _entity(hub: Cluster, entity_id: str) -> EntityRecord:
    record = hub.call("get_entity", partition=w.partition_of(entity_id), entity_id=entity_id)
    assert record is not None, entity_id
    return record


def _retry_everything(hub: Cluster) -> dict[str, Any]:
    """Send every request of the fixture again, as a client that never saw the replies."""
    tokens = {}
    for name, instance_id, value, extra in w.STARTS:
        tokens[f"start-{instance_id}"] = hub.start(name, instance_id, value, **extra)
    for request_id, op, args in w.REQUESTS:
        key = args.get("instance_id") or args["entity_id"]
        tokens[request_id] = hub.submit(
            op, partition=w.partition_of(key), request_id=request_id, **args
        )
    hub.run()
    return {request_id: hub.reply(token) for request_id, token in tokens.items()}


# -- the stored bytes ------------------------------------------------------------------------


def test_the_fixture_is_a_small_format_3_hub(fixture_copy: Path) -> None:
    """Both partitions carry the meta of a format-3 store of a two-partition hub."""
    meta: dict[int, dict[str, Any]] = {}
    for index, key, value in _rows(fixture_copy, "meta"):
        meta.setdefault(index, {})[key.decode()] = codec.decode(value)
    for index in range(w.PARTITIONS):
        expected = {"hub": "hub", "partition": index, "partition_count": w.PARTITIONS}
        assert expected.items() <= meta[index].items()
        assert STORED_FORMAT == meta[index]["format_version"]
    assert r.FORMAT_VERSION >= STORED_FORMAT
    size = sum(p.stat().st_size for p in (FIXTURE / "hub").rglob("*") if p.is_file())
    assert size < 512 * 1024, "keep the committed fixture small"


def test_every_stored_row_decodes_and_re_encodes_to_the_same_bytes(fixture_copy: Path) -> None:
    """The current codec reads every record and payload of the fixture and writes exactly
    the bytes stored: records and events keep their positional layout, payloads their
    msgpack form. (A deliberate format change belongs in a new ``store_v<N>``.)"""
    record_types: dict[str, type] = {
        "instances": r.InstanceRecord,
        "timers": r.TimerRow,
        "activities": r.ActivityTask,
        "outbox": r.Message,
        "entities": EntityRecord,
    }
    checked = 0
    for db in ("instances", "timers", "activities", "outbox", "entities"):
        for _, _, value in _rows(fixture_copy, db):
            decoded: Any = codec.decode_record(record_types[db], value)
            assert value == codec.encode_record(decoded), (db, decoded)
            checked += 1
    for db in ("history", "inbox"):
        for _, _, value in _rows(fixture_copy, db):
            event = codec.decode_event(value)
            assert value == codec.encode_event(event), (db, event)
            checked += 1
    for db in ("meta", "dedup"):
        for _, key, value in _rows(fixture_copy, db):
            if db == "dedup" and key[:1] == b"t":  # the time index: empty values
                assert b"" == value
                continue
            assert value == codec.encode(codec.decode(value)), (db, key)
            checked += 1
    for db in ("by_created", "live"):
        assert all(b"" == value for _, _, value in _rows(fixture_copy, db))
    expected_minimum = 60
    assert checked >= expected_minimum


# -- what the current code reads -------------------------------------------------------------


def test_instances_read_back_as_stored(hub: Cluster) -> None:
    """Every instance has its stored status, payloads and history."""
    for iid, status in STATUSES.items():
        state = hub.state(iid)
        assert status == state.status, iid
        assert EXECUTIONS[iid] == state.execution_id, iid
        assert T0 == state.created_at, iid
        history = hub.history(iid)
        assert HISTORIES[iid] == [type(e).__name__ for e in history], iid
        assert all(T0 == e.timestamp for e in history), iid
        if history:
            started = history[1]
            assert isinstance(started, h.ExecutionStarted)
            assert (iid, EXECUTIONS[iid]) == (started.instance_id, started.execution_id)

    completed = hub.state(w.COMPLETED)
    assert "hello world" == codec.decode(completed.output)
    assert {"greeting": "world"} == codec.decode(completed.custom_status)
    assert w.TAGS == completed.tags
    assert T0 == completed.completed_at

    failure = hub.state(w.FAILED).failure
    assert failure is not None and failure.inner is not None
    expected_failure = ("duraray.TaskFailedError", "ValueError", "exploded: on purpose")
    assert expected_failure == (failure.error_type, failure.inner.error_type, failure.inner.message)
    task_failed = hub.history(w.FAILED)[4]
    assert isinstance(task_failed, h.TaskFailed)
    assert "exploded: on purpose" == task_failed.failure.message

    assert {"sleeping": 10} == codec.decode(hub.state(w.AWAITING_TIMER).custom_status)
    timer = hub.history(w.AWAITING_TIMER)[2]
    assert isinstance(timer, h.TimerCreated)
    assert w.TIMER_DUE == timer.fire_at

    created = hub.history(w.PARENT)[2]
    assert isinstance(created, h.SubOrchestrationInstanceCreated)
    assert ("await_approval", w.CHILD, "bob") == (
        created.name,
        created.instance_id,
        codec.decode(created.input),
    )
    child = hub.state(w.CHILD)
    expected_parent = (w.PARENT, EXECUTIONS[w.PARENT], 0)
    assert expected_parent == (
        child.parent_instance_id,
        child.parent_execution_id,
        child.parent_task_id,
    )

    suspended = hub.state(w.SUSPENDED)
    expected_inbox = 1  # the "approve" event, held until resume
    assert expected_inbox == suspended.inbox_length
    suspension = hub.history(w.SUSPENDED)[2]
    assert isinstance(suspension, h.ExecutionSuspended)
    assert "golden" == suspension.reason

    granted = hub.history(w.LOCKER)[4]
    assert isinstance(granted, h.EntityLockGranted)
    assert (SECTION, [w.SAFE]) == (granted.critical_section_id, granted.lock_set)

    delayed = hub.state(w.DELAYED)
    assert w.DELAYED_START == delayed.scheduled_start_at
    assert 1 == delayed.inbox_length


def test_entities_read_back_as_stored(hub: Cluster) -> None:
    """TALLY has its state; SAFE is locked by LOCKER's critical section, one signal queued."""
    tally = _entity(hub, w.TALLY)
    assert {"total": 3, "applied": [1, 2]} == codec.decode(tally.state)
    assert (None, None, []) == (tally.locked_by, tally.lock_owner, tally.queue)
    assert T0 == tally.last_modified

    safe = _entity(hub, w.SAFE)
    assert {"total": 5, "applied": [5]} == codec.decode(safe.state)
    assert (w.LOCKER, SECTION) == (safe.locked_by, safe.lock_owner)
    expected_queue = [OperationMessage("add", codec.encode(100))]
    assert expected_queue == safe.queue


def test_timers_inboxes_and_indexes_read_back_as_stored(hub: Cluster) -> None:
    """The delayed start, scheduled signal and durable timer wait as rows of ``timers``;
    nothing is left in flight between partitions or to activities."""
    rows = [
        codec.decode_record(r.TimerRow, value)
        for core in hub.cores
        for _, value in core.store.scan("timers")
    ]
    expected_timers = [
        (w.DELAYED_START, "start", w.DELAYED),
        (w.SIGNAL_DUE, "signal", w.TALLY),
        (w.TIMER_DUE, "timer", w.AWAITING_TIMER),
    ]
    assert expected_timers == sorted((row.fire_at, row.kind, row.instance_id) for row in rows)
    (signal,) = [row for row in rows if row.kind == "signal"]
    assert signal.body is not None
    # The entity message as entity_host packs it: an operation with no caller, no lock.
    expected_body = ["op", "add", codec.encode(w.SIGNAL_LATER), None, None, None, None]
    assert expected_body == codec.decode(signal.body)

    live = {core.index: {k.decode() for k, _ in core.store.scan("live")} for core in hub.cores}
    running = {iid for iid, status in STATUSES.items() if not status.is_terminal}
    assert running == live[0] | live[1]
    assert all(w.partition_of(iid) == index for index, ids in live.items() for iid in ids)
    expected_created = len(STATUSES)
    assert expected_created == sum(core.store.count("by_created") for core in hub.cores)
    inboxes = sorted(
        type(codec.decode_event(v)).__name__ for c in hub.cores for _, v in c.store.scan("inbox")
    )
    assert ["EventRaised", "ExecutionStarted"] == inboxes
    for core in hub.cores:
        assert not core.store.count("outbox")
        assert not core.store.count("activities")


def test_retried_requests_get_their_stored_replies(hub: Cluster) -> None:
    """Every stored reply answers its request's retry, and nothing is applied again: the
    completed instance is not started anew, no signal adds twice, no event is raised twice."""
    before = {iid: hub.history(iid) for iid in STATUSES}
    replies = _retry_everything(hub)
    assert w.STORED_REPLIES == replies
    after = {iid: hub.history(iid) for iid in STATUSES}
    assert before == after
    assert {iid: hub.state(iid).status for iid in STATUSES} == STATUSES
    assert 1 == hub.state(w.SUSPENDED).inbox_length
    assert {"total": 3, "applied": [1, 2]} == codec.decode(_entity(hub, w.TALLY).state)
    assert 1 == len(_entity(hub, w.SAFE).queue)


# -- running on ------------------------------------------------------------------------------


def test_waiting_instances_run_to_completion(hub: Cluster) -> None:
    """Given their events, their resume and the time they wait for, every instance ends,
    the lock is released to the queued signal, and the scheduled signal fires once."""
    events = [(w.AWAITING_EVENT, "approve", "yes"), (w.CHILD, "approve", "ok"), (w.LOCKER, "go", 7)]
    for iid, name, data in events:
        hub.call("raise_event", instance_id=iid, name=name, data=codec.encode(data))
    assert hub.call("resume", instance_id=w.SUSPENDED) is True

    assert "hello alice: yes" == hub.output(w.AWAITING_EVENT)
    assert "hello bob: ok" == hub.output(w.CHILD)
    assert ["parent", "hello bob: ok"] == hub.output(w.PARENT)
    assert "hello carol: yes" == hub.output(w.SUSPENDED)
    assert [5, 12] == hub.output(w.LOCKER)
    safe = _entity(hub, w.SAFE)
    assert {"total": 112, "applied": [5, 7, 100]} == codec.decode(safe.state)
    assert (None, None, []) == (safe.locked_by, safe.lock_owner, safe.queue)
    # Nothing is due yet: the time-bound work still waits.
    assert Status.RUNNING == hub.state(w.AWAITING_TIMER).status
    assert Status.PENDING == hub.state(w.DELAYED).status
    assert {"total": 3, "applied": [1, 2]} == codec.decode(_entity(hub, w.TALLY).state)

    hub.now = w.TIMER_DUE
    hub.run()
    assert w.TIMER_DUE.isoformat() == hub.output(w.AWAITING_TIMER)
    assert "hello later" == hub.output(w.DELAYED)
    expected_tally = {"total": 3 + w.SIGNAL_LATER, "applied": [1, 2, w.SIGNAL_LATER]}
    assert expected_tally == codec.decode(_entity(hub, w.TALLY).state)

    hub.advance(timedelta(hours=2).total_seconds())  # past every stored reply's retention
    hub.run()
    assert expected_tally == codec.decode(_entity(hub, w.TALLY).state)
    for iid, status in STATUSES.items():
        final = hub.state(iid).status
        expected = Status.FAILED if status is Status.FAILED else Status.COMPLETED
        assert expected == final, iid
    assert "hello world" == hub.output(w.COMPLETED)
    for core in hub.cores:
        for db in ("timers", "live", "inbox", "outbox", "activities"):
            assert not core.store.count(db), (core.index, db)


def test_the_upgrade_counts_every_stored_instance_by_status(hub: Cluster) -> None:
    """A format-3 store has no status counters: opening it counts its instances once,
    and the counters then follow the instances as they run to completion."""
    expected = Counter(status.value for status in STATUSES.values())
    counts = Counter()
    for index in range(w.PARTITIONS):
        counts.update(hub.call("count", partition=index))
    assert expected == counts
    hub.run()
    for index in range(w.PARTITIONS):
        stored = count_records(hub.stores[index].scan("instances"))
        assert stored == hub.call("count", partition=index)
