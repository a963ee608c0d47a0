"""gpu_fan_out: 8 activities with ``num_gpus=0.25``, each holding a CUDA tensor 0.5 s.

Fractional GPU work as users of Ray Data run it: four activities should share one GPU at
once, in warm processes that paid CUDA's start-up once. Runs the fan-out on duraray (the
activity ``gpu_hold``, registered with ``num_gpus=0.25``: a warm pool of that shape) and
as plain Ray tasks (``@ray.remote(num_gpus=0.25)``) in the same process. Each side runs
once cold (reported as ``cold_wall_s``), then timed. Lines report ``wall_s``,
``max_at_once`` (most activities holding the GPU at the same moment, from their own start
and end times) and ``processes``. Where the cluster has no GPU (or torch has no CUDA) it
prints one line saying so (``skipped``) and measures nothing.

    python benchmarks/gpu_fan_out.py [--n 8] [--seconds 0.5]
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
from benchmarks.cpu_fan_out import max_at_once

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

DEFAULT_N = 8
DEFAULT_SECONDS = 0.5


@ray.remote(num_gpus=0.25)
def raw_gpu_hold(seconds: float) -> tuple[int, float, float]:
    """``common.hold_gpu`` as a plain Ray task."""
    return common.hold_gpu(seconds)


def no_gpu_reason() -> str | None:
    """Why this cluster cannot run the workload, or None when it can."""
    if not ray.cluster_resources().get("GPU"):
        return "no GPU in the Ray cluster"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def _line(
    config: dict[str, Any],
    variant: str,
    n: int,
    seconds: float,
    wall: float,
    cold: float,
    spans: list[Any],
    correct: bool,
) -> dict[str, Any]:
    return common.result(
        "gpu_fan_out",
        config,
        variant=variant,
        n=n,
        wall_s=wall,
        rate_per_s=n / wall,
        correct=correct,
        seconds=seconds,
        cold_wall_s=cold,
        ideal_s=n * seconds / 4,
        max_at_once=max_at_once(spans) if spans else 0,
        processes=len({pid for pid, _, _ in spans}),
    )


def _durable(hub: common.Hub, n: int, seconds: float) -> dict[str, Any]:
    client = hub.client
    job = {"n": n, "activity": "gpu_hold", "input": seconds}
    walls, state = [], None
    for _ in range(2):  # cold, then warm (timed)
        wall0 = time.perf_counter()
        iid = client.schedule_new_orchestration("spread", input=job)
        state = client.wait_for_orchestration_completion(iid, timeout=600)
        walls.append(time.perf_counter() - wall0)
    assert state is not None
    spans = [tuple(x) for x in (state.output or [])]
    correct = state.runtime_status is dr.OrchestrationStatus.COMPLETED and len(spans) == n
    return _line(hub.config, "warm pool", n, seconds, walls[1], walls[0], spans, correct)


def _raw(n: int, seconds: float) -> dict[str, Any]:
    walls, spans = [], []
    for _ in range(2):
        wall0 = time.perf_counter()
        spans = ray.get([raw_gpu_hold.remote(seconds) for _ in range(n)])
        walls.append(time.perf_counter() - wall0)
    config = common.ray_config()
    return _line(config, "ray tasks", n, seconds, walls[1], walls[0], spans, len(spans) == n)


def run(
    n: int | None = None,
    *,
    seconds: float | None = None,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """duraray's warm pool, then plain Ray tasks; or one ``skipped`` line without a GPU."""
    n = n or DEFAULT_N
    seconds = seconds or DEFAULT_SECONDS
    reason = no_gpu_reason()
    if reason is not None:
        line = common.result(
            "gpu_fan_out", common.ray_config(), n=0, wall_s=0.0, rate_per_s=None, correct=True
        )
        line["skipped"] = reason
        return [common.emit(line)]
    with common.running_hub(
        "gpu_fan_out", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        durable = _durable(hub, n, seconds)
    raw = _raw(n, seconds)
    durable["ratio"] = round(raw["wall_s"] / durable["wall_s"], 3)
    durable["ratio_to"] = "gpu_fan_out/ray tasks (wall, raw / duraray)"
    return [common.emit(durable), common.emit(raw)]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("gpu_fan_out", default_n=DEFAULT_N, quick_n=DEFAULT_N)
    p.add_argument("--seconds", type=float, default=None, help="seconds each holds the GPU")
    args = p.parse_args(argv)
    common.quiet_logs()
    with common.ray_running():
        run(
            args.n,
            seconds=args.seconds,
            partitions=args.partitions,
            quick=args.quick,
            data_dir=args.data_dir,
            fsync=not args.no_fsync,
            options=common.hub_options(args),
        )


if __name__ == "__main__":
    main()
