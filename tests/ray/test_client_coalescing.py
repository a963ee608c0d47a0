"""The Ray client transport coalesces requests to a busy partition into one actor call.

``RayTransport`` keeps at most ``MAX_CALLS_IN_FLIGHT`` calls open per partition; more
requests queue and go together through ``client_requests``. These tests check that every
request still gets its own answer (result or error), that request-id dedup holds per
request, and that many threads signalling one entity lose nothing.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import ray

import duraray as dr
from duraray.runtime.engine import codec
from duraray.runtime.ray import manager

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

TIMEOUT = 60.0

app = dr.App("rt-coalesce", partitions=2)


@app.entity
class Tally(dr.DurableEntity):
    """A counter: ``add(amount)``, ``get()``."""

    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)

    def get(self) -> int:
        return int(self.get_state(int, 0))


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value: int):
    """Returns its input."""
    return value
    yield  # a generator, as orchestrations are


@pytest.fixture(scope="module")
def client(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dr.Client]:
    """The module's hub on the session's Ray."""
    with app.run(data_dir=str(tmp_path_factory.mktemp("rt-coalesce"))) as c:
        yield c


def _transport(client: dr.Client) -> manager.RayTransport:
    transport = client._transport
    assert isinstance(transport, manager.RayTransport)
    return transport


def test_many_requests_to_one_partition_each_get_their_own_answer(client: dr.Client) -> None:
    """Far more requests than calls in flight: each answer matches its request, and the
    failing ones (unknown instance) fail alone."""
    transport = _transport(client)
    ids = [f"co-{uuid.uuid4().hex}" for _ in range(400)]
    partition = 0
    ours = [i for i in ids if client._partition(i) == partition][:60]
    assert len(ours) > manager.MAX_CALLS_IN_FLIGHT * 4
    starts = [
        transport.submit(
            partition,
            "start",
            {"instance_id": iid, "name": "echo", "input": codec.encode(n)},
            uuid.uuid4().hex,
        )
        for n, iid in enumerate(ours)
    ]
    assert ours == [f.result(TIMEOUT) for f in starts]
    states = client.wait_for_orchestrations(ours, timeout=TIMEOUT)
    assert list(range(len(ours))) == [s.output for s in states]

    missing = [i for i in ids if client._partition(i) == partition and i not in ours][:20]
    mixed = []
    for good, bad in zip(ours, missing, strict=False):
        mixed.append((good, transport.submit(partition, "get_state", {"instance_id": good})))
        mixed.append((bad, transport.submit(partition, "get_state", {"instance_id": bad})))
    for iid, future in mixed:
        if iid in ours:
            assert iid == future.result(TIMEOUT).instance_id
        else:
            assert future.result(TIMEOUT) is None


def test_repeated_request_id_in_one_coalesced_call_applies_once(client: dr.Client) -> None:
    """Two requests with the same request id (a retry) start the instance once."""
    transport = _transport(client)
    iid = f"co-dup-{uuid.uuid4().hex}"
    partition = client._partition(iid)
    request_id = uuid.uuid4().hex
    args = {"instance_id": iid, "name": "echo", "input": codec.encode(7)}
    # Fill the partition's slots with waits that return at once, then send the pair.
    futures = [transport.submit(partition, "stats", {}) for _ in range(manager.MAX_CALLS_IN_FLIGHT)]
    pair = [transport.submit(partition, "start", dict(args), request_id) for _ in range(2)]
    assert [iid, iid] == [f.result(TIMEOUT) for f in pair]
    for f in futures:
        f.result(TIMEOUT)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert 7 == state.output
    history = client.get_orchestration_history(iid)
    assert 1 == sum(type(e).__name__ == "ExecutionStarted" for e in history)


def test_threads_signalling_one_entity_lose_nothing(client: dr.Client) -> None:
    """16 threads, 50 signals each, to one counter: it ends at exactly 800."""
    entity = dr.EntityId("tally", f"t-{uuid.uuid4().hex}")
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for _ in range(50):
                client.signal_entity(entity, "add", 1)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert [] == errors
    deadline = time.monotonic() + TIMEOUT
    while True:  # signals are applied after they are accepted: poll, with a bound
        meta = client.get_entity(entity)
        if (meta is not None and meta.state == 800) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert meta is not None
    assert 800 == meta.state


def test_unpicklable_argument_fails_its_own_request(client: dr.Client) -> None:
    """A request Ray cannot serialize fails at its future, and the partition's call slot
    is released (later requests still go through)."""
    transport = _transport(client)
    lock = threading.Lock()  # not picklable
    for _ in range(manager.MAX_CALLS_IN_FLIGHT + 2):
        future = transport.submit(0, "get_state", {"instance_id": "x", "junk": lock})
        with pytest.raises(Exception):  # noqa: B017 - Ray's own serialization error
            future.result(TIMEOUT)
    assert isinstance(transport.submit(0, "stats", {}).result(TIMEOUT), dict)
