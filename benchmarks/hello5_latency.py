"""hello5_latency: one hello5 orchestration at a time, N (50) times.

p50_ms/p99_ms: end to end, as the client sees it (schedule_new_orchestration until
wait_for_orchestration_completion returns). step_p50_ms/step_p99_ms: one sequential step,
from the history: the time between consecutive TaskCompleted events (the first step from
ExecutionStarted), so a step is commit + dispatch + activity + result + replay. Then the
same chain runs 50 times one at a time as plain Ray tasks, for the ratio.

    python benchmarks/hello5_latency.py [--n 50] [--quick]
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duraray as dr
from benchmarks import common, raw_ray

DEFAULT_N, QUICK_N = 50, 10


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """hello5_latency on duraray and on plain Ray; both lines, with the ratio."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    latencies: list[float] = []
    steps: list[float] = []
    correct = True
    with common.running_hub(
        "hello5_latency", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        client = hub.client
        # Warm-up, not timed: two on every partition. Each partition learns what an
        # activity costs on its own (its first runs go out as probes, in a new worker
        # process): three warm-ups on random partitions left one or two cold, and their
        # first measured instance (30-50 ms) was the p99.
        warm = [
            iid
            for p in range(partitions)
            for iid in itertools.islice(common.ids_on(p, partitions, "warm"), 2)
        ]
        client.wait_for_orchestrations(
            client.schedule_new_orchestrations("hello5", warm, instance_ids=warm), timeout=120
        )
        hub.settle()
        base = hub.stats()
        with common.RssSampler(hub.partition_pids) as rss:
            wall0 = time.perf_counter()
            for i in range(n):
                tag = f"seq{i}"
                t0 = time.perf_counter()
                iid = client.schedule_new_orchestration("hello5", input=tag)
                state = client.wait_for_orchestration_completion(iid, timeout=60)
                latencies.append((time.perf_counter() - t0) * 1000)
                history = client.get_orchestration_history(iid)
                step = common.steps_ms(history)
                steps.extend(step)
                correct = (
                    correct
                    and state.runtime_status is dr.OrchestrationStatus.COMPLETED
                    and state.output == common.expected_hello5(tag)
                    and len(step) == len(common.CITIES)
                )
            wall = time.perf_counter() - wall0
        stats = common.diff_stats(hub.stats(), base)
        config = hub.config
    durable = common.result(
        "hello5_latency",
        config,
        n=n,
        wall_s=wall,
        rate_per_s=n / sum(latencies) * 1000,
        latencies_ms=latencies,
        rss=rss,
        correct=correct,
        step_p50_ms=common.percentile(steps, 50),
        step_p99_ms=common.percentile(steps, 99),
        e2e_per_step_p50_ms=(common.percentile(latencies, 50) or 0) / len(common.CITIES),
        stats=stats,
    )
    raw_ray.warm_up()
    raw = raw_ray.hello5_sequential(n)
    return [common.emit(common.with_ratio(durable, raw)), common.emit(raw)]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("hello5_latency", default_n=DEFAULT_N, quick_n=QUICK_N)
    args = p.parse_args(argv)
    common.quiet_logs()
    with common.ray_running():
        run(
            args.n,
            partitions=args.partitions,
            quick=args.quick,
            data_dir=args.data_dir,
            fsync=not args.no_fsync,
            options=common.hub_options(args),
        )


if __name__ == "__main__":
    main()
