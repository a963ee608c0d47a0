"""fan_out: one orchestration fanning out N square(i) activities with when_all, returning
the sum; then K orchestrations x M activities at once (20 x 1,000 by default).

Throughput = activities / (last completion - first start). The 1 x N line also reports
the partition actors' RSS at the start, peak and end (memory must stay flat: no O(n^2)
replay) and the partitions' replay counter. The same fan-outs then run as plain Ray tasks
in this process, and each duraray line gets ``ratio`` = duraray rate / raw Ray rate.

    python benchmarks/fan_out.py [--n 10000] [--many 20] [--per 1000] [--quick]
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

DEFAULT_N, QUICK_N = 10_000, 1000
DEFAULT_MANY, QUICK_MANY = (20, 1000), (5, 200)


def _measure(
    hub: common.Hub, count: int, per: int, *, profile: str | None, label: str
) -> dict[str, Any]:
    client = hub.client
    base = hub.stats()
    with (
        common.RssSampler(hub.partition_pids) as rss,
        common.profiled(hub.partition_pids, profile, label),
    ):
        wall0 = time.perf_counter()
        ids = client.schedule_new_orchestrations("fan_out", [per] * count)
        states = client.wait_for_orchestrations(ids, timeout=max(120.0, count * per / 50))
        wall = time.perf_counter() - wall0
    stats = common.diff_stats(hub.stats(), base)
    activities = count * per
    rate, span = common.span_rate(activities, states)
    expected = common.expected_fan_out(per)
    correct = len(states) == count and all(
        s.runtime_status is dr.OrchestrationStatus.COMPLETED and s.output == expected
        for s in states
    )
    return common.result(
        "fan_out",
        hub.config,
        variant=f"{count}x{per}",
        n=activities,
        wall_s=wall,
        rate_per_s=rate,
        latencies_ms=common.instance_latencies_ms(states),
        rss=rss,
        correct=correct,
        span_s=span,
        wall_rate_per_s=activities / wall,
        stats=stats,
    )


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    many: tuple[int, int] | None = None,
    profile: str | None = None,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """1 x n and K x M fan-outs on duraray, then on plain Ray; all lines, with ratios."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    count, per = many or (QUICK_MANY if quick else DEFAULT_MANY)
    with common.running_hub(
        "fan_out", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        # Warm-up (not timed): the first activities import code in the worker processes,
        # and every partition (most likely) learns what they cost.
        hub.client.wait_for_orchestrations(
            hub.client.schedule_new_orchestrations("fan_out", [100] * (2 * partitions)),
            timeout=120,
        )
        hub.settle()
        single = _measure(hub, 1, n, profile=profile, label="fan_out-1")
        several = _measure(hub, count, per, profile=profile, label="fan_out-many")
    raw_ray.warm_up()
    raw_single = raw_ray.fan_out(1, n, variant=f"fan_out 1x{n}")
    raw_several = raw_ray.fan_out(count, per, variant=f"fan_out {count}x{per}")
    return [
        common.emit(common.with_ratio(single, raw_single)),
        common.emit(common.with_ratio(several, raw_several)),
        common.emit(raw_single),
        common.emit(raw_several),
    ]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("fan_out", default_n=DEFAULT_N, quick_n=QUICK_N)
    p.add_argument("--many", type=int, default=None, help="orchestrations of the second part")
    p.add_argument("--per", type=int, default=None, help="activities per orchestration there")
    args = p.parse_args(argv)
    many = None
    if args.many is not None or args.per is not None:
        default = QUICK_MANY if args.quick else DEFAULT_MANY
        many = (args.many or default[0], args.per or default[1])
    common.quiet_logs()
    with common.ray_running():
        run(
            args.n,
            partitions=args.partitions,
            quick=args.quick,
            data_dir=args.data_dir,
            fsync=not args.no_fsync,
            options=common.hub_options(args),
            many=many,
            profile=args.profile,
        )


if __name__ == "__main__":
    main()
