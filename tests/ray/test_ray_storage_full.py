"""Disk full on Ray: a partition actor whose store is full answers StorageFullError and
stays up (no crash loop, no restart), then takes the writes that fit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray

import duraray as dr
from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

TIMEOUT = 60.0

app = dr.App("rt-storage-full", partitions=1, activity_workers=1)


@app.orchestration
def echo_length(ctx: dr.OrchestrationContext, text: str):
    return len(text)


def test_partition_actor_answers_storage_full_and_is_not_restarted(
    ray_session, tmp_path: Path
) -> None:
    """A start that does not fit in a 1 MiB store fails at the caller with
    StorageFullError; the same actor process (pid, start time) then stores a small one."""
    options = {"max_map_size": 1 << 20, "fsync": False, "peer_links": False}
    with app.run(data_dir=str(tmp_path / "data"), **options) as client:
        actor = ray.get_actor(partition_actor_name(app.name, 0), namespace=NAMESPACE)
        before = ray.get(actor.describe.remote(), timeout=TIMEOUT)
        with pytest.raises(dr.StorageFullError, match=r"partition p0 .* could not commit"):
            client.schedule_new_orchestration(echo_length, input="x" * 700_000, instance_id="big")
        assert client.get_orchestration_state("big") is None
        small = client.schedule_new_orchestration(echo_length, input="ok", instance_id="small")
        assert client.wait_for_orchestration_completion(small, timeout=TIMEOUT).output == 2
        after = ray.get(actor.describe.remote(), timeout=TIMEOUT)
        assert (before["pid"], before["started"]) == (after["pid"], after["started"])
