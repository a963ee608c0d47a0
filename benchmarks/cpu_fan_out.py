"""cpu_fan_out: one orchestration fanning out N activities that each burn W ms of CPU.

The work users bring: activities heavy enough that where they run matters. Default N = 8 x
the cluster's CPUs, W = 200 ms. Runs on the shared pool (``burn``: the dispatch plan
decides) and with ``num_cpus=1`` (``burn_cpu1``), then the same work as plain Ray tasks in
the same process. Each line reports ``efficiency`` = (N x W / CPUs) / wall (1.0 = every
core busy all the time), ``max_at_once`` (most activities seen running at the same
moment, from each activity's own start and end times), ``processes`` (distinct pids that
ran them) and, for duraray, ``ratio`` = its efficiency / plain Ray's. Each variant runs
once untimed first (warm worker processes, learned costs), as plain Ray does.

    python benchmarks/cpu_fan_out.py [--n 16] [--ms 200] [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray

import duraray as dr
from benchmarks import common

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

DEFAULT_MS, QUICK_MS = 200.0, 50.0


@ray.remote
def raw_burn(ms: float) -> tuple[int, float, float]:
    """``common.burn_cpu`` as a plain Ray task (one CPU each, Ray's default)."""
    return common.burn_cpu(ms)


def max_at_once(spans: list[tuple[int, float, float]]) -> int:
    """The most spans (pid, start, end) open at the same moment."""
    edges = sorted([(s, 1) for _, s, _ in spans] + [(e, -1) for _, _, e in spans])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def _line(
    config: dict[str, Any],
    variant: str,
    n: int,
    ms: float,
    cpus: int,
    wall: float,
    spans: list[tuple[int, float, float]],
    correct: bool,
) -> dict[str, Any]:
    ideal = n * ms / 1000.0 / cpus
    return common.result(
        "cpu_fan_out",
        config,
        variant=variant,
        n=n,
        wall_s=wall,
        rate_per_s=n / wall,
        correct=correct,
        ms=ms,
        cpus=cpus,
        ideal_s=ideal,
        efficiency=ideal / wall,
        max_at_once=max_at_once(spans) if spans else 0,
        processes=len({pid for pid, _, _ in spans}),
    )


def _durable(hub: common.Hub, activity: str, n: int, ms: float, cpus: int) -> dict[str, Any]:
    client = hub.client
    job = {"n": n, "activity": activity, "input": ms}
    # Untimed first run: worker processes start and the partition learns the cost.
    warm = {"n": max(1, cpus), "activity": activity, "input": ms}
    client.wait_for_orchestration_completion(
        client.schedule_new_orchestration("spread", input=warm), timeout=600
    ).raise_if_failed()
    hub.settle()
    wall0 = time.perf_counter()
    iid = client.schedule_new_orchestration("spread", input=job)
    state = client.wait_for_orchestration_completion(iid, timeout=600)
    wall = time.perf_counter() - wall0
    spans = [tuple(x) for x in (state.output or [])]
    correct = state.runtime_status is dr.OrchestrationStatus.COMPLETED and len(spans) == n
    variant = "shared pool" if activity == "burn" else "num_cpus=1"
    return _line(hub.config, variant, n, ms, cpus, wall, spans, correct)


def _raw(n: int, ms: float, cpus: int) -> dict[str, Any]:
    ray.get([raw_burn.remote(ms) for _ in range(max(1, cpus))])  # warm-up, as above
    wall0 = time.perf_counter()
    spans = ray.get([raw_burn.remote(ms) for _ in range(n)])
    wall = time.perf_counter() - wall0
    return _line(common.ray_config(), "ray tasks", n, ms, cpus, wall, spans, len(spans) == n)


def run(
    n: int | None = None,
    *,
    ms: float | None = None,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """Both duraray variants, then plain Ray; all lines, each duraray one with its ratio."""
    cpus = common.cluster_cpus()
    n = n or (2 if quick else 8) * cpus
    ms = ms or (QUICK_MS if quick else DEFAULT_MS)
    with common.running_hub(
        "cpu_fan_out", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        lines = [_durable(hub, activity, n, ms, cpus) for activity in ("burn", "burn_cpu1")]
    raw = _raw(n, ms, cpus)
    for line in lines:
        line["ratio"] = round(line["efficiency"] / raw["efficiency"], 3)
        line["ratio_to"] = "cpu_fan_out/ray tasks (efficiency)"
    return [common.emit(line) for line in lines] + [common.emit(raw)]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("cpu_fan_out", default_n=0, quick_n=0)
    p.add_argument("--ms", type=float, default=None, help="CPU ms per activity (default 200)")
    args = p.parse_args(argv)
    common.quiet_logs()
    with common.ray_running():
        run(
            args.n,
            ms=args.ms,
            partitions=args.partitions,
            quick=args.quick,
            data_dir=args.data_dir,
            fsync=not args.no_fsync,
            options=common.hub_options(args),
        )


if __name__ == "__main__":
    main()
