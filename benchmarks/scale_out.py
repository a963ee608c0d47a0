"""scale_out: hello5 and a fan-out with the partitions spread over a multi-node Ray cluster.

A child process builds a local ``ray.cluster_utils.Cluster`` (3 nodes by default, one
logical CPU each) and runs, for each placement, ``hello5`` (N orchestrations), a 1 x M
``fan_out`` and ``bank`` (transfers locking two accounts: messages between partitions on
every step) on a hub of P partitions:

- ``placement="spread"``: the partitions round-robin over the nodes, each with its data
  on its node (see ``HubConfig.placement``); partition-to-partition messages cross nodes;
- ``placement="local"``: every partition on the head node, as on a single machine.

Each line's ``variant`` names the placement; its ``config`` gives ``nodes`` (in the
cluster) and ``partition_nodes`` (that hosted the hub's partitions, read from the
partition actors). On one machine the nodes share its cores: the figures
show what spreading costs or saves in messaging, not added capacity. A cluster cannot
share a process with another Ray instance, so ``run`` (what ``duraray bench`` calls)
starts the child with a private Ray temp dir and collects its JSON lines.

    python benchmarks/scale_out.py [--n 2000] [--fan-out 5000] [--bank 2000] [--nodes 3] [--quick]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common

DEFAULT_N, QUICK_N = 2000, 200
DEFAULT_FAN_OUT, QUICK_FAN_OUT = 5000, 500
DEFAULT_BANK, QUICK_BANK = 2000, 200
DEFAULT_NODES = 3
PLACEMENTS = ("spread", "local")
#: Seconds the child may take in all (cluster start, both placements, shutdown).
CHILD_TIMEOUT = 900


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    options: dict[str, Any] | None = None,
    nodes: int = DEFAULT_NODES,
    fan_out: int | None = None,
    bank: int | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """Run the scale-out lines in a child process (it owns the cluster); returns them."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    fan_out = common.pick_n(fan_out, quick, DEFAULT_FAN_OUT, QUICK_FAN_OUT)
    bank = common.pick_n(bank, quick, DEFAULT_BANK, QUICK_BANK)
    # Short: Ray's unix socket paths live under it and must stay under 108 bytes.
    ray_tmp = tempfile.mkdtemp(prefix="drso", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--n",
        str(n),
        "--fan-out",
        str(fan_out),
        "--bank",
        str(bank),
        "--nodes",
        str(nodes),
        "--partitions",
        str(partitions),
    ]
    if data_dir:
        args += ["--data-dir", data_dir]
    if not fsync:
        args.append("--no-fsync")
    for key, value in (options or {}).items():
        args += ["--option", f"{key}={json.dumps(value)}"]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = []
    for text in proc.stdout.splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            lines.append(line)
            print(text, flush=True)
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scale_out child exited with {proc.returncode}: {proc.stderr[-3000:]}")
    return lines


def _child(args: Any) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from benchmarks import bank, fan_out, hello5

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        for _ in range(args.nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        base = common.hub_options(args)
        for placement in PLACEMENTS:
            options = {**base, "placement": placement}
            line = hello5.run_durable(
                args.n,
                partitions=args.partitions,
                fsync=not args.no_fsync,
                data_dir=args.data_dir,
                options=options,
            )
            line["variant"] = placement
            common.emit(line)
            with common.running_hub(
                "fan_out",
                partitions=args.partitions,
                fsync=not args.no_fsync,
                data_dir=args.data_dir,
                options=options,
            ) as hub:
                line = fan_out._measure(hub, 1, args.fan_out, profile=None, label="scale_out")
                line["variant"] = f"{placement} 1x{args.fan_out}"
            common.emit(line)
            with contextlib.redirect_stdout(io.StringIO()):  # it prints its own line
                [line] = bank.run(
                    args.bank,
                    partitions=args.partitions,
                    fsync=not args.no_fsync,
                    data_dir=args.data_dir,
                    options=options,
                )
            line["variant"] = placement
            common.emit(line)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> None:
    p = common.parser("scale_out", default_n=DEFAULT_N, quick_n=QUICK_N)
    p.add_argument(
        "--fan-out",
        type=int,
        default=None,
        help=f"activities of the fan-out (default {DEFAULT_FAN_OUT})",
    )
    p.add_argument(
        "--bank", type=int, default=None, help=f"bank transfers (default {DEFAULT_BANK})"
    )
    p.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="cluster nodes (default 3)")
    p.add_argument("--child", action="store_true", help=argparse_hidden())
    args = p.parse_args(argv)
    common.quiet_logs()
    if args.child:
        started = time.perf_counter()
        _child(args)
        print(f"scale_out child done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        return
    run(
        args.n,
        partitions=args.partitions,
        quick=args.quick,
        data_dir=args.data_dir,
        fsync=not args.no_fsync,
        options=common.hub_options(args),
        nodes=args.nodes,
        fan_out=args.fan_out,
        bank=args.bank,
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
