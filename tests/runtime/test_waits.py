"""Waits that time out are answered, so no caller and no Ray call waits forever."""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

import duraray as dr
from duraray.testing import run_in_process

app = dr.App("waits", partitions=2)


@app.orchestration
def waits_forever(ctx, _):
    yield ctx.wait_for_external_event("never")


def _poll(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_expired_wait_is_answered_with_timeout_error():
    """A partition answers a wait whose deadline passed with TimeoutError and forgets it."""
    with run_in_process(app) as client:
        iid = client.schedule_new_orchestration(waits_forever)
        hub = client.hub_runtime
        core = hub.cores[client._partition(iid)]
        future = hub.submit(
            client._partition(iid),
            "wait",
            {"instance_id": iid, "kind": "completion", "timeout": 0.05},
        )
        with pytest.raises(TimeoutError):
            future.result(timeout=10)
        _poll(lambda: not core.waits)


def test_expired_wait_many_is_answered_once():
    """A wait_many whose deadline passed gets one TimeoutError reply for the whole group."""
    with run_in_process(app) as client:
        ids = [client.schedule_new_orchestration(waits_forever) for _ in range(6)]
        with pytest.raises(TimeoutError):
            client.wait_for_orchestrations(ids, timeout=0.05)
        for core in client.hub_runtime.cores:
            _poll(lambda core=core: not core.waits)


def test_client_timeout_still_raises_before_the_partition_answers():
    """The client's own deadline raises TimeoutError even if the partition is slower."""
    with run_in_process(app) as client:
        iid = client.schedule_new_orchestration(waits_forever)
        with pytest.raises((TimeoutError, FutureTimeout)):
            client.wait_for_orchestration_completion(iid, timeout=0.05)
