"""End to end, in process: an orchestrator that blocks its partition's thread is reported.

``stuck`` blocks in ``wait_for_the_network`` (a ``threading.Event`` it waits on, with a
timeout as a safety net) until the test releases it. The watchdog's looks are counted
(``EpisodeWatch.look`` wrapped) so a test can wait for the monitor to have looked again
without sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

import duraray as dr
from duraray.runtime.engine.watchdog import EpisodeWatch
from duraray.testing import run_in_process

from .helpers import TIMEOUT, CallCounter, poll

HUB = "e2e-blocking"
# One partition: every instance shares the thread that ``stuck`` blocks.
app = dr.App(HUB, partitions=1)

WARNING = "orchestrator episode blocks its partition"
WARN_S = 0.2
#: How long ``stuck`` blocks at most (the tests release it long before).
BLOCK_S = 30.0
RELEASE = threading.Event()
BLOCKING = threading.Event()


def wait_for_the_network() -> None:
    BLOCKING.set()
    RELEASE.wait(timeout=BLOCK_S)  # blocks the partition: what the watchdog must name


@app.orchestration
def stuck(ctx: dr.OrchestrationContext, _: Any) -> str:
    if not ctx.is_replaying:
        wait_for_the_network()
    return "unstuck"


@app.orchestration
def quick(ctx: dr.OrchestrationContext, n: int) -> int:
    return n + 1


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> CallCounter:
    """How often the monitor looked at this module's hub."""
    counter = CallCounter()
    original = EpisodeWatch.look

    def look(self: EpisodeWatch) -> float | None:
        if self.hub == HUB:
            counter.hit()
        return original(self)

    monkeypatch.setattr(EpisodeWatch, "look", look)
    return counter


@pytest.fixture(autouse=True)
def released() -> Iterator[None]:
    RELEASE.clear()
    BLOCKING.clear()
    yield
    RELEASE.set()  # never leave a partition blocked behind a failed test


def _warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in list(logs) if e["event"] == WARNING]


def _start_in_background(client: dr.Client, name: str, iid: str) -> threading.Thread:
    # The start is answered after its batch commits, which is after the episode it runs.
    thread = threading.Thread(
        target=client.schedule_new_orchestration, args=(name,), kwargs={"instance_id": iid}
    )
    thread.start()
    return thread


def test_blocking_episode_is_reported_once_with_its_stack_and_the_partition_goes_on(
    looks: CallCounter,
) -> None:
    """A blocked episode is reported while it blocks, once, with the user's stack; once it
    ends, it completes as it would have, and another instance of its partition runs."""
    with (
        capture_logs() as logs,
        run_in_process(app, blocking_episode_warning_s=WARN_S) as client,
    ):
        starter = _start_in_background(client, "stuck", "stuck-1")
        warnings = poll(lambda: _warnings(logs), bool)
        assert not RELEASE.is_set()  # reported while it still blocks
        seen = looks[None]
        poll(lambda: looks[None], lambda n: n >= seen + 3)  # the monitor looked again
        RELEASE.set()
        starter.join(TIMEOUT)
        other = client.schedule_new_orchestration(quick, input=1)
        assert 2 == client.wait_for_orchestration_completion(other, timeout=TIMEOUT).output
        state = client.wait_for_orchestration_completion("stuck-1", timeout=TIMEOUT)
        assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
        assert "unstuck" == state.output
        report = client.get_blocking_report("stuck-1")
        assert client.get_blocking_report(other) is None
        counters = client.partition_stats()[0]["counters"]
        warnings = _warnings(logs)

    expected_once = 1
    assert expected_once == len(warnings)
    warning = warnings[0]
    expected = {
        "hub": HUB,
        "partition": 0,
        "instance_id": "stuck-1",
        "orchestration": "stuck",
        "log_level": "warning",
    }
    assert expected == {k: warning[k] for k in expected}
    assert warning["seconds"] >= WARN_S
    stack = warning["stack"]
    assert "in stuck\n    wait_for_the_network()" in stack
    assert "in wait_for_the_network\n    RELEASE.wait(timeout=BLOCK_S)" in stack
    assert "duraray/runtime" not in stack
    assert "duraray/orchestrations" not in stack

    assert report is not None
    expected_report = ("stuck-1", "stuck", 0, stack)
    assert expected_report == (report.instance_id, report.name, report.partition, report.stack)
    assert warning["seconds"] == pytest.approx(report.seconds, abs=1e-3)  # the log rounds
    assert report.finished_after is not None
    assert report.finished_after >= report.seconds
    expected_count = 1
    assert expected_count == counters["blocking_episodes"]


def test_quick_episodes_are_not_reported() -> None:
    """Orchestrations that do not block leave no report, no warning and no count."""
    with capture_logs() as logs, run_in_process(app, blocking_episode_warning_s=1.0) as client:
        ids = client.schedule_new_orchestrations(quick, list(range(20)))
        states = client.wait_for_orchestrations(ids, timeout=TIMEOUT)
        assert [n + 1 for n in range(20)] == [s.output for s in states]
        reports = [client.get_blocking_report(iid) for iid in ids]
        counters = client.partition_stats()[0]["counters"]
    assert [None] * 20 == reports
    assert [] == _warnings(logs)
    expected_count = 0
    assert expected_count == counters["blocking_episodes"]


@pytest.mark.parametrize("off", [None, 0])
def test_no_report_when_the_option_is_off(off: float | None, looks: CallCounter) -> None:
    """blocking_episode_warning_s None or 0: episodes are not even marked, nothing looks
    at them, and a blocking one leaves no report."""
    with capture_logs() as logs, run_in_process(app, blocking_episode_warning_s=off) as client:
        starter = _start_in_background(client, "stuck", "stuck-off")
        assert BLOCKING.wait(TIMEOUT)
        assert client.hub_runtime.cores[0].watch.current is None
        RELEASE.set()
        starter.join(TIMEOUT)
        state = client.wait_for_orchestration_completion("stuck-off", timeout=TIMEOUT)
        assert "unstuck" == state.output
        report = client.get_blocking_report("stuck-off")
        counters = client.partition_stats()[0]["counters"]
    assert report is None
    assert [] == _warnings(logs)
    expected_count = 0
    assert expected_count == counters["blocking_episodes"]
    assert 0 == looks[None]
