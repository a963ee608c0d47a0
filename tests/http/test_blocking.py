"""A blocking orchestrator as an operator sees it over HTTP: the instance's status carries
its latest blocking report, /api/partitions and /metrics count it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

import duraray as dr
from duraray.runtime.http import create_app
from duraray.testing import run_in_process

HUB = "http-blocking"
app = dr.App(HUB, partitions=1)

WARN_S = 0.2
TIMEOUT = 10.0
RELEASE = threading.Event()


def wait_for_the_network() -> None:
    RELEASE.wait(timeout=30)  # blocks the partition until the test releases it


@app.orchestration
def stuck(ctx: dr.OrchestrationContext, _: Any) -> str:
    if not ctx.is_replaying:
        wait_for_the_network()
    return "unstuck"


@app.orchestration
def quick(ctx: dr.OrchestrationContext, n: int) -> int:
    return n + 1


@pytest.fixture
def client() -> Iterator[dr.Client]:
    """The hub with a short blocking threshold."""
    RELEASE.clear()
    with run_in_process(app, blocking_episode_warning_s=WARN_S) as c:
        try:
            yield c
        finally:
            RELEASE.set()


@pytest.fixture
def reported(client: dr.Client, poll: Callable[..., Any]) -> str:
    """The id of a ``stuck`` instance whose blocking episode was reported and has ended."""
    with capture_logs() as logs:
        starter = threading.Thread(
            target=client.schedule_new_orchestration, args=("stuck",), kwargs={"instance_id": "s"}
        )
        starter.start()
        poll(
            lambda: [e for e in list(logs) if e["event"].startswith("orchestrator episode")],
            bool,
        )
        RELEASE.set()
        starter.join(TIMEOUT)
    client.wait_for_orchestration_completion("s", timeout=TIMEOUT)
    return "s"


def test_instance_status_carries_its_blocking_report(
    client: dr.Client, reported: str, make_http: Callable[[Any], Any]
) -> None:
    """GET /api/instances/{id} shows when the episode was reported, how long it had run
    then and in all, and the user's stack; an instance that never blocked shows null."""
    http = make_http(create_app(client))
    body = http.get(f"/api/instances/{reported}").json()
    report = body["blockingReport"]
    assert {"partition", "reportedAt", "seconds", "finishedAfter", "stack"} == set(report)
    assert 0 == report["partition"]
    assert report["reportedAt"].endswith("Z")
    assert report["seconds"] >= WARN_S
    assert report["finishedAfter"] >= report["seconds"]
    assert "in wait_for_the_network\n    RELEASE.wait(timeout=30)" in report["stack"]
    assert "unstuck" == body["output"]

    other = client.schedule_new_orchestration(quick, input=1)
    client.wait_for_orchestration_completion(other, timeout=TIMEOUT)
    assert http.get(f"/api/instances/{other}").json()["blockingReport"] is None


def test_partitions_and_metrics_count_blocking_episodes(
    client: dr.Client, reported: str, make_http: Callable[[Any], Any]
) -> None:
    """The partition's counter reaches /api/partitions and /metrics as a Prometheus counter."""
    http = make_http(create_app(client))
    partitions = http.get("/api/partitions").json()
    assert 1 == partitions[0]["counters"]["blocking_episodes"]
    metrics = http.get("/metrics").text
    assert "# TYPE duraray_blocking_episodes_total counter" in metrics
    assert f'duraray_blocking_episodes_total{{hub="{HUB}",partition="0"}} 1.0' in metrics
