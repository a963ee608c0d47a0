"""The examples under examples/ run end to end and report what they should.

Each runs as a subprocess on the embedded default (a local Ray that it starts itself), as
a user would run it, with its data in the test's temporary directory.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Seconds one run of an example may take before the test fails.
TIMEOUT = 180

pytestmark = pytest.mark.slow


def run_example(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run an example script; its Ray is its own (never the test session's)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def expected_totals(sample: Path) -> tuple[dict[str, dict[str, int]], int]:
    """Per-category files, rows and cents of a directory of sales files, and its bad lines."""
    totals: dict[str, dict[str, int]] = {}
    bad = 0
    for path in sorted(sample.glob("*.csv")):
        seen: set[str] = set()
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    cents = round(float(row["amount"]) * 100)
                except (TypeError, ValueError):
                    bad += 1
                    continue
                category = totals.setdefault(row["category"], {"files": 0, "rows": 0, "cents": 0})
                category["rows"] += 1
                category["cents"] += cents
                seen.add(row["category"])
        for name in seen:
            totals[name]["files"] += 1
    return totals, bad


@pytest.mark.timeout(2 * TIMEOUT)
def test_etl_job_resumes_after_an_interruption_without_double_counting(tmp_path):
    """The ETL job, interrupted after 10 files and run again, reports exact totals from a partial re-run."""
    data = tmp_path / "data"
    first = run_example(
        "etl_files/etl.py", "--data-dir", str(data), "--interrupt-after", "10", cwd=tmp_path
    )
    assert 130 == first.returncode, first.stdout + first.stderr
    assert "run the same command again to resume" in first.stderr

    report_path = tmp_path / "report.json"
    second = run_example(
        "etl_files/etl.py", "--data-dir", str(data), "--report", str(report_path), cwd=tmp_path
    )
    assert 0 == second.returncode, second.stdout + second.stderr
    report = json.loads(report_path.read_text())
    totals, bad_lines = expected_totals(data / "etl-sample")
    assert 30 == report["files"]
    # The first run finished at least the 10 files it yielded; the second did the rest.
    assert 10 <= report["files_done_before"] < 30
    assert 30 == report["files_done_before"] + report["files_processed_now"]
    # Every file counted exactly once in every category it mentions.
    assert totals == report["categories"]
    assert bad_lines == report["bad_lines"]
    assert sum(t["cents"] for t in totals.values()) == report["cents"]
    assert "30 files: " in second.stdout


def test_ray_data_enrichment_enriches_every_record_through_retries(tmp_path):
    """The Ray Data pipeline enriches every record, retrying the flaky lookups, and writes Parquet."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    done = run_example(
        "ray_data_enrichment/pipeline.py",
        "--records",
        "120",
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path / "data"),
        cwd=tmp_path,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert 120 == summary["records"] == summary["enriched"]
    assert [] == summary["failed"]
    assert 0 == summary["reused_from_earlier_run"]
    assert summary["retried_attempts"] > 0
    assert 120 == sum(summary["by_region"].values())

    rows = sorted(pq.read_table(out / "enriched").to_pylist(), key=lambda r: r["customer_id"])
    assert list(range(120)) == [row["customer_id"] for row in rows]
    regions = ("north", "east", "south", "west")
    assert [regions[int(row["postcode"][:2]) % 4] for row in rows] == [
        row["enrichment"]["region"] for row in rows
    ]
    assert all(0 <= row["enrichment"]["risk"] <= 1 for row in rows)
    assert [f"enrich-v1-{i}" for i in range(120)] == [row["enrichment_instance_id"] for row in rows]


def test_approval_flow_is_driven_over_http(tmp_path):
    """The approval example starts, awaits, approves and rejects purchase requests over HTTP."""
    report_path = tmp_path / "approvals.json"
    done = run_example(
        "approval_http/approval.py",
        "--data-dir",
        str(tmp_path / "data"),
        "--report",
        str(report_path),
        cwd=tmp_path,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    approved, rejected = json.loads(report_path.read_text())
    assert ["Completed", "Completed"] == [approved["runtime_status"], rejected["runtime_status"]]
    assert "approved" == approved["output"]["status"]
    assert "bob" == approved["output"]["by"]
    assert approved["output"]["order"].startswith("PO-")
    assert {
        "status": "rejected",
        "item": "espresso machine",
        "by": "bob",
        "comment": "not this quarter",
    } == rejected["output"]
    assert "status 202: Running" in done.stdout
    assert "status 200: Completed" in done.stdout


@pytest.mark.timeout(2 * TIMEOUT)
def test_model_pipeline_loads_the_model_once_per_worker_and_passes_paths(tmp_path):
    """The scoring example builds its model class once per worker process (at most two
    workers) and returns references (paths) whose files hold every document's score."""
    data = tmp_path / "data"
    report_path = tmp_path / "report.json"
    run = run_example(
        "model_pipeline/pipeline.py",
        "--data-dir",
        str(data),
        "--docs",
        "12",
        "--report",
        str(report_path),
        cwd=tmp_path,
    )
    assert 0 == run.returncode, run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert 12 == report["docs"]
    assert 1 <= len(report["pids"]) <= 2
    # Each worker process the pool started built the model exactly once (a worker may
    # have become ready after the others had scored everything).
    assert len(set(report["loads"])) == len(report["loads"]) <= 2
    assert {str(p) for p in report["pids"]} <= set(report["loads"])
    # 12 reviews cycling through five phrases scoring +1.5, -2.5, +5, -1, +0.5.
    assert 6.0 == report["total"]
