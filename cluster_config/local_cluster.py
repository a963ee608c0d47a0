"""A 3-node Ray cluster on one machine, a small duraray hub on it, then shut it all down.

Run from the repository root::

    .venv/bin/python cluster_config/local_cluster.py

``ray.cluster_utils.Cluster`` starts a head node and two worker nodes as separate raylets
on this machine (the same thing ``ray start --head`` / ``ray start --address=...`` does
across machines). The driver connects to the cluster and launches the hub with
``app.start``: the partitions are pinned to the driver's node (the one holding the data
dir), the activity workers are spread over all three nodes (they start on the first cheap
activity: until they answer, batches run as one-CPU tasks), and an activity that asks for
a custom resource runs only on the node that has it. Prints one JSON line.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray
import structlog
from ray.cluster_utils import Cluster

import duraray as dr

# Keep stdout for the one JSON result line: the driver's log lines go to stderr.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

FAN_OUT = 192  # six batches of 32: enough to reach every started activity worker

app = dr.App("local-cluster", partitions=2, activity_workers=6)


@app.activity
def where(ctx: dr.ActivityContext, i: int) -> str:
    """Report the Ray node this activity ran on."""
    return ray.get_runtime_context().get_node_id()


@app.activity(resources={"special": 1})
def on_special_node(ctx: dr.ActivityContext) -> str:
    """Runs only where the custom resource ``special`` exists."""
    return ray.get_runtime_context().get_node_id()


@app.orchestration
def fan_out(ctx: dr.OrchestrationContext, n: int):
    """Call ``where`` n times in parallel, then the resource-bound activity once."""
    nodes = yield dr.when_all([ctx.call_activity(where, input=i) for i in range(n)])
    special = yield ctx.call_activity(on_special_node)
    return {"nodes": nodes, "special": special}


def main() -> int:
    started = time.monotonic()
    node_args = {"num_cpus": 2, "object_store_memory": 100 * 1024 * 1024}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**node_args, "include_dashboard": False},
    )
    workers = [
        cluster.add_node(**node_args),
        cluster.add_node(**node_args, resources={"special": 1}),
    ]
    cluster.wait_for_nodes()
    names = {cluster.head_node.node_id: "head"}
    names.update({node.node_id: f"worker{i + 1}" for i, node in enumerate(workers)})
    result: dict[str, object] = {}
    try:
        ray.init(
            address=cluster.address,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )
        with tempfile.TemporaryDirectory(prefix="duraray-cluster-") as data_dir:
            # In a real cluster: run this driver on the node whose disk holds data_dir.
            client = app.start(address=cluster.address, data_dir=data_dir)
            try:
                again = app.start(address=cluster.address, data_dir=data_dir)  # idempotent
                iid = client.schedule_new_orchestration(fan_out, input=FAN_OUT)
                state = client.wait_for_orchestration_completion(iid, timeout=120)
                partition_nodes = sorted(
                    {
                        names.get(ray.get(actor.describe.remote())["node_id"], "?")
                        for actor in (
                            ray.get_actor(f"duraray/{app.name}/p{i}", namespace="duraray")
                            for i in range(app.config.partitions)
                        )
                    }
                )
                attached = dr.Client.attach(app.name, address=cluster.address)
                attached_status = attached.get_orchestration_state(iid).runtime_status.name
            finally:
                app.stop()
        output = state.output or {}
        counts = collections.Counter(names.get(n, "?") for n in output.get("nodes", []))
        result = {
            "ok": state.runtime_status.name == "COMPLETED"
            and partition_nodes == ["head"]
            and names.get(output.get("special")) == "worker2",
            "status": state.runtime_status.name,
            "cluster_nodes": len(ray.nodes()),
            "activities": sum(counts.values()),
            "activities_per_node": dict(sorted(counts.items())),
            "special_resource_node": names.get(output.get("special"), "?"),
            "partition_nodes": partition_nodes,
            "second_start_attached": again.hub == app.name,
            "attached_client_status": attached_status,
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
