"""raw_ray: the hello5 chain and the fan-out as plain Ray tasks, without durability.

The engine's own ceiling: ``hello5.py``, ``hello5_latency.py`` and ``fan_out.py`` run these
in the same process right after their durable run and report duraray / raw Ray. A chain
is five ``@ray.remote`` tasks, each taking the previous one's ObjectRef (Ray sequences
them; the driver is not in the loop), all chains submitted at once. A fan-out is N tasks
and a sum on the driver.

    python benchmarks/raw_ray.py [--n 2000] [--fan-out 10000] [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray

from benchmarks import common

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote
def raw_say_hello(previous: Any, name: str) -> tuple[list[str], float]:
    """One chain step: the greetings so far plus this one, and when it finished."""
    greetings = list(previous[0]) if previous is not None else []
    greetings.append(f"Hello, {name}!")
    return greetings, time.time()


@ray.remote
def raw_square(n: int) -> int:
    """Square a number."""
    return n * n


def _chain(tag: str) -> Any:
    ref = None
    for city in common.CITIES:
        ref = raw_say_hello.remote(ref, f"{city} {tag}")
    return ref


def warm_up() -> None:
    """Start the task workers before timing (a fresh Ray starts them lazily)."""
    ray.get([_chain(f"warm{i}") for i in range(8)])
    ray.get([raw_square.remote(i) for i in range(64)])


def hello5_chains(n: int, *, variant: str | None = None) -> dict[str, Any]:
    """n chains of 5 sequential tasks, all started at once: chains/s."""
    tags = [str(i) for i in range(n)]
    with common.RssSampler() as rss:
        wall0 = time.perf_counter()
        start = time.time()
        refs = [_chain(tag) for tag in tags]
        outputs = ray.get(refs)
        wall = time.perf_counter() - wall0
    ends = [finished for _, finished in outputs]
    span = max(max(ends) - start, 1e-9)
    correct = len(outputs) == n and all(
        greetings == common.expected_hello5(tag)
        for tag, (greetings, _) in zip(tags, outputs, strict=True)
    )
    return common.result(
        "raw_ray",
        common.ray_config(),
        variant=variant or "hello5",
        n=n,
        wall_s=wall,
        rate_per_s=n / span,
        latencies_ms=[(end - start) * 1000 for end in ends],
        rss=rss,
        correct=correct,
        wall_rate_per_s=n / wall,
    )


def hello5_sequential(n: int) -> dict[str, Any]:
    """One chain at a time, n times: end-to-end latency of a chain."""
    latencies = []
    correct = True
    with common.RssSampler() as rss:
        wall0 = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            greetings, _ = ray.get(_chain(f"seq{i}"))
            latencies.append((time.perf_counter() - t0) * 1000)
            correct = correct and greetings == common.expected_hello5(f"seq{i}")
        wall = time.perf_counter() - wall0
    return common.result(
        "raw_ray",
        common.ray_config(),
        variant="hello5_latency",
        n=n,
        wall_s=wall,
        rate_per_s=n / sum(latencies) * 1000,
        latencies_ms=latencies,
        rss=rss,
        correct=correct,
        step_p50_ms=(common.percentile(latencies, 50) or 0) / len(common.CITIES),
    )


def fan_out(count: int, per: int, *, variant: str | None = None) -> dict[str, Any]:
    """``count`` fan-outs of ``per`` tasks each, all submitted at once: tasks/s."""
    with common.RssSampler() as rss:
        wall0 = time.perf_counter()
        groups = [[raw_square.remote(i) for i in range(per)] for _ in range(count)]
        sums = [sum(ray.get(refs)) for refs in groups]
        wall = time.perf_counter() - wall0
    expected = common.expected_fan_out(per)
    return common.result(
        "raw_ray",
        common.ray_config(),
        variant=variant or f"fan_out {count}x{per}",
        n=count * per,
        wall_s=wall,
        rate_per_s=count * per / wall,
        rss=rss,
        correct=len(sums) == count and all(s == expected for s in sums),
    )


def run(
    n: int | None = None, *, quick: bool = False, fan_out_n: int | None = None, **_: Any
) -> list[dict[str, Any]]:
    """The standalone raw-Ray lines: hello5 chains and a 1 x N fan-out."""
    chains = common.pick_n(n, quick, 2000, 200)
    tasks = common.pick_n(fan_out_n, quick, 10_000, 1000)
    warm_up()
    return [
        common.emit(hello5_chains(chains)),
        common.emit(fan_out(1, tasks, variant=f"fan_out 1x{tasks}")),
    ]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("raw_ray", default_n=2000, quick_n=200, durable=False)
    p.add_argument("--fan-out", type=int, default=None, help="fan-out size (default 10000)")
    args = p.parse_args(argv)
    common.quiet_logs()
    with common.ray_running():
        run(args.n, quick=args.quick, fan_out_n=args.fan_out)


if __name__ == "__main__":
    main()
