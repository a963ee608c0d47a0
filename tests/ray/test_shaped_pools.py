"""Resource-shaped activities run in warm pools: packed by Ray, reused, recycled.

A custom resource stands in for the GPU: the session's Ray node has ``gpu_slot=1``, so
activities asking for ``resources={"gpu_slot": 0.25}`` can run four at once. Activities
report through files under the test's tmp dir (they run in other processes): a ledger of
starts, and the pid of every construction of an activity class.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import ray

import duraray as dr
from duraray.runtime.ray.actors import NAMESPACE
from duraray.runtime.ray.pools import pools_actor_name

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

TIMEOUT = 90.0

app = dr.App("rt-shaped", partitions=2, activity_workers=2, activity_pool_idle_s=120)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _append(path: Path, line: str) -> None:
    with open(path, "a") as fh:  # one short O_APPEND write: atomic across processes
        fh.write(line + "\n")


def _wait(predicate, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@app.activity(resources={"gpu_slot": 0.25})
class Model:
    """Stands for a model: built once per worker process, called per activity."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.folder: Path | None = None

    def __call__(self, ctx: dr.ActivityContext, folder: str) -> dict:
        base = Path(folder)
        if self.folder is None:
            self.folder = base
            _append(base / "built", str(self.pid))
        _append(base / "started", f"{ctx.task_id} {self.pid}")
        # Four must be running together before any finishes: proof of packing.
        together = _wait(lambda: len(_lines(base / "started")) >= 4, 60)
        return {"pid": self.pid, "together": together}


@app.activity(resources={"gpu_slot": 0.25}, timeout=1.0, max_workers=1)
def stuck_or_quick(ctx: dr.ActivityContext, seconds: float) -> int:
    """Sleeps ``seconds`` (longer than its timeout, to be stopped), returns its pid."""
    time.sleep(seconds)
    return os.getpid()


@app.activity(resources={"gpu_slot": 0.25}, max_activities_per_worker=1)
def once_per_process(ctx: dr.ActivityContext, _: object) -> int:
    """Returns its pid; a worker runs only one of these."""
    return os.getpid()


@app.activity(resources={"gpu_slot": 0.25}, max_workers=4)
class OtherModel:
    """A second model of the same shape: it must never share a process with ``Model``."""

    def __call__(self, ctx: dr.ActivityContext, _: object) -> int:
        return os.getpid()


@app.activity(resources={"gpu_slot": 0.25}, max_workers=4)
class ThirdModel:
    """A third model of the same shape (see ``OtherModel``)."""

    def __call__(self, ctx: dr.ActivityContext, _: object) -> int:
        return os.getpid()


@app.orchestration
def both_models(ctx: dr.OrchestrationContext, n: int):
    """``n`` calls of each of two model classes of one shape, all at once."""
    calls = [ctx.call_activity(OtherModel) for _ in range(n)]
    calls += [ctx.call_activity(ThirdModel) for _ in range(n)]
    pids = yield dr.when_all(calls)
    return [pids[:n], pids[n:]]


@app.orchestration
def fan_out(ctx: dr.OrchestrationContext, job: list):
    """``job[1]`` activities ``job[0]`` with input ``job[2]``, all at once."""
    name, n, arg = job
    return (yield dr.when_all([ctx.call_activity(name, input=arg) for _ in range(n)]))


@app.orchestration
def one_then_another(ctx: dr.OrchestrationContext, _: object):
    """A call that times out, then one that returns: the pids of both attempts' workers."""
    try:
        yield ctx.call_activity(stuck_or_quick, input=30.0)
    except dr.TaskFailedError as failed:
        first = failed.details.error_type
    second = yield ctx.call_activity(stuck_or_quick, input=0.0)
    return [first, second]


def _pool_stats() -> list[dict]:
    pools = ray.get_actor(pools_actor_name(app.name), namespace=NAMESPACE)
    return ray.get(pools.stats.remote(), timeout=TIMEOUT)


def test_shaped_activities_are_packed_and_their_class_built_once_per_process(
    ray_session, tmp_path: Path
) -> None:
    """Eight ``gpu_slot=0.25`` activities: four run at once, in at most four processes,
    each of which built the activity class exactly once."""
    with app.run(data_dir=str(tmp_path / "data")) as client:
        iid = client.schedule_new_orchestration(fan_out, input=["Model", 8, str(tmp_path)])
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
    assert all(r["together"] for r in state.output)
    pids = {r["pid"] for r in state.output}
    built = _lines(tmp_path / "built")
    assert len(pids) <= 4
    assert sorted(built) == sorted(str(p) for p in pids)  # one construction per process


def test_a_timed_out_activity_gets_its_worker_replaced(ray_session, tmp_path: Path) -> None:
    """With one worker allowed, an activity that overruns its timeout fails with
    TimeoutError, its worker is replaced, and the next activity runs on the new one."""
    with app.run(data_dir=str(tmp_path / "data")) as client:
        iid = client.schedule_new_orchestration(one_then_another, input=None)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        stats = _pool_stats()
    assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
    error_type, second_pid = state.output
    assert "TimeoutError" in error_type
    shaped = [s for s in stats if s["shape"].get("resources") == {"gpu_slot": 0.25}]
    assert any(s["replaced"] >= 1 for s in shaped)
    assert isinstance(second_pid, int)


def test_max_activities_per_worker_recycles_workers(ray_session, tmp_path: Path) -> None:
    """``max_activities_per_worker=1``: every activity runs in a process of its own."""
    with app.run(data_dir=str(tmp_path / "data")) as client:
        iid = client.schedule_new_orchestration(fan_out, input=["once_per_process", 6, None])
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
    assert 6 == len(set(state.output))


def test_two_activity_classes_of_one_shape_never_share_a_process(
    ray_session, tmp_path: Path
) -> None:
    """Two model classes with the same resource shape run in disjoint worker processes
    (one pool per activity: two models never share a GPU slice)."""
    with app.run(data_dir=str(tmp_path / "data")) as client:
        iid = client.schedule_new_orchestration(both_models, input=4)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
    first, second = state.output
    assert not set(first) & set(second)
