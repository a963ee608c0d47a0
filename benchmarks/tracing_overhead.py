"""What tracing costs: hello5 in process without OpenTelemetry, with it but off, and on.

Each round runs N hello5 orchestrations (five activity calls in sequence) on an in-process
hub (memory store, fsync off, determinism warnings off) once per mode, each in a fresh
process, the modes interleaved so that a noisy machine hurts them alike; the best and the
median rate of each mode are printed with their ratio to "absent".

    python benchmarks/tracing_overhead.py [--n 2000] [--rounds 3]

Modes: "absent" (OpenTelemetry made unimportable: the hub without the ``otel`` extra),
"off" (installed, no tracer provider set), "on" (an SDK ``TracerProvider`` with a
``BatchSpanProcessor`` whose exporter drops the spans: every orchestration, activity and
the client's bulk start traced, the export itself left out).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("absent", "off", "on")


def _child(mode: str, n: int) -> None:
    """One measurement, in this (fresh) process; prints spans/s and the rate."""
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
    exported = [0]
    if mode == "on":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Drop(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                exported[0] += len(spans)
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)

    import duraray as dr
    from duraray.testing import run_in_process

    app = dr.App("tracing-overhead", partitions=4)

    @app.activity
    def say_hello(ctx: dr.ActivityContext, name: str) -> str:
        return f"Hello {name}!"

    @app.orchestration
    def hello5(ctx: dr.OrchestrationContext, tag: str):
        out = []
        for city in ("Tokyo", "Seattle", "London", "Paris", "Cairo"):
            out.append((yield ctx.call_activity(say_hello, input=f"{city}{tag}")))
        return out

    with run_in_process(app, fsync=False, determinism_warnings=False) as client:
        warm = client.schedule_new_orchestrations(hello5, [f"w{i}" for i in range(50)])
        client.wait_for_orchestrations(warm, timeout=120)
        gc.collect()
        started = time.perf_counter()
        ids = client.schedule_new_orchestrations(hello5, [str(i) for i in range(n)])
        states = client.wait_for_orchestrations(ids, timeout=max(120.0, n / 10))
        elapsed = time.perf_counter() - started
    if not all(s.runtime_status is dr.OrchestrationStatus.COMPLETED for s in states):
        raise RuntimeError(f"mode {mode}: not every orchestration completed")
    if mode == "on":
        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    print(json.dumps({"rate": n / elapsed, "spans": exported[0]}))


def _measure(mode: str, n: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--n", str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="orchestrations per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.n)
        return

    rates: dict[str, list[float]] = {m: [] for m in MODES}
    spans: dict[str, float] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            result = _measure(mode, args.n)
            rates[mode].append(result["rate"])
            spans[mode] = result["spans"]
    best_absent = max(rates["absent"])
    for mode in MODES:
        line = {
            "workload": "hello5_in_process",
            "mode": mode,
            "n": args.n,
            "rounds": args.rounds,
            "rates_per_s": [round(r) for r in rates[mode]],
            "best_per_s": round(max(rates[mode])),
            "median_per_s": round(statistics.median(rates[mode])),
            "ratio_to_absent": round(max(rates[mode]) / best_absent, 3),
            "spans_exported": int(spans[mode]),
        }
        print(json.dumps(line))


if __name__ == "__main__":
    main()
