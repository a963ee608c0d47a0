"""On Ray, one bad item does not restart its partition actor (engine/poison.py).

The poison here is real, not injected: an orchestration signals an entity id that holds a
lone surrogate (``EntityId.from_stored`` builds it without checks), which no store key can
hold, so the batch that sends it raises inside the partition. Before poison isolation the
actor died and Ray restarted it into the same batch, again and again.
"""

from __future__ import annotations

import sys
import time

import pytest
import ray

import duraray as dr
from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

TIMEOUT = 60.0

app = dr.App("rt-poison", partitions=1, activity_workers=1)


@app.activity
def double(ctx: dr.ActivityContext, x: int) -> int:
    """Twice ``x``."""
    return 2 * x


@app.orchestration
def signals_a_forged_entity(ctx: dr.OrchestrationContext, x: int):
    """Doubles ``x``, then signals an entity id no store can hold."""
    doubled = yield ctx.call_activity(double, input=x)
    ctx.signal_entity(dr.EntityId.from_stored("@counter@\ud800"), "add", 1)
    return doubled


@app.orchestration
def fine(ctx: dr.OrchestrationContext, x: int):
    """Doubles ``x``."""
    return (yield ctx.call_activity(double, input=x))


def test_a_poison_orchestration_fails_alone_and_the_actor_lives_on(ray_session, tmp_path) -> None:
    """The poison instance fails with the error; the instances beside it complete; the
    partition actor keeps its process (no restart); the rebuild shows in the stats."""
    with app.run(data_dir=str(tmp_path / "data")) as client:
        actor = ray.get_actor(partition_actor_name(app.name, 0), namespace=NAMESPACE)
        pid_before = ray.get(actor.describe.remote())["pid"]
        bad = client.schedule_new_orchestration(signals_a_forged_entity, input=1)
        good = [client.schedule_new_orchestration(fine, input=n) for n in range(5)]
        state = client.wait_for_orchestration_completion(bad, timeout=TIMEOUT)
        outputs = [
            client.wait_for_orchestration_completion(i, timeout=TIMEOUT).output for i in good
        ]
        deadline = time.monotonic() + TIMEOUT
        while not (stats := client.partition_stats()[0])["counters"].get("rebuilds"):
            assert time.monotonic() < deadline, stats
            time.sleep(0.05)
        pid_after = ray.get(actor.describe.remote())["pid"]
    assert dr.OrchestrationStatus.FAILED == state.runtime_status
    assert "failed inside the partition" in state.failure_details.message
    assert [2 * n for n in range(5)] == outputs
    assert pid_before == pid_after
    assert stats["counters"]["poison_items"] >= 1
