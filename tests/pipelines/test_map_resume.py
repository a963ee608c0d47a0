"""Client.map survives its driver being killed: a re-run re-uses what completed.

A subprocess runs a map job (``map_job.py``) on an LMDB data dir; the test SIGKILLs it
(its whole process group) once about half of the items have run, runs the job again to the end, and counts activity
executions in a log that the activities append to (so the counts survive the kill).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

JOB = Path(__file__).with_name("map_job.py")
ITEMS = 60
MAX_IN_FLIGHT = 4
#: Seconds a job (or the wait for half of it) may take before the test fails.
TIMEOUT = 120.0


def _job(tmp_path: Path, run: int, *extra: str) -> tuple[list[str], Path, Path]:
    out = tmp_path / f"out-{run}.jsonl"
    states = tmp_path / f"states-{run}.json"
    args = [
        sys.executable,
        str(JOB),
        str(tmp_path / "data"),
        str(tmp_path / "executions.log"),
        str(out),
        str(states),
        "--items",
        str(ITEMS),
        "--max-in-flight",
        str(MAX_IN_FLIGHT),
        *extra,
    ]
    return args, out, states


def _executions(tmp_path: Path) -> collections.Counter[int]:
    log = tmp_path / "executions.log"
    if not log.exists():
        return collections.Counter()
    return collections.Counter(int(line) for line in log.read_text().splitlines())


def _kill_halfway_then_rerun(tmp_path: Path, *extra: str) -> None:
    """Run the job, SIGKILL it about half way, run it again to the end; check the counts."""
    (tmp_path / "data").mkdir()
    args, out1, _ = _job(tmp_path, 1, *extra)
    # A session of its own, so the kill takes the driver's whole process group: for the
    # Ray variant that includes the local Ray the driver started (whose agents would
    # otherwise outlive it).
    first = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while sum(_executions(tmp_path).values()) < ITEMS // 2:
            if first.poll() is not None:
                pytest.fail(f"the job ended before the kill:\n{first.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the job did not get half way")
            time.sleep(0.005)
        killed_at = datetime.now(UTC)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(TIMEOUT)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.stdout.close()
    assert -signal.SIGKILL == first.returncode
    before_kill = [json.loads(line) for line in out1.read_text().splitlines()]
    executions_before = _executions(tmp_path)

    args, out2, states2 = _job(tmp_path, 2, *extra)
    second = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    assert 0 == second.returncode, second.stdout + second.stderr

    # The kill came in the middle: some items were done, some not.
    assert 0 < len(before_kill) < ITEMS
    assert 0 < len(executions_before) < ITEMS
    # Every item's output is in the re-run's output exactly once, in order, and right.
    outputs = [json.loads(line) for line in out2.read_text().splitlines()]
    assert [{"index": i, "square": i * i} for i in range(ITEMS)] == outputs
    executions = _executions(tmp_path)
    assert set(range(ITEMS)) == set(executions)
    # Items that completed before the kill ran once: the instance records say which (their
    # completion time precedes the kill); the outputs yielded before the kill agree.
    states = json.loads(states2.read_text())
    assert ["COMPLETED"] * ITEMS == [s["status"] for s in states]
    completed_before = {
        s["index"] for s in states if datetime.fromisoformat(s["completed_at"]) < killed_at
    }
    assert {o["index"] for o in before_kill} <= completed_before
    assert {i: 1 for i in completed_before} == {i: executions[i] for i in completed_before}
    # Only the items in flight at the kill may have run twice, and none more than that.
    assert max(executions.values()) <= 2
    assert sum(executions.values()) - ITEMS <= MAX_IN_FLIGHT
    recomputed = {i for i, n in executions.items() if n == 2}
    assert recomputed.isdisjoint(completed_before)


def test_killed_map_job_resumes_without_recomputing(tmp_path):
    """A map job SIGKILLed half way and run again recomputes no completed item and outputs each item once."""
    _kill_halfway_then_rerun(tmp_path)


@pytest.mark.slow
def test_killed_map_job_on_ray_resumes_without_recomputing(tmp_path):
    """The same kill and re-run with the job's hub on a local Ray the job starts itself."""
    _kill_halfway_then_rerun(tmp_path, "--ray")
