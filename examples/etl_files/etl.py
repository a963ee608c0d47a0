"""A resumable ETL job over a directory of CSV files: fan-out, entity totals, a report.

    python examples/etl_files/etl.py [INPUT_DIR] [--data-dir DIR] [--interrupt-after N]

Each file is one ``process_file`` orchestration: the ``parse_file`` activity reads it
(``category,amount`` rows; malformed lines are counted, not fatal), then the orchestration
signals one ``Total`` entity per category with that file's share. ``Client.map`` runs the
files with at most ``--max-in-flight`` at once and a deterministic instance id per file
(``<job>-<file name>``), so the job is resumable: run it again after a crash or an
interruption (try ``--interrupt-after 10``) and the files already processed are neither
parsed again nor added to the totals twice; an entity signal is part of its
orchestration's durable outcome, sent exactly once. Input files are assumed not to change
between runs (a changed file keeps its old result; use a new ``--job`` name to start over).

Without INPUT_DIR a sample directory of sales files is written first (the same every time).
The report waits until every category's entity has absorbed the signals of every file
that mentioned it (signals are one-way and asynchronous), then prints the totals.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import duraray as dr

app = dr.App("etl-files", partitions=2)

CATEGORIES = ("books", "games", "garden", "music", "toys")


# -- the durable code ------------------------------------------------------------------------


@app.activity
def parse_file(ctx: dr.ActivityContext, path: str) -> dict[str, Any]:
    """Parse one CSV file: rows and amount (in cents) per category, and bad lines."""
    categories: dict[str, dict[str, int]] = {}
    bad_lines = 0
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().strip()
        if header != "category,amount":
            raise ValueError(f"{path}: unexpected header {header!r}")
        for line in fh:
            category, _, amount = line.strip().partition(",")
            try:
                cents = round(float(amount) * 100)
            except ValueError:
                bad_lines += 1
                continue
            if not category:
                bad_lines += 1
                continue
            totals = categories.setdefault(category, {"rows": 0, "cents": 0})
            totals["rows"] += 1
            totals["cents"] += cents
    return {"file": Path(path).name, "categories": categories, "bad_lines": bad_lines}


@app.entity
class Total(dr.DurableEntity):
    """The running totals of one category: files, rows and amount in cents."""

    def add(self, share: dict[str, Any]) -> None:
        state = self.get_state(dict, {"files": 0, "rows": 0, "cents": 0})
        state["files"] += 1
        state["rows"] += share["rows"]
        state["cents"] += share["cents"]
        self.set_state(state)

    def get(self) -> dict[str, int]:
        totals: dict[str, int] = self.get_state(dict, {"files": 0, "rows": 0, "cents": 0})
        return totals


@app.orchestration
def process_file(
    ctx: dr.OrchestrationContext, path: str
) -> Generator[dr.Task[Any], Any, dict[str, Any]]:
    """Parse a file, then add its share to each category's Total entity."""
    summary: dict[str, Any] = yield ctx.call_activity(
        parse_file,
        input=path,
        retry_policy=dr.RetryPolicy(first_retry_interval=0.5, max_number_of_attempts=3),
    )
    for category, share in sorted(summary["categories"].items()):
        ctx.signal_entity(dr.EntityId("total", category), "add", share)
    return summary


# -- the driver -------------------------------------------------------------------------------


def write_sample(directory: Path, *, files: int = 30, rows: int = 200, seed: int = 7) -> None:
    """Write ``files`` CSV files of sales (the same content for the same arguments)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for n in range(files):
        lines = ["category,amount"]
        for _ in range(rows):
            if rng.random() < 0.01:
                lines.append("garbled line")
            else:
                lines.append(f"{rng.choice(CATEGORIES)},{rng.randint(100, 99_999) / 100:.2f}")
        (directory / f"sales-{n:03d}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def wait_for_totals(
    client: dr.Client, expected_files: dict[str, int], timeout: float = 60.0
) -> dict[str, dict[str, int]]:
    """Each category's Total once it has counted every file that mentioned the category."""
    deadline = time.monotonic() + timeout
    totals: dict[str, dict[str, int]] = {}
    while True:
        for category, files in expected_files.items():
            if totals.get(category, {}).get("files") == files:
                continue
            entity = client.get_entity(dr.EntityId("total", category))
            totals[category] = entity.state if entity is not None and entity.state else {}
        if all(totals[c].get("files") == n for c, n in expected_files.items()):
            return totals
        if time.monotonic() > deadline:
            raise TimeoutError(f"the totals did not absorb every file within {timeout} s: {totals}")
        time.sleep(0.05)


def run_job(
    client: dr.Client,
    input_dir: Path,
    *,
    job: str = "etl",
    max_in_flight: int = 4,
    interrupt_after: int | None = None,
) -> dict[str, Any]:
    """Process every ``*.csv`` file of ``input_dir``; returns the report."""
    paths = sorted(str(p.resolve()) for p in input_dir.glob("*.csv"))

    def instance_id(index: int, path: str) -> str:
        return f"{job}-{Path(path).name}"

    # What an earlier run already finished (only for the report: map re-uses it anyway).
    done_before = 0
    for index, path in enumerate(paths):
        state = client.get_orchestration_state(instance_id(index, path), fetch_payloads=False)
        if state is not None and state.runtime_status is dr.OrchestrationStatus.COMPLETED:
            done_before += 1

    summaries = []
    for summary in client.map(
        process_file, paths, instance_id=instance_id, max_in_flight=max_in_flight, progress=True
    ):
        summaries.append(summary)
        if interrupt_after is not None and len(summaries) >= interrupt_after:
            raise KeyboardInterrupt(f"interrupted after {len(summaries)} files")

    expected_files: dict[str, int] = {}
    for summary in summaries:
        for category in summary["categories"]:
            expected_files[category] = expected_files.get(category, 0) + 1
    totals = wait_for_totals(client, expected_files)
    return {
        "files": len(paths),
        "files_done_before": done_before,
        "files_processed_now": len(paths) - done_before,
        "bad_lines": sum(s["bad_lines"] for s in summaries),
        "categories": dict(sorted(totals.items())),
        "rows": sum(t["rows"] for t in totals.values()),
        "cents": sum(t["cents"] for t in totals.values()),
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{'category':<10} {'files':>5} {'rows':>7} {'amount':>14}")
    for category, t in report["categories"].items():
        print(f"{category:<10} {t['files']:>5} {t['rows']:>7} {t['cents'] / 100:>14,.2f}")
    print(f"{'total':<10} {report['files']:>5} {report['rows']:>7} {report['cents'] / 100:>14,.2f}")
    print(
        f"\n{report['files']} files: {report['files_done_before']} done by an earlier run, "
        f"{report['files_processed_now']} processed now; {report['bad_lines']} malformed lines skipped"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input_dir", nargs="?", help="directory of CSV files (default: a sample)")
    parser.add_argument(
        "--data-dir", default=".duraray", help="the hub's data dir (default: .duraray)"
    )
    parser.add_argument("--job", default="etl", help="job name: the prefix of the instance ids")
    parser.add_argument("--max-in-flight", type=int, default=4)
    parser.add_argument("--interrupt-after", type=int, help="stop after N files (to try resuming)")
    parser.add_argument("--report", help="also write the report as JSON to this file")
    args = parser.parse_args(argv)

    if args.input_dir:
        input_dir = Path(args.input_dir)
    else:
        input_dir = Path(args.data_dir) / "etl-sample"
        if not input_dir.exists():
            write_sample(input_dir)
            print(f"wrote sample files to {input_dir}")
    try:
        with app.run(data_dir=args.data_dir) as client:
            report = run_job(
                client,
                input_dir,
                job=args.job,
                max_in_flight=args.max_in_flight,
                interrupt_after=args.interrupt_after,
            )
    except KeyboardInterrupt as exc:
        print(f"{exc or 'interrupted'}: run the same command again to resume", file=sys.stderr)
        return 130
    print_report(report)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
