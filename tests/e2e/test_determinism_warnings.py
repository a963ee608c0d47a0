"""End to end: the in-process runtime warns about non-deterministic calls in orchestration
code on their first run (by default), never on replay after a restart, never for activities
(inline ones included), and not at all with ``determinism_warnings=False``."""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Iterator

import pytest

import duraray as dr
from duraray.config import HubConfig
from duraray.orchestrations import determinism
from duraray.runtime.engine.components import executor_options
from duraray.testing import ManualClock, run_in_process

from .helpers import TIMEOUT

app = dr.App("e2e-determinism")

Status = dr.OrchestrationStatus


@app.activity(inline=True)
def inline_clock(ctx: dr.ActivityContext, _: None) -> float:
    return time.time()


@app.activity(inline=False)
def pooled_clock(ctx: dr.ActivityContext, _: None) -> float:
    return time.time()


@app.orchestration
def stamps(ctx: dr.OrchestrationContext, _: None):
    first = time.time()
    yield ctx.wait_for_external_event("go")
    return first > 0


@app.orchestration
def clocks_in_activities(ctx: dr.OrchestrationContext, _: None):
    inline = yield ctx.call_activity(inline_clock)
    pooled = yield ctx.call_activity(pooled_clock)
    return [inline > 0, pooled > 0]


@pytest.fixture(autouse=True)
def fresh_call_sites(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no call site reported (the registry is per process)."""
    monkeypatch.setattr(determinism, "_reported", set())


@pytest.fixture
def recorded() -> Iterator[list[warnings.WarningMessage]]:
    """Every warning emitted in the test, whatever the filters say."""
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        yield records


def ours(records: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [r for r in records if issubclass(r.category, dr.NonDeterminismWarning)]


def _hub(data_dir, **options):
    return run_in_process(app, data_dir=data_dir, clock=ManualClock(auto_advance=True), **options)


def test_in_process_default_warns_at_the_users_line(recorded):
    """By default the in-process runtime warns about time.time() in an orchestrator, at its line, and the instance runs on."""
    with run_in_process(app) as client:
        assert client.hub_runtime.config.determinism_warnings is True
        iid = client.schedule_new_orchestration(stamps)
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        client.raise_orchestration_event(iid, "go")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert Status.COMPLETED == state.runtime_status
    assert state.output is True
    lines, first = inspect.getsourcelines(stamps)
    expected_line = first + next(i for i, line in enumerate(lines) if "time.time()" in line)
    assert [(__file__, expected_line)] == [(w.filename, w.lineno) for w in ours(recorded)]
    assert "orchestration 'stamps' calls time.time()" in str(ours(recorded)[0].message)


def test_replay_after_a_restart_does_not_warn(data_dir, recorded):
    """A hub restarted on the same data dir replays the code that called time.time() without a warning."""
    with _hub(data_dir) as client:
        iid = client.schedule_new_orchestration(stamps, instance_id="stamped")
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        client.hub_runtime.wait_idle()
    assert 1 == len(ours(recorded))
    determinism._reported.clear()  # the same line would warn again if it ran live
    recorded.clear()
    with _hub(data_dir) as client:
        client.raise_orchestration_event("stamped", "go")
        state = client.wait_for_orchestration_completion("stamped", timeout=TIMEOUT)
        replays = sum(core.counters["replays"] for core in client.hub_runtime.cores)
    assert Status.COMPLETED == state.runtime_status
    assert replays >= 1, "the restarted hub must have replayed the instance"
    assert [] == ours(recorded)


def test_activities_are_not_watched(recorded):
    """Clocks read by activities, inline (on the partition's thread) or pooled, do not warn."""
    with run_in_process(app) as client:
        iid = client.schedule_new_orchestration(clocks_in_activities)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert [True, True] == state.output
    assert [] == ours(recorded)


def test_option_off_gives_no_warnings(recorded):
    """determinism_warnings=False turns the check off."""
    with run_in_process(app, determinism_warnings=False) as client:
        iid = client.schedule_new_orchestration(stamps)
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        client.raise_orchestration_event(iid, "go")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert Status.COMPLETED == state.runtime_status
    assert [] == ours(recorded)


def test_warnings_as_errors_fail_the_instance():
    """With the warning turned into an error (as in this suite), the instance fails naming the call."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", dr.NonDeterminismWarning)
        with run_in_process(app) as client:
            iid = client.schedule_new_orchestration(stamps)
            state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert Status.FAILED == state.runtime_status
    assert "time.time()" in state.failure_details.message


@pytest.mark.parametrize(
    ("option", "watched", "hook"),
    [(None, False, False), (True, True, True), (False, False, False)],
)
def test_the_option_reaches_the_executor(option, watched, hook):
    """None is off on Ray (the in-process runtime turns it into True); True and False are
    all or nothing."""
    options = executor_options(HubConfig(determinism_warnings=option))
    assert (watched, hook) == (options.determinism_warnings, options.determinism_hook)


def test_the_option_is_validated():
    """A value other than true, false or None is refused where it is given."""
    with pytest.raises(ValueError, match="determinism_warnings"):
        HubConfig(determinism_warnings="yes")  # type: ignore[arg-type]
