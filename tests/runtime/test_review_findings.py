"""Regression tests for correctness findings of a review of the runtime."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from partition_driver import Cluster, make_registry

import duraray as dr
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import Reply
from duraray.testing import run_in_process

Status = h.OrchestrationStatus


def generations(ctx, n):
    value = yield ctx.wait_for_external_event("e")
    if n == 0:
        ctx.continue_as_new(1, save_events=True)
        return None
    return value


def inc(ctx, x):
    return x + 1


def fails_in_code(ctx, x):
    y = yield ctx.call_activity("inc", input=x)
    if y < 100:
        raise ValueError("the orchestration's own code failed")
    return y


REGISTRY = make_registry(generations=generations, inc=inc, fails_in_code=fails_in_code)


def _raise(cluster: Cluster, iid: str, value: object, request_id: str) -> None:
    cluster.submit(
        "raise_event", instance_id=iid, name="e", data=codec.encode(value), request_id=request_id
    )


def test_suspend_in_the_batch_of_an_event_holds_the_event_until_resume():
    """An event applied in the batch that suspends the instance waits for resume, and later ones are kept."""
    with Cluster(REGISTRY) as cluster:
        cluster.start("generations", "g", 0)
        cluster.run()
        # One batch: an event the instance waits for, a suspension, then another event.
        _raise(cluster, "g", "first", "r1")
        cluster.submit("suspend", instance_id="g", request_id="s1")
        _raise(cluster, "g", "second", "r2")
        cluster.step(0)
        expected_status = Status.SUSPENDED
        assert expected_status == cluster.state("g").status
        cluster.submit("resume", instance_id="g", request_id="s2")
        cluster.run()
        state = cluster.state("g")
        expected = (Status.COMPLETED, "second")
        assert expected == (state.status, codec.decode(state.output))


race_app = dr.App("review-race", partitions=1)


@race_app.orchestration
def sleeper(ctx, _):
    yield ctx.create_timer(timedelta(hours=1))


def test_wait_idle_never_touches_a_core_while_its_batch_runs():
    """wait_idle() from a client thread does not read a core's timer heap while the engine runs a batch."""
    with run_in_process(race_app) as client:
        hub = client.hub_runtime
        core = hub.cores[0]
        running = threading.Event()
        overlaps: list[str] = []
        run_batch, next_due = core.run_batch, core.next_due

        def slow_batch():
            running.set()
            try:
                fx = run_batch()
                time.sleep(0.2)  # still in the engine's batch: wait_idle's 5 ms polls land here
                return fx
            finally:
                running.clear()

        def watched_next_due():
            if running.is_set() and threading.current_thread() is not hub._thread:
                overlaps.append(threading.current_thread().name)
            return next_due()

        core.run_batch, core.next_due = slow_batch, watched_next_due
        stop = threading.Event()

        def poll():  # a test thread waiting for the hub to settle
            while not stop.is_set():
                hub.wait_idle(timeout=0.05)

        poller = threading.Thread(target=poll, name="poller")
        poller.start()
        try:
            client.schedule_new_orchestration(sleeper)
        finally:
            stop.set()
            poller.join()
        expected: list[str] = []
        assert expected == overlaps


def test_rewind_of_an_instance_failed_by_its_own_code_runs_it_again():
    """Rewinding an instance whose own code raised replays it, so it fails (or completes) again instead of hanging."""
    with Cluster(REGISTRY) as cluster:
        cluster.start("fails_in_code", "f", 1)
        cluster.run()
        cluster.submit("rewind", instance_id="f", request_id="rw")
        cluster.run()
        expected = Status.FAILED  # the same code fails the same way after the replay
        assert expected == cluster.state("f").status


def test_a_malformed_request_is_answered_and_does_not_fail_the_batch():
    """A request whose arguments make its handler raise gets an error reply; the partition keeps going."""
    with Cluster(REGISTRY) as cluster:
        token = cluster.submit("purge_by", partition=0, created_from="yesterday", request_id="bad")
        cluster.start("fails_in_code", "f", 1000)  # same batch: must not be lost with it
        cluster.run()
        expected = (True, Status.COMPLETED)
        assert expected == (isinstance(cluster.replies[token][0], Reply), cluster.state("f").status)
