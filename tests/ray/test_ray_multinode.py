"""A hub on a local 3-node Ray cluster spreads a fan-out's activities over every node.

The cluster (``ray.cluster_utils.Cluster``) cannot share a process with the session's Ray,
so a subprocess builds it, runs the hub with ``App.run`` (which uses the Ray that the
script already initialised), prints one JSON line and shuts everything down. Its Ray temp
dir is private, so the cluster never becomes the machine's "current cluster" that a
concurrent bare ``ray.init()`` would join.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

#: Marks the subprocess's result line among Ray's log output.
RESULT = "DURARAY-RESULT "

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import time

    import ray
    from ray.cluster_utils import Cluster

    import duraray as dr

    app = dr.App("rt-multinode", partitions=2)


    @app.activity
    def node_of(ctx, i):
        return ray.get_runtime_context().get_node_id()


    @app.orchestration
    def where_did_they_run(ctx, n):
        return (yield dr.when_all([ctx.call_activity(node_of, input=i) for i in range(n)]))


    def main(data_dir, fan_out):
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
            nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
            # Inline execution would keep these trivial activities on the partitions' node:
            # this test is about where the worker pool runs them.
            with app.run(data_dir=data_dir, activity_workers=6, inline_activities=False) as client:
                # A first fan-out on each partition starts the shared workers (they start on
                # first use) and has each partition find them ...
                from duraray.runtime.engine.routing import partition_for

                for p in range(2):
                    warm_id = next(f"warm{i}" for i in range(99) if partition_for(f"warm{i}", 2) == p)
                    warm_up = client.schedule_new_orchestration(
                        where_did_they_run, input=fan_out, instance_id=warm_id
                    )
                    client.wait_for_orchestration_completion(warm_up, timeout=120)
                deadline = time.monotonic() + 60
                while min(p.get("shared_workers", 0) for p in client.partition_stats()) < 6:
                    assert time.monotonic() < deadline, client.partition_stats()
                    time.sleep(0.05)
                workers = [
                    ray.get_actor(f"duraray/{app.name}/w{j}", namespace="duraray")
                    for j in range(6)
                ]
                worker_nodes = ray.get([w.node_id.remote() for w in workers])
                # ... the second one runs on them, on every node.
                instance_id = client.schedule_new_orchestration(where_did_they_run, input=fan_out)
                state = client.wait_for_orchestration_completion(instance_id, timeout=120)
            print(%(marker)r + json.dumps({
                "status": state.runtime_status.value,
                "cluster_nodes": nodes,
                "activity_nodes": state.output,
                "worker_nodes": worker_nodes,
            }), flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()


    main(sys.argv[1], int(sys.argv[2]))
    """
) % {"marker": RESULT}


def _run_cluster_script(tmp_path: Path, source: str, *args: str) -> dict:
    """Run ``source`` (a script that builds its own cluster) in a subprocess with a
    private Ray temp dir; returns the one result line it printed, decoded."""
    script = tmp_path / "cluster_script.py"
    script.write_text(source)
    # Short: Ray's unix socket paths live under it and must stay under 108 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="drmn", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "data"), *args],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=tmp_path,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert 0 == proc.returncode, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    assert 1 == len(lines), proc.stdout[-4000:]
    result: dict = json.loads(lines[0][len(RESULT) :])
    return result


@pytest.mark.timeout(300)
def test_fan_out_spreads_over_every_node(tmp_path: Path) -> None:
    """300 activities of one fan-out run on all 3 nodes of a local cluster."""
    fan_out = 300
    result = _run_cluster_script(tmp_path, SCRIPT, str(fan_out))

    expected_status, expected_node_count = "COMPLETED", 3
    assert expected_status == result["status"]
    assert expected_node_count == len(result["cluster_nodes"])
    assert fan_out == len(result["activity_nodes"])
    assert set(result["cluster_nodes"]) == set(result["worker_nodes"]), result["worker_nodes"]
    assert set(result["cluster_nodes"]) == set(result["activity_nodes"])


SPREAD_SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import shutil
    import sys

    import ray
    from ray.cluster_utils import Cluster

    import duraray as dr
    from duraray.runtime.ray.manager import PartitionManager

    app = dr.App("rt-spread", partitions=6)


    @app.entity
    class Tally(dr.DurableEntity):
        def add(self, amount):
            self.set_state(self.get_state(int, 0) + amount)
            return self.get_state(int, 0)


    @app.orchestration
    def bump_all(ctx, n):
        # Calls entities on every partition: messages cross nodes.
        results = []
        for i in range(n):
            results.append((yield ctx.call_entity(dr.EntityId("tally", f"t{i}"), "add", 1)))
        return results


    def partition_nodes():
        handle = PartitionManager.find(app.name)
        return [info["node_id"] for info in ray.get([p.describe.remote() for p in handle.partitions])]


    def run_once(data_dir, n):
        with app.run(data_dir=data_dir, placement="spread") as client:
            ids = client.schedule_new_orchestrations("bump_all", [n] * 10)
            states = client.wait_for_orchestrations(ids, timeout=120)
            stats = client.partition_stats()
            return {
                "statuses": sorted({s.runtime_status.value for s in states}),
                "outputs": [s.output for s in states],
                "nodes": partition_nodes(),
                "link_frames": sum(p["counters"].get("link_frames_sent", 0) for p in stats),
            }


    def main(data_dir):
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
            cluster_nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
            first = run_once(data_dir, 12)
            second = run_once(data_dir, 12)  # the recorded placement is honoured
            with open(os.path.join(data_dir, app.name, "placement.json")) as fh:
                recorded = json.load(fh)
            errors = {}
            try:
                with app.run(data_dir=data_dir, placement="local"):
                    pass
            except dr.HubConfigurationError as exc:
                errors["local"] = str(exc)
            shutil.rmtree(os.path.join(data_dir, app.name, "p4"))
            try:
                with app.run(data_dir=data_dir, placement="spread"):
                    pass
            except dr.HubConfigurationError as exc:
                errors["missing"] = str(exc)
            print(%(marker)r + json.dumps({
                "cluster_nodes": cluster_nodes,
                "first": first,
                "second": second,
                "recorded": [p["node_id"] for p in recorded["partitions"]],
                "created": recorded["created"],
                "errors": errors,
            }), flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()


    main(sys.argv[1])
    """
) % {"marker": RESULT}


@pytest.mark.timeout(300)
def test_spread_placement_puts_partitions_on_every_node_and_keeps_them_there(
    tmp_path: Path,
) -> None:
    """placement="spread" on 3 nodes: 6 partitions over all 3, messages crossing nodes
    on the peer links; a second launch finds each partition on the node it was recorded
    on; a "local" launch of the spread hub, and a partition whose data went missing, are
    refused with a HubConfigurationError."""
    result = _run_cluster_script(tmp_path, SPREAD_SCRIPT)

    first, second = result["first"], result["second"]
    assert ["COMPLETED"] == first["statuses"]
    assert set(result["cluster_nodes"]) == set(first["nodes"])
    assert first["link_frames"] > 0
    # Each of the 10 instances added 1 to t0..t11 in turn: every tally ends at 10, then 20.
    assert list(range(1, 11)) == sorted(out[0] for out in first["outputs"])
    assert ["COMPLETED"] == second["statuses"]
    assert list(range(11, 21)) == sorted(out[11] for out in second["outputs"])
    assert first["nodes"] == second["nodes"] == result["recorded"]
    assert result["created"] is True
    assert "placement='spread'" in result["errors"]["local"]
    assert "partition 4" in result["errors"]["missing"]
