"""Smoke test of benchmarks/: the quick mode of several workloads gives correct results.

Only correctness is asserted, never a timing: the machines are shared and noisy. The
workloads run on the session's Ray instance (``ray_session``); benchmarks/ is not an
installed package, so the repository root goes on sys.path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run as bench  # noqa: E402

pytestmark = pytest.mark.ray

REQUIRED = {
    "workload",
    "config",
    "n",
    "wall_s",
    "rate_per_s",
    "p50_ms",
    "p99_ms",
    "peak_rss_mb",
    "correct",
}


def _verdicts(lines: list[dict]) -> list[tuple[str, bool]]:
    return [(bench.line_name(line), line["correct"]) for line in lines]


@pytest.mark.parametrize(
    "workload",
    [
        "hello5",
        "fan_out",
        "entity_signals",
        "bank",
        "timers",
        "cpu_fan_out",
        "gpu_fan_out",
        "scale_out",
        "backlog",
        "events",
        "query",
    ],
)
def test_quick_workload_results_are_correct(ray_session, tmp_path, workload):
    """Every JSON line of a workload's quick run has the required fields and is correct."""
    lines = bench.WORKLOADS[workload](quick=True, data_dir=str(tmp_path))

    assert lines, f"{workload} produced no result"
    assert [] == [sorted(REQUIRED - set(line)) for line in lines if REQUIRED - set(line)]
    assert [(name, True) for name, _ in _verdicts(lines)] == _verdicts(lines)
    assert {"partitions", "workers", "nodes", "fsync", "runtime"} <= set(lines[0]["config"])


def test_runner_writes_the_report(ray_session, tmp_path):
    """run_all writes results.jsonl, results.md and (with matplotlib) chart.png."""
    lines = bench.run_all(["raw_ray"], 4, True, tmp_path / "out", data_dir=str(tmp_path))

    [folder] = list((tmp_path / "out").iterdir())
    written = [json.loads(text) for text in (folder / "results.jsonl").read_text().splitlines()]
    assert [(name, True) for name, _ in _verdicts(lines)] == _verdicts(written)
    assert "| workload |" in (folder / "results.md").read_text()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (folder / "chart.png").stat().st_size > 0
