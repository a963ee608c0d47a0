"""``duraray bench``: the benchmark runner of ``benchmarks/``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from duraray.runtime.cli._app import main


def _import_bench_runner() -> object:
    """``benchmarks.run`` from the source checkout: it is not installed with duraray.

    Looked for beside this package (an editable install) and in the current directory.
    """
    # duraray/runtime/cli/_bench.py: the repository root is three folders up.
    candidates = [Path(__file__).resolve().parents[3], Path.cwd()]
    for root in candidates:
        if (root / "benchmarks" / "run.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module("benchmarks.run")
    raise click.ClickException(
        "the benchmarks/ folder was not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); run `duraray bench` from a duraray source checkout"
    )


@main.command()
@click.option(
    "--workloads",
    default=None,
    help="Comma-separated workloads (hello5, hello5_latency, fan_out, entity_signals, bank, "
    "timers, recovery, raw_ray, cpu_fan_out, gpu_fan_out, scale_out); default: all.",
)
@click.option(
    "--partitions", default="4", show_default=True, help="Partition count, or several: 1,4."
)
@click.option("--quick", is_flag=True, help="Small N for every workload (a smoke run).")
@click.option("--out", default="bench-results", show_default=True, help="Report folder.")
@click.option("--no-fsync", is_flag=True, help="Commit without fsync.")
@click.option("--data-dir", default=None, help="Parent of the hubs' temporary data dirs.")
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="K=V[,K=V]",
    help="A configuration to compare in the same run (hub options, e.g. "
    "inline_activities=false); repeatable. Default: the defaults.",
)
def bench(
    workloads: str | None,
    partitions: str,
    quick: bool,
    out: str,
    no_fsync: bool,
    data_dir: str | None,
    configs: tuple[str, ...],
) -> None:
    """Run the benchmarks in one process and write a report (JSON lines, Markdown, chart)."""
    runner: Any = _import_bench_runner()
    try:
        names = runner.parse_workloads(workloads)
        counts = runner.parse_partitions(partitions)
        options = [runner.parse_config(c) for c in configs] or None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    runner.common.quiet_logs()
    lines = runner.run_all(
        names, counts, quick, out, fsync=not no_fsync, data_dir=data_dir, configs=options
    )
    if not all(line["correct"] for line in lines):
        raise click.ClickException("some benchmark results were not correct (see above)")
