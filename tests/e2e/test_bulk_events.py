"""End to end: ``raise_orchestration_events`` delivers many external events in a few requests,
reports each event's own outcome, keeps the order per instance and checks every event
before sending any."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

import pytest

import duraray as dr
from duraray.runtime.client import transport
from duraray.runtime.client.transport import Router

from .helpers import TIMEOUT

app = dr.App("e2e-bulk-events")

Status = dr.OrchestrationStatus


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def wait_two(ctx: dr.OrchestrationContext):
    first = yield ctx.wait_for_external_event("item")
    second = yield ctx.wait_for_external_event("item")
    return [first, second]


@app.orchestration
def done_at_once(ctx: dr.OrchestrationContext):
    return "done"


def _start(client: dr.Client, orchestrator: Any, ids: list[str]) -> None:
    client.schedule_new_orchestrations(orchestrator, [None] * len(ids), instance_ids=ids)


def _raised(client: dr.Client, iid: str) -> list[Any]:
    """The data of the events the instance's history holds."""
    history = client.get_orchestration_history(iid)
    return [e.input for e in history if isinstance(e, dr.EventRaised)]


def test_delivered_events_complete_their_instances(client):
    """One call delivers an event to each waiting instance; each completes with its data."""
    ids = [f"go-{i}" for i in range(20)]
    _start(client, wait_go, ids)

    results = client.raise_orchestration_events((iid, "go", i) for i, iid in enumerate(ids))

    expected = [None] * len(ids)
    assert expected == results
    states = client.wait_for_orchestrations(ids, timeout=TIMEOUT)
    expected_outputs = list(range(len(ids)))
    assert expected_outputs == [s.output for s in states]


def test_unknown_and_finished_instances_are_reported_per_event(client):
    """An unknown id and a finished instance get their own error; the other events still land."""
    _start(client, wait_go, ["w-1", "w-2"])
    _start(client, done_at_once, ["finished"])
    client.wait_for_orchestration_completion("finished", timeout=TIMEOUT)

    results = client.raise_orchestration_events(
        [("w-1", "go", "a"), ("nobody", "go"), ("finished", "go", 1), ("w-2", "go", "b")]
    )

    expected_types = [type(None), dr.InstanceNotFoundError, dr.InstanceStateError, type(None)]
    assert expected_types == [type(r) for r in results]
    assert "nobody" in str(results[1])
    assert "finished" in str(results[2])
    states = client.wait_for_orchestrations(["w-1", "w-2"], timeout=TIMEOUT)
    expected = ["a", "b"]
    assert expected == [s.output for s in states]
    assert (
        dr.OrchestrationStatus.COMPLETED
        == client.get_orchestration_state("finished").runtime_status
    )


def test_events_to_one_instance_arrive_in_the_order_given(client, monkeypatch):
    """Two events to one instance in one call, far apart in the list (their partition's
    events fill several requests), are received in the order of the list."""
    monkeypatch.setattr(transport, "BATCH_CHUNK", 4)
    ids = [f"two-{i}" for i in range(40)]
    _start(client, wait_two, ids)

    events = [(iid, "item", f"{iid}:first") for iid in ids]
    events += [(iid, "item", f"{iid}:second") for iid in reversed(ids)]
    results = client.raise_orchestration_events(events)

    assert [None] * len(events) == results
    states = client.wait_for_orchestrations(ids, timeout=TIMEOUT)
    expected = [[f"{iid}:first", f"{iid}:second"] for iid in ids]
    assert expected == [s.output for s in states]


def test_two_item_tuples_carry_no_data(client):
    """``(instance_id, event_name)`` delivers the event with None as its data."""
    _start(client, wait_go, ["nodata"])

    results = client.raise_orchestration_events([["nodata", "GO"]])

    assert [None] == results
    state = client.wait_for_orchestration_completion("nodata", timeout=TIMEOUT)
    assert state.output is None
    assert Status.COMPLETED == state.runtime_status


def test_no_events_send_nothing(client):
    """An empty iterable returns an empty list."""
    assert [] == client.raise_orchestration_events([])


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        (("", "go", 1), ValueError, "events[2]: instance id must not be empty"),
        ((7, "go", 1), TypeError, "events[2]: instance id must be a string"),
        (("v-1", "", 1), ValueError, "events[2]: event name must be a non-empty string"),
        (("v-1", "x" * 257, 1), ValueError, "events[2]: event name"),
        (("v-1", "go", object()), dr.SerializationError, "events[2]: event data"),
        (("v-1",), TypeError, "events[2]: expected an (instance_id, event_name)"),
        (("v-1", "go", 1, 2), TypeError, "events[2]: expected an (instance_id, event_name)"),
        ("v-1", TypeError, "events[2]: expected an (instance_id, event_name)"),
        (None, TypeError, "events[2]: expected"),
    ],
)
def test_a_bad_event_names_its_index_and_nothing_is_sent(client, bad, error, words):
    """A malformed event anywhere in the list raises naming its index; no event is delivered."""
    _start(client, wait_go, ["v-1"])

    with pytest.raises(error) as caught:
        client.raise_orchestration_events([("v-1", "go", "first"), ("v-1", "go", "again"), bad])

    assert words in str(caught.value)
    client.hub_runtime.wait_idle(TIMEOUT)
    assert [] == _raised(client, "v-1")
    assert Status.RUNNING == client.get_orchestration_state("v-1").runtime_status


def test_oversized_event_data_is_refused_before_sending(auto_clock):
    """Event data over max_payload_bytes is refused at the call site, naming the index."""
    from duraray.testing import run_in_process

    with run_in_process(app, clock=auto_clock, max_payload_bytes=1024) as client:
        _start(client, wait_go, ["big"])
        with pytest.raises(dr.SerializationError, match=r"events\[1\]: event data"):
            client.raise_orchestration_events([("big", "go", 1), ("big", "go", "x" * 2000)])
        client.hub_runtime.wait_idle(TIMEOUT)
        assert [] == _raised(client, "big")


def test_events_must_be_an_iterable_of_tuples(client):
    """A single tuple, a string or a dict in place of the list is a TypeError."""
    for wrong in ("abc", {"i": ("i", "go")}):
        with pytest.raises(TypeError, match="events must be an iterable"):
            client.raise_orchestration_events(wrong)
    with pytest.raises(TypeError, match=r"events\[0\]"):
        client.raise_orchestration_events(("i", "go", 1))


def test_a_large_batch_is_delivered(client):
    """5,000 events (several requests per partition) reach 5,000 instances."""
    ids = [f"many-{i}" for i in range(5000)]
    _start(client, wait_go, ids)

    results = client.raise_orchestration_events((iid, "go", iid) for iid in ids)

    assert [None] * len(ids) == results
    states = client.wait_for_orchestrations(ids, timeout=60)
    assert ids == [s.output for s in states]


def test_async_client_raises_events_in_bulk(client):
    """AsyncClient.raise_orchestration_events is the same call as a coroutine."""
    _start(client, wait_go, ["async-1"])

    async def scenario() -> list[Any]:
        async with dr.AsyncClient(client) as aclient:
            return await aclient.raise_orchestration_events(
                [("async-1", "go", 5), ("async-none", "go", 6)]
            )

    results = asyncio.run(scenario())

    assert results[0] is None
    assert isinstance(results[1], dr.InstanceNotFoundError)
    expected = 5
    assert expected == client.wait_for_orchestration_completion("async-1", timeout=TIMEOUT).output


# -- the router beneath: requests and their failures -------------------------------------


class _ScriptedTransport:
    """Answers each batch request at once: per operation None, or the whole request fails
    with ``fail[partition]``; records every request it was given."""

    def __init__(self, partitions: int, fail: dict[int, BaseException]) -> None:
        self.partition_count = partitions
        self.fail = fail
        self.sent: list[tuple[int, int]] = []

    def submit(
        self, partition: int, op: str, args: dict[str, Any], request_id: str | None = None
    ) -> Future[Any]:
        future: Future[Any] = Future()
        self.sent.append((partition, len(args["ops"])))
        if partition in self.fail:
            future.set_exception(self.fail[partition])
        else:
            future.set_result([None] * len(args["ops"]))
        return future


def _ops(count: int, data: bytes = b"", prefix: str = "i") -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (f"{prefix}{n}", "raise_event", {"instance_id": f"{prefix}{n}", "data": data})
        for n in range(count)
    ]


def test_a_request_refused_by_its_partition_fails_only_its_events():
    """A batch request a partition refused as a whole (StorageFullError) gives that error to
    its own events; the other partitions' events are delivered."""
    full = dr.StorageFullError("partition 1 is full")
    router = Router(_ScriptedTransport(2, {1: full}))
    ops = _ops(40)

    results = router.batch_each(ops)

    expected = [full if router.partition(key) == 1 else None for key, _, _ in ops]
    assert expected == [r.error if r is not None else None for r in results]


def test_a_transport_error_is_raised_after_every_request_was_answered():
    """An error that says nothing of what was applied (not a DurableError) is raised."""
    scripted = _ScriptedTransport(2, {0: ConnectionError("actor died")})
    router = Router(scripted)

    with pytest.raises(ConnectionError):
        router.batch_each(_ops(40))

    assert {0, 1} == {partition for partition, _ in scripted.sent}


def test_one_keys_operations_share_one_request_in_order(monkeypatch):
    """Every operation of a key goes in the request its first one went in, even past the
    bounds, in the order given: two requests in flight to a partition may run in either
    order, one request's operations run in order."""
    monkeypatch.setattr(transport, "BATCH_CHUNK", 3)
    router = Router(_ScriptedTransport(2, {}))
    keys = ["a", "b", "c", "d", "a", "e", "f", "a", "b", "g"]
    ops = [(key, "raise_event", {"instance_id": key, "seq": n}) for n, key in enumerate(keys)]

    requests = [[ops[i] for i in chunk] for _, chunk, _ in router._chunks(ops)]

    holding = {
        key: [n for n, r in enumerate(requests) if any(op[0] == key for op in r)] for key in keys
    }
    assert len(requests) >= 3
    assert all(len(where) == 1 for where in holding.values())
    for key in set(keys):
        [request] = [requests[n] for n in holding[key]]
        expected = [op[2]["seq"] for op in ops if op[0] == key]
        assert expected == [op[2]["seq"] for op in request if op[0] == key]
    assert sorted(map(id, ops)) == sorted(id(op) for r in requests for op in r)


def test_requests_are_bounded_by_count_and_by_payload_bytes(monkeypatch):
    """A partition's operations go in requests of at most BATCH_CHUNK operations and about
    BATCH_BYTES of payload (an operation over it alone), in order."""
    monkeypatch.setattr(transport, "BATCH_CHUNK", 4)
    monkeypatch.setattr(transport, "BATCH_BYTES", 100)
    scripted = _ScriptedTransport(1, {})
    router = Router(scripted)

    router.batch_each(_ops(10))
    router.batch_each(_ops(3, b"x" * 40) + _ops(1, b"y" * 500, prefix="j"))

    expected = [(0, 4), (0, 4), (0, 2), (0, 2), (0, 1), (0, 1)]
    assert expected == scripted.sent
