"""events: one external event to each of N waiting instances, in bulk and one by one.

N (50,000) instances of ``wait_event`` (it waits for one event "go" and returns its data)
are started with ``schedule_new_orchestrations``; once every one of them waits (the
partitions count them RUNNING, which an instance becomes when its first episode, the one
that starts the wait, has run; ``partition_stats()`` is polled, nothing sleeps blindly),
one event goes to each, and each instance must complete with its own event's data.

Two lines, on one hub:

- ``bulk``: one ``client.raise_orchestration_events`` call for all N events;
- ``single 8 threads``: M (5,000) events with plain ``client.raise_orchestration_event``
  from 8 threads (p50/p99: the latency of one durable call); the baseline, so the bulk
  line's ``ratio`` is bulk rate / single rate of this same run.

Rate = events / (first raise -> every raise returned, i.e. every event durable);
``completed_s`` is first raise -> no instance counted RUNNING any more (polled, as the
waiting; ``complete_rate_per_s`` beside it), ``wall_s`` first raise -> the client's
``wait_for_orchestrations`` of all N returned (its replies carry N records; the outputs
are checked from them), ``waiting_s`` the instances' bulk start -> all of them waiting.
An instance completes in the batch that applies its event, so ``completed_s`` is close
to the durable time.

    python benchmarks/events.py [--n 50000] [--single 5000] [--threads 8] [--quick]
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duraray as dr
from benchmarks import common

DEFAULT_N, QUICK_N = 50_000, 2000
DEFAULT_SINGLE, QUICK_SINGLE = 5000, 500
THREADS = 8
WAIT_TIMEOUT = 600.0


def _running(client: dr.Client) -> int:
    status = dr.OrchestrationStatus.RUNNING.value
    return sum(part["live_instances"].get(status, 0) for part in client.partition_stats())


def _start_waiting(hub: common.Hub, prefix: str, n: int) -> tuple[list[str], float]:
    """n ``wait_event`` instances, once all of them wait (none else may run meanwhile);
    (ids, seconds it took)."""
    client = hub.client
    ids = [f"{prefix}-{i}" for i in range(n)]
    t0 = time.perf_counter()
    client.schedule_new_orchestrations("wait_event", [None] * n, instance_ids=ids)
    if not common.wait_until(lambda: _running(client) >= n, timeout=WAIT_TIMEOUT):
        raise TimeoutError(f"{n} instances did not all wait within {WAIT_TIMEOUT} s")
    return ids, time.perf_counter() - t0


def _threads(
    client: dr.Client, ids: list[str], threads: int, latencies: list[float]
) -> list[BaseException | None]:
    """``raise_orchestration_event`` to each id from ``threads`` threads; per id: None or
    the error it raised."""
    outcomes: list[BaseException | None] = [None] * len(ids)
    lock = threading.Lock()

    def send(indexes: range) -> None:
        mine = []
        for i in indexes:
            t0 = time.perf_counter()
            try:
                client.raise_orchestration_event(ids[i], "go", data=i)
            except Exception as exc:  # reported as a wrong result
                outcomes[i] = exc
            mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(mine)

    workers = [
        threading.Thread(target=send, args=(range(k, len(ids), threads),)) for k in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


def _measure(
    hub: common.Hub,
    variant: str,
    n: int,
    raise_all: Callable[[list[str], list[float]], list[Any]],
) -> dict[str, Any]:
    client = hub.client
    ids, waiting = _start_waiting(hub, variant.split()[0], n)
    latencies: list[float] = []
    base = hub.stats()
    with common.RssSampler(hub.partition_pids) as rss:
        t0 = time.perf_counter()
        outcomes = raise_all(ids, latencies)
        durable = time.perf_counter() - t0
        # Completed = counted RUNNING no more: what the partitions count is committed.
        settled = common.wait_until(lambda: _running(client) == 0, timeout=WAIT_TIMEOUT)
        completed = time.perf_counter() - t0
        states = client.wait_for_orchestrations(ids, timeout=WAIT_TIMEOUT)
        wall = time.perf_counter() - t0
    stats = common.diff_stats(hub.stats(), base)
    failed = [o for o in outcomes if o is not None]
    correct = (
        settled
        and not failed
        and len(states) == n
        and all(
            s.runtime_status is dr.OrchestrationStatus.COMPLETED and s.output == i
            for i, s in enumerate(states)
        )
    )
    return common.result(
        "events",
        hub.config,
        variant=variant,
        n=n,
        wall_s=wall,
        rate_per_s=n / durable,
        latencies_ms=latencies,
        rss=rss,
        correct=correct,
        durable_s=durable,
        completed_s=completed,
        complete_rate_per_s=n / completed,
        waiting_s=waiting,
        failed=len(failed),
        first_error=repr(failed[0])[:200] if failed else None,
        stats=stats,
    )


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    single: int | None = None,
    threads: int = THREADS,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """The bulk line (with its ratio to the single-call line) and the single-call line."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    single = common.pick_n(single, quick, DEFAULT_SINGLE, QUICK_SINGLE)
    with common.running_hub(
        "events", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        client = hub.client

        def bulk(ids: list[str], latencies: list[float]) -> list[Any]:
            return client.raise_orchestration_events((iid, "go", i) for i, iid in enumerate(ids))

        def one_by_one(ids: list[str], latencies: list[float]) -> list[Any]:
            return _threads(client, ids, threads, latencies)

        # Warm-up (not timed): both paths once, on every partition.
        warm, _ = _start_waiting(hub, "warm", 8 * partitions)
        bulk(warm[::2], [])
        one_by_one(warm[1::2], [])
        client.wait_for_orchestrations(warm, timeout=120)
        bulk_line = _measure(hub, "bulk", n, bulk)
        single_line = _measure(hub, f"single {threads} threads", single, one_by_one)
    return [common.emit(common.with_ratio(bulk_line, single_line)), common.emit(single_line)]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("events", default_n=DEFAULT_N, quick_n=QUICK_N)
    p.add_argument(
        "--single",
        type=int,
        default=None,
        help=f"events of the one-by-one line (default {DEFAULT_SINGLE}; {QUICK_SINGLE} quick)",
    )
    p.add_argument("--threads", type=int, default=THREADS, help="threads of the one-by-one line")
    args = p.parse_args(argv)
    common.quiet_logs()
    with common.ray_running():
        run(
            args.n,
            partitions=args.partitions,
            quick=args.quick,
            data_dir=args.data_dir,
            fsync=not args.no_fsync,
            options=common.hub_options(args),
            single=args.single,
            threads=args.threads,
        )


if __name__ == "__main__":
    main()
