"""``RayTransport``'s sharing of calls, with fake partition actors (no Ray).

The fake actor records each call and hands back a future the test completes, so the
in-flight accounting is checked step by step: at most ``MAX_CALLS_IN_FLIGHT`` calls per
partition, queued requests shared in calls of at most ``MAX_SHARED_REQUESTS``, each
request answered with its own result or error, and no slot lost on any failure path.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from duraray.runtime.engine.records import Reply
from duraray.runtime.ray import manager
from duraray.runtime.ray.manager import HubHandle, RayTransport

TIMEOUT = 5.0


class _Ref:
    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def future(self) -> Future[Any]:
        return self._future


class _Method:
    def __init__(self, actor: FakeActor, name: str) -> None:
        self.actor, self.name = actor, name

    def remote(self, *args: Any) -> _Ref:
        return self.actor.called(self.name, args)


class FakeActor:
    """Records calls; ``answer(i)`` completes call i the way the partition would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], Future[Any]]] = []
        self.lock = threading.Condition()
        self.fail_submit: set[str] = set()  # ops whose .remote() raises (unpicklable)
        self.client_request = _Method(self, "client_request")
        self.client_requests = _Method(self, "client_requests")

    def called(self, name: str, args: tuple[Any, ...]) -> _Ref:
        ops = [args[0]] if name == "client_request" else [r[0] for r in args[0]]
        if self.fail_submit & set(ops):
            raise TypeError("cannot pickle '_thread.lock' object")
        future: Future[Any] = Future()
        with self.lock:
            self.calls.append((name, args, future))
            self.lock.notify_all()
        return _Ref(future)

    def requests(self, index: int) -> list[tuple[str, Any, Any]]:
        name, args, _ = self.calls[index]
        return [args] if name == "client_request" else list(args[0])

    def answer(self, index: int, result: Any = None) -> None:
        """Complete call ``index``: each request's answer is ``result`` or its op name."""
        name, _, future = self.calls[index]
        answers = [result if result is not None else op for op, _, _ in self.requests(index)]
        future.set_result(answers[0] if name == "client_request" else answers)

    def wait_calls(self, count: int) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.calls) >= count, TIMEOUT), self.calls


@pytest.fixture
def actor() -> FakeActor:
    return FakeActor()


@pytest.fixture
def transport(actor: FakeActor) -> RayTransport:
    handle = HubHandle("fake", [actor], {"max_payload_bytes": 1 << 20})
    t = RayTransport(handle)
    yield t
    t.release()


def test_requests_beyond_the_slots_queue_and_share_one_call(
    actor: FakeActor, transport: RayTransport
) -> None:
    """Two calls go at once; the rest wait and go together when a call returns."""
    futures = [transport.submit(0, f"op{i}", {}) for i in range(6)]
    assert 2 == len(actor.calls) == manager.MAX_CALLS_IN_FLIGHT
    actor.answer(0)
    actor.wait_calls(3)
    assert ["op2", "op3", "op4", "op5"] == [op for op, _, _ in actor.requests(2)]
    actor.answer(1)
    actor.answer(2)
    assert [f"op{i}" for i in range(6)] == [f.result(TIMEOUT) for f in futures]
    assert [0] == transport._in_flight


def test_a_shared_call_holds_at_most_max_shared_requests(
    actor: FakeActor, transport: RayTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long queue goes out in several calls of at most MAX_SHARED_REQUESTS each."""
    monkeypatch.setattr(manager, "MAX_SHARED_REQUESTS", 3)
    futures = [transport.submit(0, f"op{i}", {}) for i in range(2 + 7)]
    actor.answer(0)
    actor.answer(1)
    actor.wait_calls(4)
    assert [3, 3] == [len(actor.requests(i)) for i in (2, 3)]
    actor.answer(2)
    actor.wait_calls(5)
    assert 1 == len(actor.requests(4))
    actor.answer(3)
    actor.answer(4)
    assert [f"op{i}" for i in range(9)] == [f.result(TIMEOUT) for f in futures]
    assert [0] == transport._in_flight


def test_each_request_of_a_shared_call_gets_its_own_error(
    actor: FakeActor, transport: RayTransport
) -> None:
    """A Reply in one slot fails that request only."""
    futures = [transport.submit(0, f"op{i}", {}) for i in range(5)]
    actor.answer(0)
    actor.answer(1)
    actor.wait_calls(3)
    _, _, future = actor.calls[2]
    future.set_result(["a", Reply(KeyError("missing")), "c"])
    assert "a" == futures[2].result(TIMEOUT)
    with pytest.raises(KeyError, match="missing"):
        futures[3].result(TIMEOUT)
    assert "c" == futures[4].result(TIMEOUT)


def test_a_request_ray_cannot_send_fails_alone(actor: FakeActor, transport: RayTransport) -> None:
    """When a shared call cannot be submitted (one argument Ray cannot serialize), its
    requests are retried one by one: only the bad one fails, and no slot is lost."""
    futures = [transport.submit(0, "ok", {}) for _ in range(2)]
    queued = [transport.submit(0, op, {}) for op in ("ok", "bad", "ok")]
    actor.fail_submit.add("bad")
    actor.answer(0)
    actor.wait_calls(4)  # the two good ones, one call each
    for index in range(1, len(actor.calls)):
        actor.answer(index)
    assert ["ok", "ok"] == [f.result(TIMEOUT) for f in futures]
    assert "ok" == queued[0].result(TIMEOUT)
    assert "ok" == queued[2].result(TIMEOUT)
    with pytest.raises(TypeError, match="pickle"):
        queued[1].result(TIMEOUT)
    assert [0] == transport._in_flight
    fresh = transport.submit(0, "after", {})
    actor.wait_calls(len(actor.calls))
    actor.answer(len(actor.calls) - 1)
    assert "after" == fresh.result(TIMEOUT)


def test_a_failed_call_fails_its_requests_and_frees_its_slot(
    actor: FakeActor, transport: RayTransport
) -> None:
    """An actor error (it died) reaches every request of the call; the slot is freed."""
    first = transport.submit(0, "op", {})
    actor.calls[0][2].set_exception(RuntimeError("actor died"))
    with pytest.raises(RuntimeError, match="actor died"):
        first.result(TIMEOUT)
    assert [0] == transport._in_flight


def test_a_malformed_answer_fails_the_requests_not_the_transport(
    actor: FakeActor, transport: RayTransport
) -> None:
    """A shared call answered with the wrong number of results fails its requests with a
    clear error, and the slot is freed."""
    futures = [transport.submit(0, f"op{i}", {}) for i in range(4)]
    actor.answer(0)
    actor.wait_calls(3)
    actor.calls[2][2].set_result(["only one"])
    for f in futures[2:]:
        with pytest.raises(RuntimeError, match="answered 2 requests"):
            f.result(TIMEOUT)
    actor.answer(1)
    deadline = time.monotonic() + TIMEOUT
    while transport._in_flight != [0] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [0] == transport._in_flight


def test_waits_and_bulk_requests_take_no_slot(actor: FakeActor, transport: RayTransport) -> None:
    """A wait stays open for long and a batch is already one call's worth: both go at
    once, alone, whatever the slots."""
    transport.submit(0, "op", {})
    transport.submit(0, "op", {})
    transport.submit(0, "wait", {})
    transport.submit(0, "wait_many", {})
    transport.submit(0, "batch", {"ops": []})
    assert ["op", "op", "wait", "wait_many", "batch"] == [a[0] for _, a, _ in actor.calls]
    assert [2] == transport._in_flight


def test_release_fails_what_is_still_queued(actor: FakeActor, transport: RayTransport) -> None:
    """A released client's queued requests fail instead of hanging."""
    transport.submit(0, "op", {})
    transport.submit(0, "op", {})
    queued = transport.submit(0, "op", {})
    transport.release()
    with pytest.raises(RuntimeError, match="closed"):
        queued.result(TIMEOUT)


def test_many_threads_every_future_resolves(actor: FakeActor, transport: RayTransport) -> None:
    """8 threads x 200 requests against a partition that answers as calls arrive: every
    future resolves with its own answer and the slots end at zero."""
    stop = threading.Event()

    def partition() -> None:
        answered = 0
        while not stop.is_set():
            with actor.lock:
                actor.lock.wait_for(
                    lambda seen=answered: len(actor.calls) > seen or stop.is_set(), 0.1
                )
                pending = len(actor.calls)
            while answered < pending:
                actor.answer(answered)
                answered += 1

    server = threading.Thread(target=partition, daemon=True)
    server.start()
    results: list[list[Any]] = [[] for _ in range(8)]

    def client(n: int) -> None:
        futures = [transport.submit(0, f"t{n}-{i}", {}) for i in range(200)]
        results[n] = [f.result(TIMEOUT) for f in futures]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 4)
    stop.set()
    server.join(TIMEOUT)
    assert [[f"t{n}-{i}" for i in range(200)] for n in range(8)] == results
    assert [0] == transport._in_flight
