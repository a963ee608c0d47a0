"""Start-up: how long after ``ray.init`` returns an embedded hub completes its first work.

Each trial runs in a fresh process on a fresh local Ray: ``ray.init``, then
``app.run()`` of the demo app (4 partitions, a new data dir), then ``hello_cities`` (three
activities in sequence, the demo's first orchestration), then a second one. The baseline
is the same chain as plain Ray tasks in a fresh process: three ``@ray.remote`` calls in
sequence after ``ray.init``, which also pays for starting a worker process.

    python benchmarks/startup.py [--trials 5] [--partitions 4] [--num-cpus 2]

One JSON line: ``total_s`` (median: ``ray.init`` returned -> first orchestration
completed; target 2 s on an idle 2-core machine), ``app_run_s`` (-> ``app.run()``
returned), ``first_s`` (the first orchestration, scheduled -> completed), ``second_ms``,
``ray_init_s``, each trial's figures, and ``ratio`` = total_s / the plain-Ray chain's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: Marks a child's result line among whatever Ray prints.
RESULT = "STARTUP-RESULT "


def _duraray(partitions: int, num_cpus: int) -> dict[str, float]:
    import ray

    from duraray.demo import app, hello_cities

    began = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR")
    inited = time.perf_counter()
    with app.run(data_dir=tempfile.mkdtemp(), partitions=partitions) as client:
        ran = time.perf_counter()
        cities = ["Tokyo", "Seattle", "London"]
        first = client.schedule_new_orchestration(hello_cities, input=cities)
        state = client.wait_for_orchestration_completion(first, timeout=120)
        done = time.perf_counter()
        second = client.schedule_new_orchestration(hello_cities, input=cities)
        client.wait_for_orchestration_completion(second, timeout=120)
        again = time.perf_counter()
    ray.shutdown()
    assert state.output == [f"Hello, {c}!" for c in cities], state
    return {
        "ray_init_s": inited - began,
        "app_run_s": ran - inited,
        "first_s": done - ran,
        "total_s": done - inited,
        "second_ms": (again - done) * 1000,
    }


def _plain_ray(num_cpus: int) -> dict[str, float]:
    import ray

    @ray.remote
    def say_hello(city: str) -> str:
        return f"Hello, {city}!"

    began = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR")
    inited = time.perf_counter()
    greetings = [ray.get(say_hello.remote(c)) for c in ("Tokyo", "Seattle", "London")]
    done = time.perf_counter()
    ray.shutdown()
    assert greetings[0] == "Hello, Tokyo!"
    return {"ray_init_s": inited - began, "total_s": done - inited}


def _trial(kind: str, partitions: int, num_cpus: int) -> dict[str, float]:
    """One trial in a fresh process (a process holds one Ray, and start-up is the point)."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--partitions",
            str(partitions),
            "--num-cpus",
            str(num_cpus),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} trial failed:\n{proc.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(lines[0][len(RESULT) :])
    return figures


def main(argv: list[str] | None = None) -> None:
    """Run the trials, interleaved with the plain-Ray ones; print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--child", choices=("duraray", "ray"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "duraray":
        print(RESULT + json.dumps(_duraray(args.partitions, args.num_cpus)), flush=True)
        return
    if args.child == "ray":
        print(RESULT + json.dumps(_plain_ray(args.num_cpus)), flush=True)
        return
    trials, baseline = [], []
    for _ in range(args.trials):  # interleaved: a noisy machine hurts both alike
        trials.append(_trial("duraray", args.partitions, args.num_cpus))
        baseline.append(_trial("ray", args.partitions, args.num_cpus))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    total = median(trials, "total_s")
    print(
        json.dumps(
            {
                "workload": "startup",
                "config": {"partitions": args.partitions, "num_cpus": args.num_cpus},
                "n": args.trials,
                "total_s": total,
                "total_max_s": round(max(t["total_s"] for t in trials), 3),
                "app_run_s": median(trials, "app_run_s"),
                "first_s": median(trials, "first_s"),
                "second_ms": median(trials, "second_ms"),
                "ray_init_s": median(trials, "ray_init_s"),
                "correct": True,
                "ratio": round(total / median(baseline, "total_s"), 2),
                "ratio_to": "raw_ray/three_tasks_after_init",
                "raw_ray_total_s": median(baseline, "total_s"),
                "trials": [{k: round(v, 3) for k, v in t.items()} for t in trials],
            }
        )
    )


if __name__ == "__main__":
    main()
