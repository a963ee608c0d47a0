"""timers: N orchestrations, each waiting on a 1 s durable timer, then returning
ctx.current_utc_datetime; all started at once.

Firing delay = the TimerFired event's timestamp (when the partition fired it) minus the
timer's intended fire time (TimerCreated.fire_at); p50_ms/p99_ms are that delay. The delay
to the instance's completion (completed_at - fire_at) is reported beside it. Correct:
every instance completed, its history holds exactly one TimerCreated and one TimerFired
for that timer, it fired no earlier than intended, and the output is the orchestration
clock after the timer (>= fire_at).

    python benchmarks/timers.py [--n 1000] [--delay 1.0] [--quick]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duraray as dr
from benchmarks import common

DEFAULT_N, QUICK_N = 1000, 100


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    delay: float = 1.0,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """The timers line."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    with common.running_hub(
        "timers", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        client = hub.client
        base = hub.stats()
        with common.RssSampler(hub.partition_pids) as rss:
            wall0 = time.perf_counter()
            ids = client.schedule_new_orchestrations("timer_wait", [delay] * n)
            states = client.wait_for_orchestrations(ids, timeout=max(120.0, n / 10 + delay))
            wall = time.perf_counter() - wall0
        stats = common.diff_stats(hub.stats(), base)
        with ThreadPoolExecutor(16) as pool:
            histories = list(pool.map(client.get_orchestration_history, ids))
        config = hub.config
    fired_ms: list[float] = []
    completion_ms: list[float] = []
    correct = len(states) == n
    for state, history in zip(states, histories, strict=True):
        created = [e for e in history if isinstance(e, dr.TimerCreated)]
        fired = [e for e in history if isinstance(e, dr.TimerFired)]
        ok = (
            state.runtime_status is dr.OrchestrationStatus.COMPLETED
            and len(created) == 1
            and len(fired) == 1
            and fired[0].timer_id == created[0].event_id
            and fired[0].fire_at == created[0].fire_at
            and fired[0].timestamp >= created[0].fire_at
            and state.output is not None
            and state.output >= created[0].fire_at
        )
        correct = correct and ok
        if ok:
            fired_ms.append(common.ms(fired[0].timestamp - created[0].fire_at))
            completion_ms.append(common.ms(state.completed_at - created[0].fire_at))
    rate, span = common.span_rate(n, states)
    return [
        common.emit(
            common.result(
                "timers",
                config,
                n=n,
                wall_s=wall,
                rate_per_s=rate,
                latencies_ms=fired_ms,
                rss=rss,
                correct=correct,
                delay_s=delay,
                max_ms=max(fired_ms, default=None),
                completion_p50_ms=common.percentile(completion_ms, 50),
                completion_p99_ms=common.percentile(completion_ms, 99),
                span_s=span,
                stats=stats,
            )
        )
    ]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("timers", default_n=DEFAULT_N, quick_n=QUICK_N)
    p.add_argument("--delay", type=float, default=1.0, help="timer delay in seconds")
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
            delay=args.delay,
        )


if __name__ == "__main__":
    main()
