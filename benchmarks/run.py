"""The benchmark runner: chosen workloads in ONE process (one Ray), then a report.

``run_all`` runs each workload on its own hub (own name, own data dir under one temp dir),
prints the JSON lines as they come and a table at the end, and writes
``<out_dir>/<timestamp>/results.jsonl``, ``results.md`` (a Markdown table) and
``chart.png`` (throughput by workload and configuration; skipped with a note if
matplotlib is missing). ``duraray bench`` calls it.

    python benchmarks/run.py [--workloads hello5,fan_out] [--partitions 4] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    backlog,
    bank,
    common,
    cpu_fan_out,
    entity_signals,
    events,
    fan_out,
    gpu_fan_out,
    hello5,
    hello5_latency,
    query,
    raw_ray,
    recovery,
    scale_out,
    timers,
)

#: Every workload, in the order the runner runs them.
WORKLOADS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "hello5": hello5.run,
    "hello5_latency": hello5_latency.run,
    "fan_out": fan_out.run,
    "entity_signals": entity_signals.run,
    "bank": bank.run,
    "timers": timers.run,
    "recovery": recovery.run,
    "raw_ray": raw_ray.run,
    "cpu_fan_out": cpu_fan_out.run,
    "gpu_fan_out": gpu_fan_out.run,
    "scale_out": scale_out.run,
    "backlog": backlog.run,
    "events": events.run,
    "query": query.run,
}


def parse_workloads(workloads: str | Iterable[str] | None) -> list[str]:
    """Workload names from a list or a comma-separated string (None or "all": every one)."""
    if workloads is None:
        return list(WORKLOADS)
    if isinstance(workloads, str):
        workloads = [w for w in workloads.split(",")]
    names = [w.strip() for w in workloads if w.strip()]
    if names == ["all"]:
        return list(WORKLOADS)
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise ValueError(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    return list(dict.fromkeys(names))


def run_all(
    workloads: str | Iterable[str] | None = None,
    partitions: int | Sequence[int] = 4,
    quick: bool = False,
    out_dir: str | os.PathLike[str] | None = "bench-results",
    *,
    fsync: bool = True,
    data_dir: str | None = None,
    profile: str | None = None,
    configs: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run the workloads for each partition count and configuration in this process.

    ``configs``: HubConfig option sets to compare in this run (default: one, the
    defaults); a set may name ``partitions`` or ``fsync`` itself. Starts a local Ray
    unless this process is already connected (then leaves it up). A workload that raises
    gives a line with ``correct: false`` and its ``error``; the others still run.
    ``out_dir`` None: print only, write nothing.
    """
    names = parse_workloads(workloads)
    counts = [partitions] if isinstance(partitions, int) else list(partitions)
    runs = [dict(c) for c in (configs or [{}])]
    lines: list[dict[str, Any]] = []
    started = time.perf_counter()
    with (
        common.ray_running(),
        tempfile.TemporaryDirectory(prefix="duraray-bench-", dir=data_dir) as base,
    ):
        for index, (count, options) in enumerate((c, o) for c in counts for o in runs):
            options = dict(options)
            count = options.pop("partitions", count)
            sync = options.pop("fsync", fsync)
            for name in names:
                if name == "raw_ray" and index > 0:
                    continue  # plain Ray has no configuration: once is enough
                try:
                    lines.extend(
                        WORKLOADS[name](
                            partitions=count,
                            quick=quick,
                            fsync=sync,
                            options=options,
                            data_dir=os.path.join(base, f"{name}-{index}"),
                            profile=os.path.join(profile, f"run{index}") if profile else None,
                        )
                    )
                except Exception as exc:
                    traceback.print_exc()
                    lines.append(common.emit(_failed(name, count, sync, exc)))
    elapsed = time.perf_counter() - started
    print(format_table(lines), flush=True)
    print(f"{len(lines)} results in {elapsed:.1f} s", flush=True)
    if out_dir is not None:
        folder = write_report(lines, out_dir, quick=quick, elapsed=elapsed)
        print(f"wrote {folder}/results.jsonl, results.md and chart.png", flush=True)
    return lines


def parse_config(text: str) -> dict[str, Any]:
    """``"inline_activities=false,partitions=8"`` -> one configuration's hub options."""
    return common.parse_options(p for p in text.split(",") if p.strip())


def _failed(name: str, partitions: int, fsync: bool, exc: BaseException) -> dict[str, Any]:
    config = {
        "partitions": partitions,
        "workers": None,
        "nodes": None,
        "fsync": fsync,
        "runtime": "ray" if name == "raw_ray" else "duraray",
    }
    line = common.result(name, config, n=0, wall_s=0.0, rate_per_s=None, correct=False)
    line["error"] = f"{type(exc).__name__}: {exc}"
    return line


# == the report ==============================================================================

COLUMNS = ("workload", "config", "n", "rate/s", "p50 ms", "p99 ms", "RSS MB", "correct", "ratio")


def config_label(config: dict[str, Any]) -> str:
    """A short name of a configuration: ``duraray P=4 W=2 fsync`` or ``ray W=2``."""
    workers = f" W={config['workers']}" if config.get("workers") else ""
    nodes = f" nodes={config['nodes']}" if (config.get("nodes") or 1) > 1 else ""
    if config.get("runtime") == "ray":
        return f"ray{workers}{nodes}"
    fsync = "fsync" if config.get("fsync") else "no-fsync"
    extra = "".join(f" {k}={v}" for k, v in sorted((config.get("options") or {}).items()))
    return f"duraray P={config.get('partitions')}{workers}{nodes} {fsync}{extra}"


def line_name(line: dict[str, Any]) -> str:
    """``workload`` or ``workload (variant)``."""
    return line["workload"] + (f" ({line['variant']})" if line.get("variant") else "")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _row(line: dict[str, Any]) -> list[str]:
    ratio = line.get("ratio")
    return [
        line_name(line),
        config_label(line["config"]),
        _fmt(line.get("n")),
        _fmt(line.get("rate_per_s")),
        _fmt(line.get("p50_ms")),
        _fmt(line.get("p99_ms")),
        _fmt(line.get("peak_rss_mb"), 0),
        _fmt(line.get("correct")),
        f"{ratio:.2f}x" if isinstance(ratio, int | float) else "-",
    ]


def format_table(lines: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the lines (ratio: duraray / raw Ray in this run)."""
    rows = [list(COLUMNS)] + [_row(line) for line in lines]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    out = []
    for k, row in enumerate(rows):
        out.append(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _notes(line: dict[str, Any]) -> str:
    keys = {
        "hello5": ("span_s", "wall_rate_per_s"),
        "hello5_latency": ("step_p50_ms", "step_p99_ms"),
        "fan_out": ("partition_rss_start_mb", "partition_rss_peak_mb", "partition_rss_end_mb"),
        "entity_signals": ("durable_s",),
        "bank": ("transferred", "refused", "total", "min_balance"),
        "timers": ("completion_p99_ms", "max_ms"),
        "recovery": ("recovery_s", "restart_s", "not_exactly_once"),
        "raw_ray": ("step_p50_ms", "wall_rate_per_s"),
        "backlog": ("idle_p99_ms", "p99_ratio", "peak_waiting", "bytes_per_pending"),
        "events": ("durable_s", "completed_s", "complete_rate_per_s", "waiting_s"),
        "query": ("newest_first_rate_per_s", "count_ms", "writes_p99_ratio", "fill_s"),
    }.get(line["workload"], ())
    parts = [f"{k}={_fmt(line[k], 2)}" for k in keys if line.get(k) is not None]
    if line.get("ratio_to"):
        parts.append(f"ratio vs {line['ratio_to']}")
    if line.get("error"):
        parts.append(f"error: {line['error']}")
    return "; ".join(parts)


def markdown_table(lines: Sequence[dict[str, Any]]) -> str:
    """The lines as a Markdown table (with a notes column of workload-specific figures)."""
    header = [*COLUMNS, "notes"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        cells = [*_row(line), _notes(line)]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out)


def write_report(
    lines: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    elapsed: float | None = None,
) -> Path:
    """Write results.jsonl, results.md and chart.png under ``out_dir/<timestamp>/``."""
    now = datetime.now(UTC)
    folder = Path(out_dir) / now.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while folder.exists():  # two runs in one second
        folder = Path(out_dir) / f"{now.strftime('%Y%m%d-%H%M%S')}-{suffix}"
        suffix += 1
    folder.mkdir(parents=True)
    with open(folder / "results.jsonl", "w") as fh:
        for line in lines:
            fh.write(json.dumps(line, default=str) + "\n")
    memory = ""
    if common.psutil is not None:
        memory = f", {common.psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    header = [
        "# duraray benchmark results",
        "",
        f"- date: {now.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs{memory}, "
        f"Python {platform.python_version()}, {platform.platform()}",
        f"- mode: {'quick (small N)' if quick else 'full'}"
        + (f", {elapsed:.0f} s in all" if elapsed is not None else ""),
        "- config: P partitions, W activity workers (duraray) or CPU task slots (ray), "
        "fsync on/off; ratio = duraray rate / raw Ray rate measured in this run (events: "
        "bulk rate / one-by-one rate)",
        "- rate: orchestrations/s (hello5, bank, timers, recovery), activities/s (fan_out), "
        "signals/s (entity_signals), events durable/s (events), chains/s or tasks/s "
        "(raw_ray); p50/p99: per-instance latency, per signal or event call, or timer "
        "firing delay (timers)",
        "",
        "",
    ]
    (folder / "results.md").write_text(
        "\n".join(header) + markdown_table(lines) + "\n", encoding="utf-8"
    )
    if not write_chart(lines, folder / "chart.png"):
        print(
            "note: matplotlib is not installed (pip install 'duraray[bench]'); chart.png skipped",
            flush=True,
        )
    return folder


def write_chart(lines: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """A bar chart of throughput by workload and configuration; False without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    # One group per durable result; its raw-Ray counterpart (compared_with) sits beside it.
    groups: dict[str, dict[str, float]] = {}
    for line in lines:
        if not line.get("rate_per_s"):
            continue
        key = line.get("compared_with") or line_name(line)
        groups.setdefault(key, {}).setdefault(config_label(line["config"]), line["rate_per_s"])
    if not groups:
        return True
    labels = sorted({label for bars in groups.values() for label in bars})
    height = 0.8 / len(labels)
    fig = Figure(figsize=(10, 1.0 + 0.55 * len(groups) * max(1, len(labels)) ** 0.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = list(groups)
    for j, label in enumerate(labels):
        ys = [i + j * height for i, name in enumerate(names) if label in groups[name]]
        xs = [groups[name][label] for name in names if label in groups[name]]
        bars = ax.barh(ys, xs, height=height, label=label)
        ax.bar_label(bars, labels=[f"{x:,.0f}" for x in xs], padding=3, fontsize=7)
    ax.set_yticks([i + height * (len(labels) - 1) / 2 for i in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("throughput per second (log scale; units in results.md)")
    ax.set_title("duraray benchmarks: throughput by workload and configuration")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(3, len(labels)), fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Run duraray's benchmarks in one process.")
    p.add_argument(
        "--workloads",
        default=None,
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)",
    )
    p.add_argument(
        "--partitions", default="4", help="partition count, or several to compare (e.g. 1,4)"
    )
    p.add_argument("--quick", action="store_true", help="small N for every workload")
    p.add_argument("--out", default="bench-results", help="report folder (default bench-results)")
    p.add_argument("--no-fsync", action="store_true", help="commit without fsync")
    p.add_argument("--data-dir", default=None, help="parent of the hubs' temporary data dirs")
    p.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="py-spy profiles of the partition actors (hello5, fan_out) into DIR",
    )
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="K=V[,K=V]",
        help="a configuration to compare (HubConfig options, e.g. "
        "inline_activities=false); repeatable; default: the defaults",
    )
    args = p.parse_args(argv)
    common.quiet_logs()
    lines = run_all(
        args.workloads,
        parse_partitions(args.partitions),
        args.quick,
        args.out,
        fsync=not args.no_fsync,
        data_dir=args.data_dir,
        profile=args.profile,
        configs=[parse_config(c) for c in args.config] if args.config else None,
    )
    sys.exit(0 if all(line["correct"] for line in lines) else 1)


def parse_partitions(text: str | int | Sequence[int]) -> int | list[int]:
    """``4`` or ``1,4`` (several partition counts to compare in one run)."""
    if isinstance(text, int):
        return text
    if not isinstance(text, str):
        return [int(v) for v in text]
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise ValueError(f"bad partition count(s) {text!r}")
    return values[0] if len(values) == 1 else values


if __name__ == "__main__":
    main()
