"""The blocking watchdog's bookkeeping, looked at by the test instead of the monitor thread.

Episodes are marked on the test's thread (nothing runs in them) except where a report's
stack matters: there a helper thread marks one and blocks in ``stuck_in_user_code``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from structlog.testing import capture_logs

from duraray.runtime.engine.clock import Clock
from duraray.runtime.engine.watchdog import MAX_REPORTS, EpisodeWatch

WARNING = "orchestrator episode blocks its partition"


class ManualMono(Clock):
    """Monotonic time the test moves."""

    def __init__(self) -> None:
        super().__init__(seed=1)
        self.mono = 100.0

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
def clock() -> ManualMono:
    return ManualMono()


def poll(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "condition not reached within 10 s"
        time.sleep(0.001)


def watch_of(clock: Clock, threshold: float | None = 2.0) -> EpisodeWatch:
    return EpisodeWatch(hub="hub", partition=3, threshold=threshold, clock=clock, monitored=False)


def stuck_in_user_code(watch: EpisodeWatch, marked: threading.Event, go: threading.Event) -> None:
    watch.begin("order-1", "checkout")
    marked.set()
    go.wait()  # what the report's stack must show
    watch.end()


@pytest.fixture
def blocked(clock: ManualMono) -> Iterator[tuple[EpisodeWatch, threading.Event]]:
    """A watch whose episode of ``order-1`` is blocked in a helper thread until the
    returned event is set."""
    watch = watch_of(clock)
    marked, go = threading.Event(), threading.Event()
    thread = threading.Thread(target=stuck_in_user_code, args=(watch, marked, go))
    thread.start()
    try:
        assert marked.wait(10)
        yield watch, go
    finally:
        go.set()
        thread.join(10)


def test_an_overdue_episode_is_reported_once_with_its_stack(
    clock: ManualMono, blocked: tuple[EpisodeWatch, threading.Event]
) -> None:
    """Past the threshold the running episode is reported, once: a warning naming hub,
    partition, instance, orchestration, seconds and stack, a count and a report that gets
    the episode's whole run time when it ends."""
    watch, go = blocked
    clock.mono += 1.5
    with capture_logs() as logs:
        pause = watch.look()
        assert pause == pytest.approx(0.5)
        assert watch.report("order-1") is None
        clock.mono += 1.0
        watch.look()
        clock.mono += 5.0
        watch.look()  # still running: not reported again
    warnings = [e for e in logs if e["event"] == WARNING]
    expected_fields = {
        "hub": "hub",
        "partition": 3,
        "instance_id": "order-1",
        "orchestration": "checkout",
        "seconds": 2.5,
        "log_level": "warning",
    }
    assert [expected_fields] == [{k: w[k] for k in expected_fields} for w in warnings]
    stack = warnings[0]["stack"]
    assert "in stuck_in_user_code\n    go.wait()" in stack
    assert "duraray/runtime" not in stack  # duraray's own frames are left out
    expected_count = 1
    assert expected_count == watch.count
    running = watch.report("order-1")
    assert running is not None
    expected = ("order-1", "checkout", 3, 2.5, stack, None)
    actual = (
        running.instance_id,
        running.name,
        running.partition,
        running.seconds,
        running.stack,
        running.finished_after,
    )
    assert expected == actual
    clock.mono += 0.5
    go.set()
    poll(lambda: watch.current is None)
    finished = watch.report("order-1")
    assert finished is not None
    expected_run = 8.0
    assert expected_run == finished.finished_after


def test_quick_episodes_are_not_reported(clock: ManualMono) -> None:
    """An episode that ends within the threshold leaves nothing, however late the look."""
    watch = watch_of(clock)
    for iid in ("a", "b", "c"):
        watch.begin(iid, "quick")
        clock.mono += 1.9
        assert watch.look() is not None
        watch.end()
    clock.mono += 60
    assert watch.look() is None
    assert watch.report("a") is None
    expected_count = 0
    assert expected_count == watch.count


@pytest.mark.parametrize("threshold", [None, 0])
def test_a_watch_that_is_off_marks_nothing(clock: ManualMono, threshold: float | None) -> None:
    """None or 0 turns the watch off: episodes are not even marked."""
    watch = watch_of(clock, threshold)
    watch.begin("a", "slow")
    clock.mono += 3600
    assert watch.current is None
    assert watch.look() is None
    watch.end()
    assert watch.report("a") is None


def test_each_episode_is_reported_and_the_latest_report_is_kept(clock: ManualMono) -> None:
    """A later blocking episode of the same instance is reported too, and replaces the
    instance's report; reports are kept for the last MAX_REPORTS instances."""
    watch = watch_of(clock)
    with capture_logs():
        for seconds in (3.0, 4.0):
            watch.begin("same", "slow")
            clock.mono += seconds
            watch.look()
            watch.end()
        for n in range(MAX_REPORTS + 1):
            watch.begin(f"other-{n}", "slow")
            clock.mono += 3
            watch.look()
            watch.end()
    expected_count = MAX_REPORTS + 3
    assert expected_count == watch.count
    assert watch.report("same") is None  # the oldest reported instances went first
    assert watch.report("other-0") is None
    assert watch.report("other-1") is not None
    assert watch.report(f"other-{MAX_REPORTS}") is not None


def test_a_rebuilt_core_keeps_the_reports(clock: ManualMono) -> None:
    """The watch of a core rebuilt after a failed batch takes over its predecessor's
    reports and count."""
    first = watch_of(clock)
    with capture_logs():
        first.begin("a", "slow")
        clock.mono += 3
        first.look()
        first.end()
    second = watch_of(clock)
    second.adopt(first)
    expected_count = 1
    assert expected_count == second.count
    report = second.report("a")
    assert report is not None
    expected_run = 3.0
    assert expected_run == report.finished_after
