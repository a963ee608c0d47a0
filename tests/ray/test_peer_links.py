"""Direct partition links on Ray: a workload that hops between partitions goes over them.

Each ``hopper`` instance adds 1 to three ``tally`` entities spread over the four
partitions (one entity call, and so a message each way, per hop), then calls a
sub-orchestration that runs one activity. The results are checked exactly: every output,
and every tally (an entity operation applied twice or lost shows there). Activities log
their executions to a file under the test's tmp dir, which the kill test uses to strike
mid-run.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import ray

import duraray as dr
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

#: Seconds any single wait may take before it counts as a failure (restarts included).
TIMEOUT = 90.0
PARTITIONS = 4
#: Entity calls per instance, each to the next of TALLIES entities.
HOPS = 3
TALLIES = 8
INSTANCES = 64

app = dr.App("rt-links", partitions=PARTITIONS, activity_workers=2)


@app.entity
class Tally(dr.DurableEntity):
    def add(self, amount: int) -> int:
        value = self.get_state(int, 0) + amount
        self.set_state(value)
        return value


@app.activity
def square(ctx: dr.ActivityContext, arg: list) -> int:
    """Squares ``arg[1]``, logging the execution to the file ``arg[0]``."""
    log_path, x = arg
    with open(log_path, "a") as log:  # one short O_APPEND write: atomic across processes
        log.write(f"{ctx.instance_id} {ctx.task_id}\n")
    return x * x


@app.orchestration
def leaf(ctx: dr.OrchestrationContext, arg: list):
    """Squares its input with the activity."""
    return (yield ctx.call_activity(square, input=arg))


@app.orchestration
def hopper(ctx: dr.OrchestrationContext, arg: list):
    """Adds 1 to tallies n, n+1, n+2 (mod TALLIES), then returns n * n + HOPS."""
    log_path, n = arg
    for k in range(HOPS):
        yield ctx.call_entity(dr.EntityId("tally", f"t{(n + k) % TALLIES}"), "add", 1)
    squared = yield ctx.call_sub_orchestrator(leaf, input=[log_path, n])
    return squared + HOPS


def _executions(log_path: Path) -> int:
    return len(log_path.read_text().splitlines()) if log_path.exists() else 0


def _kill_after(actor: Any, log_path: Path, executions: int) -> int:
    """Kill ``actor`` (Ray restarts it) once ``executions`` activities have run; returns
    how many had run at the kill."""
    deadline = time.monotonic() + TIMEOUT
    while (done := _executions(log_path)) < executions:
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {executions} activity executions within {TIMEOUT} s")
        time.sleep(0.01)
    ray.kill(actor, no_restart=False)
    return done


def _schedule(
    client: dr.Client, pool: ThreadPoolExecutor, log_path: Path, prefix: str
) -> list[str]:
    return list(
        pool.map(
            lambda n: client.schedule_new_orchestration(
                hopper, input=[str(log_path), n], instance_id=f"{prefix}-{n}"
            ),
            range(INSTANCES),
        )
    )


def _check_results(client: dr.Client, ids: list[str], prefix: str) -> None:
    """Every instance completed with its output; every tally was added to exactly once per hop."""
    states = {i: client.wait_for_orchestration_completion(i, timeout=TIMEOUT) for i in ids}
    expected_outputs = {f"{prefix}-{n}": n * n + HOPS for n in range(INSTANCES)}
    assert expected_outputs == {i: s.output for i, s in states.items()}
    assert {dr.OrchestrationStatus.COMPLETED} == {s.runtime_status for s in states.values()}
    expected_tallies = {f"t{j}": INSTANCES * HOPS // TALLIES for j in range(TALLIES)}
    tallies = {}
    for j in range(TALLIES):
        metadata = client.get_entity(dr.EntityId("tally", f"t{j}"))
        tallies[f"t{j}"] = None if metadata is None else metadata.state
    assert expected_tallies == tallies


def _link_counters(stats: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Each partition's ``link_*`` counters, in partition order."""
    ordered = sorted(stats, key=lambda s: s["partition"])
    return [{k: v for k, v in s["counters"].items() if k.startswith("link_")} for s in ordered]


def test_workload_spans_every_partition() -> None:
    """The tallies the workload touches live on every partition (so every hop may cross)."""
    assert INSTANCES % TALLIES == 0
    owners = {partition_for(f"@tally@t{j}", PARTITIONS) for j in range(TALLIES)}
    assert set(range(PARTITIONS)) == owners


def test_cross_partition_workload_goes_over_links(ray_session, tmp_path: Path) -> None:
    """With peer links on, every partition sends frames on them and none is refused."""
    log_path = tmp_path / "executions.log"
    with app.run(data_dir=str(tmp_path / "data")) as client:
        with ThreadPoolExecutor(8) as pool:
            ids = _schedule(client, pool, log_path, "links")
        _check_results(client, ids, "links")
        counters = _link_counters(client.partition_stats())

    assert PARTITIONS == len(counters)
    assert [0] * PARTITIONS == [c["link_rejected"] for c in counters]
    sent = [c["link_frames_sent"] for c in counters]
    assert all(n > 0 for n in sent), counters
    received = sum(c["link_frames_received"] for c in counters)
    assert 0 < received <= sum(sent), counters


def test_cross_partition_workload_without_links(ray_session, tmp_path: Path) -> None:
    """With ``peer_links=False`` the same workload completes on Ray calls alone."""
    log_path = tmp_path / "executions.log"
    with app.run(data_dir=str(tmp_path / "data"), peer_links=False) as client:
        with ThreadPoolExecutor(8) as pool:
            ids = _schedule(client, pool, log_path, "nolinks")
        _check_results(client, ids, "nolinks")
        stats = client.partition_stats()

    assert [{}] * PARTITIONS == _link_counters(stats)


def test_partition_killed_mid_workload(ray_session, tmp_path: Path) -> None:
    """A partition actor killed mid-run: its peers reconnect, and every instance completes
    with the right output, with no entity operation lost or applied twice."""
    log_path = tmp_path / "executions.log"
    with app.run(data_dir=str(tmp_path / "data")) as client:
        victim = ray.get_actor(partition_actor_name(app.name, 1), namespace=NAMESPACE)
        pid_before = ray.get(victim.describe.remote())["pid"]
        with ThreadPoolExecutor(8) as pool:
            killed = pool.submit(_kill_after, victim, log_path, INSTANCES // 4)
            ids = _schedule(client, pool, log_path, "kill")
            executions_at_kill = killed.result()
        _check_results(client, ids, "kill")
        pid_after = ray.get(victim.describe.remote())["pid"]
        counters = _link_counters(client.partition_stats())

    assert executions_at_kill < INSTANCES  # the kill landed mid-run
    assert pid_before != pid_after  # the actor really died and was restarted
    assert [0] * PARTITIONS == [c["link_rejected"] for c in counters]
