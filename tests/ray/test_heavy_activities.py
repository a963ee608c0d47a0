"""Heavy activities on Ray: each holds a CPU in its own process, and a crash repeats only
what was running.

Activities coordinate through files under the test's tmp dir (they run in other
processes): a start line per execution in a ledger, and a gate they wait on, so each
property is shown by pids and by what ran, never by timings.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import ray

import duraray as dr
from duraray.runtime.ray.manager import PartitionManager

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

TIMEOUT = 90.0

app = dr.App("rt-heavy", partitions=2, activity_workers=2)


def _ledger(folder: str) -> list[tuple[str, int, int]]:
    path = Path(folder) / "ledger"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(iid, int(task), int(pid)) for iid, task, pid in rows]


def _start(folder: str, ctx: dr.ActivityContext) -> None:
    # One short O_APPEND write per execution: atomic across processes.
    with open(Path(folder) / "ledger", "a") as log:
        log.write(f"{ctx.instance_id} {ctx.task_id} {os.getpid()}\n")


def _gate(folder: str, predicate, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@app.activity
def crunch(ctx: dr.ActivityContext, folder: str) -> dict:
    """A CPU-bound activity that records its start, waits until another one has started
    too (proof that two ran at once), burns some CPU, and reports its pid."""
    _start(folder, ctx)
    together = _gate(folder, lambda: len({p for _, _, p in _ledger(folder)}) >= 2)
    end = time.thread_time() + 0.05
    while time.thread_time() < end:
        pass
    return {"pid": os.getpid(), "together": together}


@app.activity(cpu_bound=True)
def held(ctx: dr.ActivityContext, folder: str) -> int:
    """A CPU-bound activity that records its start and waits for the test's release."""
    _start(folder, ctx)
    _gate(folder, lambda: (Path(folder) / "release").exists(), limit=TIMEOUT)
    return os.getpid()


@app.orchestration
def fan_out(ctx: dr.OrchestrationContext, job: list):
    """``job[1]`` activities ``job[0]`` at once."""
    name, n, folder = job
    return (yield dr.when_all([ctx.call_activity(name, input=folder) for _ in range(n)]))


def test_heavy_activities_of_one_fan_out_run_at_once_in_distinct_processes(
    ray_session, tmp_path: Path
) -> None:
    """Four CPU-bound activities: two run at the same time (each saw another start), in
    distinct processes other than the partitions'."""
    folder = str(tmp_path)
    with app.run(data_dir=str(tmp_path / "data")) as client:
        iid = client.schedule_new_orchestration(fan_out, input=["crunch", 4, folder])
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        handle = PartitionManager.find(app.name)
        assert handle is not None
        infos = ray.get([p.describe.remote() for p in handle.partitions], timeout=TIMEOUT)
    assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
    assert all(r["together"] for r in state.output)
    pids = {r["pid"] for r in state.output}
    assert len(pids) >= 2
    assert not pids & {int(info["pid"]) for info in infos}


def test_a_killed_activity_process_repeats_only_what_was_running(
    ray_session, tmp_path: Path
) -> None:
    """SIGKILL of the process running one of six held activities: that one runs again,
    every other runs exactly once, and every result is recorded once."""
    folder = str(tmp_path)
    n = 6
    with app.run(data_dir=str(tmp_path / "data")) as client:
        iid = client.schedule_new_orchestration(fan_out, input=["held", n, folder])
        assert _gate(folder, lambda: len(_ledger(folder)) >= 2, limit=TIMEOUT)
        running = _ledger(folder)
        victim = running[0]
        os.kill(victim[2], signal.SIGKILL)
        (tmp_path / "release").write_text("")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        history = client.get_orchestration_history(iid)
    assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
    completed = [e.task_scheduled_id for e in history if isinstance(e, dr.TaskCompleted)]
    assert n == len(completed) == len(set(completed))
    runs: dict[tuple[str, int], int] = {}
    for iid_, task, _ in _ledger(folder):
        runs[(iid_, task)] = runs.get((iid_, task), 0) + 1
    repeated = sum(count - 1 for count in runs.values())
    assert n == len(runs)
    assert 2 == runs[victim[:2]]
    assert repeated <= len(running)
