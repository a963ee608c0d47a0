"""Cluster capacity that changes under a running hub, and the demand it tells the autoscaler.

Three properties, on one local ``ray.cluster_utils.Cluster`` whose head node has one CPU:

- a node that joins while a fan-out of CPU-bound activities runs takes some of them, with
  no restart of the hub (declared ``cpu_bound=True``, each goes out alone as a Ray task
  holding one CPU, so Ray may place it on any node with a free one);
- a partition whose activities wait behind ``max_activities_in_flight`` publishes the CPUs
  they want with ``request_resources`` (through the hub's pools actor, see
  ``runtime/ray/demand.py``), capped at that limit, and publishes 0 once it is idle;
- two hubs with such a backlog at once publish the sum of their figures (the cluster's
  demand ledger, ``runtime/ray/ledger.py``); one stopping leaves the other's.

The cluster cannot share a process with the session's Ray, so one subprocess builds it,
runs the hubs in turn (the backlog first, on the one-CPU head; then the join; then the
two at once), prints one JSON line and shuts everything down; each test checks its part
of that line. Its Ray temp
dir is private, so the cluster never becomes the machine's "current cluster" that a
concurrent bare ``ray.init()`` would join.

Reading the published request back: on a local cluster no autoscaler runs and the GCS
does not flag autoscaler v2, so ``request_resources`` takes the v1 path and writes the
bundles, JSON, to the GCS KV key ``AUTOSCALER_RESOURCE_REQUEST_CHANNEL``; the script reads
that key (and would read the v2 cluster resource constraints instead, were v2 flagged).

No timing is asserted: the seconds from ``add_node`` (its return, and its call) to the
first activity on the new node are measured and reported (printed and
``record_property``). The node can take work before ``add_node`` returns, so the first
figure may be negative.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

import pytest

pytestmark = pytest.mark.ray

#: Marks the subprocess's result line among Ray's log output.
RESULT = "DURARAY-RESULT "

#: Activities of the backlog fan-out, their seconds each, and the hub's in-flight limit.
BACKLOG_FAN_OUT, BACKLOG_SECONDS, BACKLOG_CAP = 20, 0.5, 2
#: Activities of the fan-out a node joins, and their seconds each.
JOIN_FAN_OUT, JOIN_SECONDS = 30, 0.4
#: CPUs of the node that joins.
JOIN_CPUS = 2
#: Each of two hubs' fan-outs at once, seconds per activity, and their in-flight limits.
TWO_HUBS_FAN_OUT, TWO_HUBS_SECONDS, TWO_HUBS_CAPS = 40, 0.5, (2, 3)

SCRIPT = textwrap.dedent(
    """
    import contextlib
    import json
    import os
    import sys
    import time
    from pathlib import Path

    import ray
    from ray.cluster_utils import Cluster

    import duraray as dr
    from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name

    backlog_app = dr.App("rt-cap-backlog", partitions=1)
    join_app = dr.App("rt-cap-join", partitions=1)


    def _work(ctx, job):
        # Declared cpu_bound=True, it goes out alone as a task holding one CPU whatever it
        # does; sleeping instead of burning CPU spares the machine's few shared cores.
        index, seconds, ledger, *gate = job
        while gate and not os.path.exists(gate[0]):  # held until the script opens it
            time.sleep(0.05)
        started = time.time()
        node = ray.get_runtime_context().get_node_id()
        if ledger:
            with open(ledger, "a") as fh:  # one short O_APPEND write: atomic
                fh.write(f"{node} {started}\\n")
        time.sleep(seconds)
        return {"index": index, "node": node, "start": started}


    backlog_work = backlog_app.activity(cpu_bound=True, name="backlog_work")(_work)
    join_work = join_app.activity(cpu_bound=True, name="join_work")(_work)


    def _fan_out(activity):
        def fan_out(ctx, job):
            n, seconds, ledger, *gate = job
            return (yield dr.when_all(
                [ctx.call_activity(activity, input=[i, seconds, ledger, *gate]) for i in range(n)]
            ))
        return fan_out


    backlog_fan_out = backlog_app.orchestration(name="backlog_fan_out")(_fan_out("backlog_work"))
    join_fan_out = join_app.orchestration(name="join_fan_out")(_fan_out("join_work"))


    def published():
        \"\"\"(channel, CPUs) of the resources last requested from the autoscaler: the
        bundles of request_resources, each {"CPU": 1} (None: nothing requested yet).\"\"\"
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            from ray._raylet import GcsClient
            from ray.autoscaler.v2.sdk import get_cluster_resource_state

            state = get_cluster_resource_state(GcsClient(ray.get_runtime_context().gcs_address))
            cpus = 0.0
            for constraint in state.cluster_resource_constraints:
                for by_count in constraint.resource_requests:
                    bundle = dict(by_count.request.resources_bundle)
                    cpus += by_count.count * bundle.get("CPU", 0.0)
            return "v2", cpus
        from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
        if raw is None:
            return "v1", None
        bundles = json.loads(raw)
        assert all(b == {"CPU": 1} for b in bundles), bundles
        return "v1", len(bundles)


    def partition_pid(app):
        actor = ray.get_actor(partition_actor_name(app.name, 0), namespace=NAMESPACE)
        return ray.get(actor.describe.remote())["pid"]


    def backlog(data_dir, n, seconds, cap):
        \"\"\"The fan-out behind max_activities_in_flight, sampling what is published.\"\"\"
        samples = []
        with backlog_app.run(
            data_dir=data_dir, max_activities_in_flight=cap, activity_workers=2
        ) as client:
            iid = client.schedule_new_orchestration(backlog_fan_out, input=[n, seconds, None])
            t0 = time.monotonic()
            while True:
                # Published first, stats after: the activities left only shrink, so the
                # figure read was made (earlier) with at least as many left as read here.
                channel, cpus = published()
                stats = client.partition_stats()[0]
                state = client.get_orchestration_state(iid)
                samples.append({
                    "t": round(time.monotonic() - t0, 3),
                    "published": cpus,
                    "left": stats["activities_in_flight"],
                    "waiting": stats["activities_waiting"],
                    "done": state.runtime_status.value,
                })
                if state.runtime_status.value != "RUNNING" or time.monotonic() - t0 > 120:
                    break
                time.sleep(0.1)
            state = client.wait_for_orchestration_completion(iid, timeout=120)
            # Idle now: the partition reports 0 within a second or so; poll for it.
            idle = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                idle = published()[1]
                if idle == 0:
                    break
                time.sleep(0.1)
            idle_after = round(time.monotonic() - t0, 3)
        return {
            "channel": channel,
            "status": state.runtime_status.value,
            "output": state.output,
            "samples": samples,
            "idle_published": idle,
            "idle_after_s": idle_after,
        }


    def join(cluster, data_dir, ledger, n, seconds, cpus):
        \"\"\"The fan-out a node joins: add_node once the first activity has started.\"\"\"
        with join_app.run(data_dir=data_dir, activity_workers=2) as client:
            head = ray.get_runtime_context().get_node_id()
            pid_before = partition_pid(join_app)
            iid = client.schedule_new_orchestration(join_fan_out, input=[n, seconds, ledger])
            deadline = time.monotonic() + 120
            while not Path(ledger).exists() or not Path(ledger).read_text():
                assert time.monotonic() < deadline, "no activity started"
                time.sleep(0.05)
            started_before = len(Path(ledger).read_text().splitlines())
            add_called_at = time.time()
            node = cluster.add_node(num_cpus=cpus)
            added_at = time.time()
            seen = []  # [published CPUs, activities left] while the fan-out runs
            while client.get_orchestration_state(iid).runtime_status.value == "RUNNING":
                cpus = published()[1]
                seen.append([cpus, client.partition_stats()[0]["activities_in_flight"]])
                if time.monotonic() > deadline:
                    break  # wait_for_orchestration_completion reports it
                time.sleep(0.1)
            state = client.wait_for_orchestration_completion(iid, timeout=120)
            pid_after = partition_pid(join_app)
        return {
            "status": state.runtime_status.value,
            "output": state.output,
            "head": head,
            "new_node": node.node_id,
            "add_called_at": add_called_at,
            "added_at": added_at,
            "started_before_add": started_before,
            "pid_before": pid_before,
            "pid_after": pid_after,
            "published_seen": seen,
        }


    def wait_published(want, seconds):
        \"\"\"Poll the published CPUs until they equal ``want``; the last figure read.\"\"\"
        deadline = time.monotonic() + seconds
        while True:
            cpus = published()[1]
            if cpus == want or time.monotonic() > deadline:
                return cpus
            time.sleep(0.1)


    def two_hubs(data_dir, n, seconds, cap_a, cap_b):
        \"\"\"Two hubs with a backlog at once: the request is the sum of their figures;
        stopping one leaves the other's; the last one idle leaves nothing. Hub b's
        activities wait for a gate file, so its backlog lasts until the script has read
        what it checks.\"\"\"
        from duraray.runtime.ray.ledger import existing_ledger

        gate = f"{data_dir}/gate"
        with contextlib.ExitStack() as both:
            b = both.enter_context(join_app.run(
                data_dir=f"{data_dir}/b", max_activities_in_flight=cap_b, activity_workers=2
            ))
            with backlog_app.run(
                data_dir=f"{data_dir}/a", max_activities_in_flight=cap_a, activity_workers=2
            ) as a:
                # b's first activities hold every CPU while they wait for the gate, so
                # a's never start: no batch follows a's first, and a figure of a's that
                # came within a second of its last report reaches the ledger only from
                # the partition's idle loop (tests/ray/test_demand_ledger.py has the
                # deterministic case).
                ib = b.schedule_new_orchestration(join_fan_out, input=[n, seconds, None, gate])
                b_alone = wait_published(cap_b, 60)
                a.schedule_new_orchestration(backlog_fan_out, input=[n, seconds, None])
                together = wait_published(cap_a + cap_b, 60)
                entries = ray.get(existing_ledger().entries.remote(), timeout=30)
            # Hub a stopped with its backlog: only b's figure is left.
            after_stop = wait_published(cap_b, 30)
            left = b.partition_stats()[0]["activities_in_flight"]
            open(gate, "w").close()
            state = b.wait_for_orchestration_completion(ib, timeout=120)
            idle = wait_published(0, 30)
        return {
            "b_alone": b_alone,
            "together": together,
            "entries": entries,
            "after_stop": after_stop,
            "b_left_after_stop": left,
            "b_status": state.runtime_status.value,
            "idle": idle,
        }


    def main(data_dir):
        t0 = time.monotonic()
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        try:
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
            result = {
                "backlog": backlog(
                    f"{data_dir}/backlog", %(backlog_n)d, %(backlog_s)r, %(backlog_cap)d
                ),
                "join": join(
                    cluster, f"{data_dir}/join", f"{data_dir}/ledger",
                    %(join_n)d, %(join_s)r, %(join_cpus)d,
                ),
                "two_hubs": two_hubs(
                    f"{data_dir}/two", %(two_n)d, %(two_s)r, %(two_cap_a)d, %(two_cap_b)d
                ),
                "script_s": round(time.monotonic() - t0, 1),
            }
            print(%(marker)r + json.dumps(result), flush=True)
        finally:
            ray.shutdown()
            cluster.shutdown()


    main(sys.argv[1])
    """
) % {
    "marker": RESULT,
    "backlog_n": BACKLOG_FAN_OUT,
    "backlog_s": BACKLOG_SECONDS,
    "backlog_cap": BACKLOG_CAP,
    "join_n": JOIN_FAN_OUT,
    "join_s": JOIN_SECONDS,
    "join_cpus": JOIN_CPUS,
    "two_n": TWO_HUBS_FAN_OUT,
    "two_s": TWO_HUBS_SECONDS,
    "two_cap_a": TWO_HUBS_CAPS[0],
    "two_cap_b": TWO_HUBS_CAPS[1],
}


@pytest.fixture(scope="module")
def cluster_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run SCRIPT once for all three tests (a cluster start is most of its cost) in a
    subprocess with a private Ray temp dir; returns its result line, decoded."""
    tmp_path = tmp_path_factory.mktemp("capacity")
    script = tmp_path / "capacity_script.py"
    script.write_text(SCRIPT)
    (tmp_path / "data").mkdir()
    # Short: Ray's unix socket paths live under it and must stay under 108 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="drcap", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "data")],
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
    result: dict[str, Any] = json.loads(lines[0][len(RESULT) :])
    return result


@pytest.mark.timeout(300)
def test_a_node_that_joins_mid_fan_out_is_used_without_a_hub_restart(
    cluster_result: dict[str, Any], record_property: Any
) -> None:
    """A 2-CPU node added to a 1-CPU cluster while 30 CPU-bound activities run takes some
    of them; every result is right and the partition actor is the same process before
    and after. Reports the seconds from add_node to the first activity on the new node."""
    join = cluster_result["join"]
    assert "COMPLETED" == join["status"]
    assert list(range(JOIN_FAN_OUT)) == [r["index"] for r in join["output"]]
    # The node joined mid fan-out: something ran before it, and something was left for it.
    assert 0 < join["started_before_add"] < JOIN_FAN_OUT
    on_new = [r for r in join["output"] if r["node"] == join["new_node"]]
    assert on_new, {r["node"] for r in join["output"]}
    assert {join["head"], join["new_node"]} == {r["node"] for r in join["output"]}
    assert join["pid_before"] == join["pid_after"]

    # From add_node's return (the measure) and from its call: add_node returns
    # only after the node is up, and the node may take work before that (a negative value).
    first_start = min(r["start"] for r in on_new)
    first_on_new = first_start - join["added_at"]
    from_call = first_start - join["add_called_at"]
    record_property("add_node_to_first_activity_s", round(first_on_new, 3))
    record_property("add_node_call_to_first_activity_s", round(from_call, 3))
    record_property("activities_on_new_node", len(on_new))
    record_property("script_s", cluster_result["script_s"])
    # Informational: what the hub published while its activities were out as tasks.
    published = sorted({p or 0 for p, left in join["published_seen"] if left})
    record_property("published_during_join", published)
    print(
        f"first activity on the new node: {first_on_new:.2f} s after add_node returned, "
        f"{from_call:.2f} s after it was called; "
        f"{len(on_new)}/{JOIN_FAN_OUT} activities ran there; "
        f"published while activities were out: {published}"
    )


@pytest.mark.timeout(300)
def test_the_autoscaler_sees_the_backlog_capped_and_then_nothing(
    cluster_result: dict[str, Any], record_property: Any
) -> None:
    """20 CPU-bound activities behind max_activities_in_flight=2: while more than the cap
    are left, the request published to the autoscaler is the partition's wanted CPUs,
    min(out + waiting, cap) = 2 bundles of one CPU (once first reported, it stays so, and
    never exceeds the cap); once the fan-out is done and the hub idles, it is 0."""
    backlog = cluster_result["backlog"]
    assert "COMPLETED" == backlog["status"]
    assert list(range(BACKLOG_FAN_OUT)) == [r["index"] for r in backlog["output"]]
    samples = backlog["samples"]
    figures = [s["published"] or 0 for s in samples]
    assert max(figures) <= BACKLOG_CAP, samples
    first = next((i for i, s in enumerate(samples) if s["published"] == BACKLOG_CAP), None)
    assert first is not None, samples
    # Reported while the backlog was large, and unchanged while it stayed beyond the cap:
    # with more than the cap left, out + waiting is at least the cap even in the moment a
    # finished task no longer counts and its result is not committed yet.
    assert samples[first]["left"] > BACKLOG_CAP, samples
    backlogged = [s for s in samples[first:] if s["left"] > BACKLOG_CAP]
    assert all(s["published"] == BACKLOG_CAP for s in backlogged), samples
    assert 0 == backlog["idle_published"], backlog

    record_property("autoscaler_channel", backlog["channel"])
    record_property("published_figures", sorted(set(figures)))
    # Each change of the published figure: (seconds into the fan-out, CPUs, activities left).
    changes = [
        (s["t"], s["published"], s["left"])
        for i, s in enumerate(samples)
        if i == 0 or s["published"] != samples[i - 1]["published"]
    ]
    print(
        f"channel {backlog['channel']}; published (t, CPUs, left): {changes}; "
        f"0 again at {backlog['idle_after_s']} s"
    )


@pytest.mark.timeout(300)
def test_two_hubs_demand_adds_up_and_one_stopping_leaves_the_others(
    cluster_result: dict[str, Any],
) -> None:
    """Two hubs with a backlog on one cluster: the one request Ray keeps is the sum of
    both figures (runtime/ray/ledger.py), not whichever hub reported last; stopping one
    leaves the other's figure published; once the other is idle, nothing is asked. The
    backlogs wait for CPUs the cluster lacks, so no batch follows their first: the
    partitions report them from their idle loops (once, a change that came within a
    second of the previous report was never reported)."""
    two = cluster_result["two_hubs"]
    cap_a, cap_b = TWO_HUBS_CAPS
    assert cap_b == two["b_alone"], two
    assert cap_a + cap_b == two["together"], two
    assert {"rt-cap-backlog": cap_a, "rt-cap-join": cap_b} == two["entries"], two
    assert cap_b == two["after_stop"], two
    assert two["b_left_after_stop"] > cap_b, two  # b still had its backlog then
    assert "COMPLETED" == two["b_status"], two
    assert 0 == two["idle"], two
