"""What the determinism warnings cost: hello5 in process with them off, wrappers only, all on.

Each round runs N hello5 orchestrations (five activity calls in sequence) on an in-process
hub (memory store, fsync off) once per mode, the modes interleaved so that a noisy machine
hurts them alike; the best and the median rate of each mode are printed with their ratio to
"off". Then the price of a wrapped ``time.time()`` outside orchestrator code (what every
other caller in the process pays) against the original.

    python benchmarks/determinism_overhead.py [--n 2000] [--rounds 3]

Modes: "off" (``determinism_warnings=False``), "wrappers" (the module functions only: the
Ray default, ``None``), "all" (``True``, the in-process default: wrappers and the profile
hook that sees ``datetime.now()`` & co.).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duraray as dr
from duraray.orchestrations import determinism
from duraray.testing import run_in_process

app = dr.App("determinism-overhead", partitions=4)


@app.activity
def say_hello(ctx: dr.ActivityContext, name: str) -> str:
    return f"Hello {name}!"


@app.orchestration
def hello5(ctx: dr.OrchestrationContext, tag: str):
    out = []
    for city in ("Tokyo", "Seattle", "London", "Paris", "Cairo"):
        out.append((yield ctx.call_activity(say_hello, input=f"{city}{tag}")))
    return out


def _rate(n: int, mode: str) -> float:
    watched = determinism.watched
    if mode == "wrappers":
        # The in-process runtime turns None into True; this is what a Ray partition runs.
        def without_hook(name: str, hook: bool, fn: Any, *args: Any) -> Any:
            return watched(name, False, fn, *args)

        determinism.watched = without_hook  # type: ignore[assignment]
    try:
        with run_in_process(app, fsync=False, determinism_warnings=mode != "off") as client:
            warm = client.schedule_new_orchestrations("hello5", [f"w{i}" for i in range(50)])
            client.wait_for_orchestrations(warm, timeout=120)
            gc.collect()
            started = time.perf_counter()
            ids = client.schedule_new_orchestrations("hello5", [str(i) for i in range(n)])
            states = client.wait_for_orchestrations(ids, timeout=max(120.0, n / 10))
            elapsed = time.perf_counter() - started
    finally:
        determinism.watched = watched  # type: ignore[assignment]
    if not all(s.runtime_status is dr.OrchestrationStatus.COMPLETED for s in states):
        raise RuntimeError(f"mode {mode}: not every orchestration completed")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="orchestrations per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    modes = ("off", "wrappers", "all")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            rates[mode].append(_rate(args.n, mode))
    best_off = max(rates["off"])
    for mode in modes:
        line = {
            "workload": "hello5_in_process",
            "mode": mode,
            "n": args.n,
            "rounds": args.rounds,
            "rates_per_s": [round(r) for r in rates[mode]],
            "best_per_s": round(max(rates[mode])),
            "median_per_s": round(statistics.median(rates[mode])),
            "ratio_to_off": round(max(rates[mode]) / best_off, 3),
        }
        print(json.dumps(line))

    determinism.install()
    plain = getattr(time.time, "__wrapped__", time.time)
    calls = 1_000_000
    wrapped_ns = min(timeit.repeat(time.time, number=calls, repeat=5)) / calls * 1e9
    plain_ns = min(timeit.repeat(plain, number=calls, repeat=5)) / calls * 1e9
    print(
        json.dumps(
            {
                "workload": "time_time_outside_orchestrations",
                "plain_ns": round(plain_ns, 1),
                "wrapped_ns": round(wrapped_ns, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
