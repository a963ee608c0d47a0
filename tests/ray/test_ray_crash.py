"""Crashes on Ray: a killed partition actor or activity worker loses nothing.

Activities run in worker processes, so executions are counted in a file under the test's
tmp dir: one appended line per execution. Results are counted in the recorded histories.
"""

from __future__ import annotations

import collections
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import ray

import duraray as dr
from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name
from duraray.runtime.ray.shared_pool import worker_actor_name

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

#: Seconds any single wait may take before it counts as a failure (restarts included).
TIMEOUT = 90.0


def _record_execution(log_path: str, ctx: dr.ActivityContext) -> None:
    # One short O_APPEND write per execution: atomic, whatever process the activity runs in.
    with open(log_path, "a") as log:
        log.write(f"{ctx.instance_id} {ctx.task_id}\n")


def _executions(log_path: Path) -> collections.Counter[tuple[str, int]]:
    if not log_path.exists():
        return collections.Counter()
    lines = log_path.read_text().splitlines()
    return collections.Counter((i, int(t)) for i, t in (line.split() for line in lines))


def _wait_for_executions(log_path: Path, count: int, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while sum(_executions(log_path).values()) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} activity executions within {timeout} s")
        time.sleep(0.01)


def _kill_after(actor: object, log_path: Path, executions: int) -> None:
    """Kill ``actor`` (Ray restarts it) once ``executions`` activities have run."""
    _wait_for_executions(log_path, executions)
    ray.kill(actor, no_restart=False)


def _completions(client: dr.Client, instance_id: str) -> tuple[list[int], list[int]]:
    """Scheduled task ids and completed task ids (with repeats) of an instance's history."""
    history = client.get_orchestration_history(instance_id)
    scheduled = [e.event_id for e in history if isinstance(e, dr.TaskScheduled)]
    completed = [e.task_scheduled_id for e in history if isinstance(e, dr.TaskCompleted)]
    return scheduled, completed


app = dr.App("rt-crash", partitions=2, activity_workers=2)


@app.activity
def increment(ctx: dr.ActivityContext, arg: list) -> int:
    """Adds one to ``arg[1]`` after a short pause, logging the execution to ``arg[0]``."""
    log_path, x = arg
    _record_execution(log_path, ctx)
    time.sleep(0.002)
    return x + 1


@app.activity
def square(ctx: dr.ActivityContext, arg: list) -> int:
    """Squares ``arg[1]`` after 5 ms, logging the execution to ``arg[0]``."""
    log_path, x = arg
    _record_execution(log_path, ctx)
    time.sleep(0.005)
    return x * x


@app.orchestration
def three_steps(ctx: dr.OrchestrationContext, arg: list):
    """Adds three to ``arg[1]``, one activity at a time."""
    log_path, x = arg
    for _ in range(3):
        x = yield ctx.call_activity(increment, input=[log_path, x])
    return x


@app.orchestration
def sum_of_squares(ctx: dr.OrchestrationContext, arg: list):
    """Squares 0..n-1 in parallel and sums the squares."""
    log_path, n = arg
    squares = yield dr.when_all([ctx.call_activity(square, input=[log_path, i]) for i in range(n)])
    return sum(squares)


def test_partition_actor_killed_mid_run(ray_session, tmp_path: Path) -> None:
    """Killing a partition actor mid-run: every instance completes, each result recorded once."""
    instances, steps = 200, 3
    log_path = tmp_path / "executions.log"
    with app.run(data_dir=str(tmp_path / "data")) as client:
        victim = ray.get_actor(partition_actor_name(app.name, 0), namespace=NAMESPACE)
        pid_before = ray.get(victim.describe.remote())["pid"]
        with ThreadPoolExecutor(16) as pool:
            # The kill lands while instances are still being started and run.
            killed = pool.submit(_kill_after, victim, log_path, instances * steps // 8)
            ids = list(
                pool.map(
                    lambda i: client.schedule_new_orchestration(
                        three_steps, input=[str(log_path), i], instance_id=f"crash-p-{i}"
                    ),
                    range(instances),
                )
            )
            killed.result()

        states = {i: client.wait_for_orchestration_completion(i, timeout=TIMEOUT) for i in ids}
        pid_after = ray.get(victim.describe.remote())["pid"]
        histories = {i: _completions(client, i) for i in ids}

    assert pid_before != pid_after  # the actor really died and was restarted
    expected_outputs = {f"crash-p-{i}": i + steps for i in range(instances)}
    assert expected_outputs == {i: s.output for i, s in states.items()}
    assert {dr.OrchestrationStatus.COMPLETED} == {s.runtime_status for s in states.values()}
    for instance_id, (scheduled, completed) in histories.items():
        assert steps == len(scheduled), instance_id
        assert sorted(scheduled) == sorted(completed), instance_id  # exactly once each
    executions = _executions(log_path)
    recorded = {(i, t) for i, (_, completed) in histories.items() for t in completed}
    assert recorded == set(executions)  # every execution belongs to a recorded task ...
    assert all(executions[key] >= 1 for key in recorded)  # ... executed at least once
    assert sum(executions.values()) >= len(recorded)


def _started_worker(name: str) -> Any:
    """The shared worker ``name`` once the fan-out's first cheap batch has started it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            assert time.monotonic() < deadline, f"{name} not started within {TIMEOUT} s"
            time.sleep(0.01)


def test_activity_worker_killed_mid_fan_out(ray_session, tmp_path: Path) -> None:
    """Killing an activity worker mid fan-out: the sum is right, each result recorded once."""
    n = 500
    log_path = tmp_path / "executions.log"
    with app.run(data_dir=str(tmp_path / "data")) as client:
        instance_id = client.schedule_new_orchestration(
            sum_of_squares, input=[str(log_path), n], instance_id="crash-w"
        )
        worker = _started_worker(worker_actor_name(app.name, 0))
        _kill_after(worker, log_path, n // 5)

        state = client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
        scheduled, completed = _completions(client, instance_id)
        assert ray.get(worker.ping.remote(), timeout=TIMEOUT)  # Ray restarted the worker

    expected = (dr.OrchestrationStatus.COMPLETED, sum(i * i for i in range(n)))
    assert expected == (state.runtime_status, state.output)
    assert n == len(scheduled)
    assert sorted(scheduled) == sorted(completed)  # every result recorded exactly once
    executions = _executions(log_path)
    assert {(instance_id, t) for t in completed} == set(executions)
    assert sum(executions.values()) >= n
    # Results stream back one by one, so the kill repeats at most the activities that were
    # running on the worker: one per batch it ran at once (worker_concurrency).
    assert sum(executions.values()) - n <= app.config.worker_concurrency
