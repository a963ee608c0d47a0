"""query: page through every instance of a hub, and count them by status.

The hub is filled with ``--n`` instances of ``instant`` (an orchestration that completes
at once; 1,000,000 on Ray, 20,000 in process; ``--quick``: 5,000 and 2,000), started
with ``schedule_new_orchestrations``. Then ``get_all_instances`` pages through all of them
(``page_size`` 100, the default; oldest first, then newest first): ``rate_per_s`` =
instances / paging time. Meanwhile hello5 orchestrations run one at a time, and their
latency is compared with the idle one (``writes_p99_ratio``: do writes stall while the
hub is paged? the probe runs in a process of its own, so the paging client's own work is
not what it measures). ``count_ms``: one ``count_instances()`` over the whole hub.

    python benchmarks/query.py [--n 1000000] [--in-process-n 20000] [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duraray as dr
from benchmarks import common

DEFAULT_N, QUICK_N = 1_000_000, 5_000
DEFAULT_LOCAL_N, QUICK_LOCAL_N = 20_000, 2_000
PAGE = 100
FILL_CHUNK = 10_000


def _fill(client: dr.Client, n: int) -> float:
    """Start ``n`` instant instances; returns the seconds it took, all completed."""
    t0 = time.perf_counter()
    for start in range(0, n, FILL_CHUNK):
        count = min(FILL_CHUNK, n - start)
        ids = [f"q{i:08d}" for i in range(start, start + count)]
        client.schedule_new_orchestrations("instant", range(start, start + count), instance_ids=ids)
    deadline = time.monotonic() + max(120.0, n / 500)
    while client.count_instances()[dr.OrchestrationStatus.COMPLETED] < n:
        if time.monotonic() > deadline:
            raise TimeoutError("the instances did not complete")
        time.sleep(0.2)
    return time.perf_counter() - t0


def _hello5_ms(client: dr.Client, tag: str) -> float:
    t0 = time.perf_counter()
    iid = client.schedule_new_orchestration("hello5", input=tag)
    client.wait_for_orchestration_completion(iid, timeout=120)
    return (time.perf_counter() - t0) * 1000


def _probe_main(address: str, hub: str, conn: Any) -> None:
    """In a process of its own (the paging client's work must not be what it measures):
    hello5 one at a time, idle first, then until told to stop; the latencies back."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    client = dr.Client.attach(hub, address=address)
    idle = [_hello5_ms(client, f"idle{i}") for i in range(30)]
    conn.send(idle)
    busy: list[float] = []
    k = 0
    while not conn.poll():
        busy.append(_hello5_ms(client, f"busy{k}"))
        k += 1
    conn.send(busy)


def _measure(client: dr.Client, n: int, *, hub: str | None) -> dict[str, Any]:
    """Page through everything both ways (with a hello5 probe running in another
    process when ``hub`` is given), and count."""
    idle: list[float] = []
    busy: list[float] = []
    prober = None
    if hub is not None:
        import multiprocessing

        import ray

        ours, theirs = multiprocessing.Pipe()
        address = ray.get_runtime_context().gcs_address
        prober = multiprocessing.get_context("spawn").Process(
            target=_probe_main, args=(address, hub, theirs), daemon=True
        )
        prober.start()
        idle = ours.recv()
    t0 = time.perf_counter()
    oldest = client.get_all_instances(page_size=PAGE, fetch_payloads=False)
    t1 = time.perf_counter()
    newest = client.get_all_instances(page_size=PAGE, fetch_payloads=False, newest_first=True)
    t2 = time.perf_counter()
    if prober is not None:
        ours.send("stop")
        busy = ours.recv()
        prober.join(timeout=60)
    c0 = time.perf_counter()
    counts = client.count_instances()
    count_ms = (time.perf_counter() - c0) * 1000
    # The hub's own instances (the hello5 probes start more while it is paged).
    ids = [s.instance_id for s in oldest if s.instance_id.startswith("q")]
    back = [s.instance_id for s in newest if s.instance_id.startswith("q")]
    correct = (
        len(ids) == len(back) == n
        and len(set(ids)) == n
        and list(reversed(back)) == ids
        and sum(counts.values()) >= len(oldest)
    )
    line: dict[str, Any] = {
        "n": len(oldest),
        "wall_s": t2 - t0,
        "rate_per_s": len(oldest) / (t1 - t0),
        "newest_first_rate_per_s": len(newest) / (t2 - t1),
        "count_ms": count_ms,
        "correct": correct,
    }
    if hub is not None:
        line["idle_p99_ms"] = common.percentile(idle, 99)
        line["writes_p50_ms"] = common.percentile(busy, 50)
        line["writes_p99_ms"] = common.percentile(busy, 99)
        line["writes_samples"] = len(busy)
        line["writes_p99_ratio"] = (common.percentile(busy, 99) or 0) / (
            common.percentile(idle, 99) or 1
        )
    return line


def run(
    n: int | None = None,
    *,
    in_process_n: int | None = None,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """The query workload on Ray, then in process; one line each."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    local_n = in_process_n or (QUICK_LOCAL_N if quick else DEFAULT_LOCAL_N)
    lines = []
    with common.running_hub(
        "query", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        for i in range(3):
            hub.client.wait_for_orchestration_completion(
                hub.client.schedule_new_orchestration("hello5", input=f"warm{i}"), timeout=60
            )
        fill_s = _fill(hub.client, n)
        measured = _measure(hub.client, n, hub=hub.app.name)
        lines.append(
            common.emit(
                common.result(
                    "query", hub.config, variant=f"ray {n:,}", fill_s=fill_s, **_named(measured)
                )
            )
        )
    from duraray.testing import run_in_process

    app = common.make_app(f"query-local-{time.time_ns()}", partitions=partitions, fsync=fsync)
    with (
        tempfile.TemporaryDirectory(dir=data_dir) as local_dir,
        run_in_process(app, data_dir=local_dir) as client,
    ):
        fill_s = _fill(client, local_n)
        measured = _measure(client, local_n, hub=None)
        config = {"partitions": partitions, "fsync": fsync, "runtime": "in process"}
        lines.append(
            common.emit(
                common.result(
                    "query",
                    config,
                    variant=f"in process {local_n:,}",
                    fill_s=fill_s,
                    **_named(measured),
                )
            )
        )
    return lines


def _named(measured: dict[str, Any]) -> dict[str, Any]:
    out = dict(measured)
    out["wall_s"] = measured["wall_s"]
    out["rate_per_s"] = measured["rate_per_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = common.parser("query", default_n=DEFAULT_N, quick_n=QUICK_N)
    p.add_argument("--in-process-n", type=int, default=None, help="in-process hub size")
    args = p.parse_args(argv)
    common.quiet_logs()
    with common.ray_running():
        run(
            args.n,
            in_process_n=args.in_process_n,
            partitions=args.partitions,
            quick=args.quick,
            data_dir=args.data_dir,
            fsync=not args.no_fsync,
            options=common.hub_options(args),
        )


if __name__ == "__main__":
    main()
