"""hello5: N orchestrations, each calling say_hello 5 times in sequence, all started at once.

Throughput = N / (last completion - first start), from the instance records' created_at
and completed_at; the wall-clock rate (client submit to last answer) is reported beside
it. Then the same chains as plain Ray tasks run in this process, and the duraray line
gets ``ratio`` = duraray rate / raw Ray rate.

    python benchmarks/hello5.py [--n 2000] [--partitions 4] [--no-fsync] [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duraray as dr
from benchmarks import common, raw_ray

DEFAULT_N, QUICK_N = 2000, 200


def run_durable(
    n: int,
    *,
    partitions: int = 4,
    fsync: bool = True,
    data_dir: str | None = None,
    profile: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The durable half: one hub, n hello5 instances started in one bulk call."""
    with common.running_hub(
        "hello5", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        client = hub.client
        # Warm-up (not timed): the first activities import code in the worker processes.
        warm = client.schedule_new_orchestrations("hello5", [f"warm{i}" for i in range(20)])
        client.wait_for_orchestrations(warm, timeout=120)
        hub.settle()
        base_stats = hub.stats()
        tags = [str(i) for i in range(n)]
        with (
            common.RssSampler(hub.partition_pids) as rss,
            common.profiled(hub.partition_pids, profile, "hello5"),
        ):
            wall0 = time.perf_counter()
            ids = client.schedule_new_orchestrations("hello5", tags)
            scheduled = time.perf_counter() - wall0
            states = client.wait_for_orchestrations(ids, timeout=max(120.0, n / 5))
            wall = time.perf_counter() - wall0
        stats = common.diff_stats(hub.stats(), base_stats)
        config = hub.config
    rate, span = common.span_rate(n, states)
    correct = len(states) == n and all(
        s.runtime_status is dr.OrchestrationStatus.COMPLETED
        and s.output == common.expected_hello5(tag)
        for tag, s in zip(tags, states, strict=True)
    )
    return common.result(
        "hello5",
        config,
        n=n,
        wall_s=wall,
        rate_per_s=rate,
        latencies_ms=common.instance_latencies_ms(states),
        rss=rss,
        correct=correct,
        span_s=span,
        wall_rate_per_s=n / wall,
        schedule_s=scheduled,
        stats=stats,
    )


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    profile: str | None = None,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """hello5 on duraray, then the same chains on plain Ray; both lines, with the ratio."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    durable = run_durable(
        n,
        partitions=partitions,
        fsync=fsync,
        data_dir=data_dir,
        profile=profile,
        options=options,
    )
    raw_ray.warm_up()
    raw = raw_ray.hello5_chains(n)
    return [common.emit(common.with_ratio(durable, raw)), common.emit(raw)]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("hello5", default_n=DEFAULT_N, quick_n=QUICK_N)
    args = p.parse_args(argv)
    common.quiet_logs()
    with common.ray_running():
        run(
            args.n,
            partitions=args.partitions,
            quick=args.quick,
            data_dir=args.data_dir,
            fsync=not args.no_fsync,
            profile=args.profile,
            options=common.hub_options(args),
        )


if __name__ == "__main__":
    main()
