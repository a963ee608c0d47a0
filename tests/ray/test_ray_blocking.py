"""On Ray, an orchestrator that blocks its partition actor's batch thread is reported with
its own stack (the actor's and Ray's frames left out)."""

from __future__ import annotations

import sys
import time

import pytest
import ray

import duraray as dr

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

TIMEOUT = 60.0

app = dr.App("rt-blocking", partitions=1, activity_workers=1, blocking_episode_warning_s=0.2)


def fetch_rates_synchronously() -> None:
    time.sleep(1.0)  # the mistake the watchdog names: blocking inside orchestrator code


@app.orchestration
def sleeper(ctx: dr.OrchestrationContext, _: int):
    """Blocks its partition for a second on its first run."""
    if not ctx.is_replaying:
        fetch_rates_synchronously()
    return "woke"


def test_a_blocking_orchestrator_is_reported_from_its_partition_actor(
    ray_session, tmp_path
) -> None:
    """The report names the user's frames, counts once, and the instance completes."""
    with app.run(data_dir=str(tmp_path / "data")) as client:
        iid = client.schedule_new_orchestration(sleeper, input=0)
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        report = client.get_blocking_report(iid)
        counters = client.partition_stats()[0]["counters"]
    assert "woke" == state.output
    assert report is not None
    assert report.seconds >= 0.2
    assert report.finished_after is not None
    assert report.finished_after >= report.seconds
    assert "in sleeper\n    fetch_rates_synchronously()" in report.stack
    assert "in fetch_rates_synchronously\n    time.sleep(1.0)" in report.stack
    assert "duraray/runtime" not in report.stack
    assert "site-packages" not in report.stack  # no Ray nor executor frames
    assert report.stack.startswith(f'  File "{__file__}"')
    expected_count = 1
    assert expected_count == counters["blocking_episodes"]
