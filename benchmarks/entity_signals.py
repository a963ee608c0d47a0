"""entity_signals: add(1) signals from the client to Counter entities, then read back.

Three lines:

- ``100 entities``: N (20,000) signals spread round-robin over 100 counters in one
  ``client.signal_entities`` call; then all counters are read back (each must hold
  N/100, the sum N);
- ``1 entity bulk``: M (5,000) signals to ONE counter in one ``signal_entities`` call;
- ``1 entity 8 threads``: M signals to one counter with plain ``client.signal_entity``
  from 8 threads (p50/p99: the latency of one durable signal call).

Rate = signals / (first send -> the counters read back with every signal applied);
``durable_s`` is when the client got every signal acknowledged as durable.

    python benchmarks/entity_signals.py [--n 20000] [--entities 100] [--one 5000] [--quick]
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duraray as dr
from benchmarks import common

DEFAULT_N, QUICK_N = 20_000, 2000
DEFAULT_ONE, QUICK_ONE = 5000, 500
THREADS = 8
APPLY_TIMEOUT = 300.0


def _counts(client: dr.Client, prefix: str) -> dict[str, int]:
    return {
        m.id.key: m.state
        for m in client.get_all_entities(name="counter", key_prefix=prefix, page_size=1000)
    }


def _measure(
    hub: common.Hub,
    variant: str,
    keys: list[str],
    signals: int,
    *,
    threads: int = 0,
) -> dict[str, Any]:
    client = hub.client
    prefix = keys[0].split("-")[0] + "-"
    targets = [dr.EntityId("counter", keys[i % len(keys)]) for i in range(signals)]
    latencies: list[float] = []
    base = hub.stats()
    with common.RssSampler(hub.partition_pids) as rss:
        wall0 = time.perf_counter()
        if threads:
            errors: list[BaseException] = []
            lock = threading.Lock()

            def send(share: list[dr.EntityId]) -> None:
                mine = []
                try:
                    for target in share:
                        t0 = time.perf_counter()
                        client.signal_entity(target, "add", 1)
                        mine.append((time.perf_counter() - t0) * 1000)
                except BaseException as exc:  # surfaced below, as a wrong result
                    errors.append(exc)
                with lock:
                    latencies.extend(mine)

            workers = [
                threading.Thread(target=send, args=(targets[i::threads],)) for i in range(threads)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            if errors:
                raise errors[0]
        else:
            client.signal_entities((target, "add", 1) for target in targets)
        durable = time.perf_counter() - wall0
        applied = common.wait_until(
            lambda: sum(_counts(client, prefix).values()) >= signals, timeout=APPLY_TIMEOUT
        )
        wall = time.perf_counter() - wall0
    stats = common.diff_stats(hub.stats(), base)
    counts = _counts(client, prefix)
    expected = {
        key: signals // len(keys) + (1 if i < signals % len(keys) else 0)
        for i, key in enumerate(keys)
    }
    correct = applied and counts == expected and sum(counts.values()) == signals
    return common.result(
        "entity_signals",
        hub.config,
        variant=variant,
        n=signals,
        wall_s=wall,
        rate_per_s=signals / wall,
        latencies_ms=latencies,
        rss=rss,
        correct=correct,
        entities=len(keys),
        durable_s=durable,
        durable_rate_per_s=signals / durable,
        sum=sum(counts.values()),
        stats=stats,
    )


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    entities: int = 100,
    one: int | None = None,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """The three entity_signals lines, each on fresh counters of one hub."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    one = common.pick_n(one, quick, DEFAULT_ONE, QUICK_ONE)
    lines = []
    with common.running_hub(
        "entity_signals", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        # Warm-up (not timed): a first signal to a counter of each partition.
        warm = [f"warm-{i}" for i in range(4 * partitions)]
        hub.client.signal_entities((dr.EntityId("counter", k), "add", 1) for k in warm)
        common.wait_until(lambda: len(_counts(hub.client, "warm-")) == len(warm), timeout=60)
        many = [f"many-{i}" for i in range(entities)]
        lines.append(_measure(hub, f"{entities} entities bulk", many, n))
        lines.append(_measure(hub, "1 entity bulk", ["onebulk-0"], one))
        lines.append(
            _measure(hub, f"1 entity {THREADS} threads", ["onethreads-0"], one, threads=THREADS)
        )
    return [common.emit(line) for line in lines]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("entity_signals", default_n=DEFAULT_N, quick_n=QUICK_N)
    p.add_argument("--entities", type=int, default=100, help="counters of the first line")
    p.add_argument("--one", type=int, default=None, help="signals to one entity (default 5000)")
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
            entities=args.entities,
            one=args.one,
        )


if __name__ == "__main__":
    main()
