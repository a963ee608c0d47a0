"""recovery: kill one partition actor while hello5 runs; time until it serves again.

N (1,000) hello5 instances start at once. When a third of the episodes of the instances
on partition 1 ran (its ``episodes`` counter), that partition actor is killed with
``ray.kill(actor, no_restart=False)``: Ray restarts it and it recovers from its LMDB log.
``recovery_s`` = from the kill until that partition answers a client request again
(``client.get_orchestration_state`` of an instance it owns, after the actor's process
changed); ``restart_s`` = until the new actor process answered at all. Then every
instance must be COMPLETED with the right output and, in its history, exactly 5
TaskScheduled and 5 TaskCompleted, one per scheduled task: nothing lost or duplicated.
``finished_after_kill`` counts the killed partition's instances that completed after the
kill (0 would mean the kill hit no live work).

    python benchmarks/recovery.py [--n 1000] [--quick]
"""

from __future__ import annotations

import collections
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray

import duraray as dr
from benchmarks import common
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name

DEFAULT_N, QUICK_N = 1000, 200
#: The partition that is killed.
VICTIM = 1


def _episodes(hub: common.Hub) -> int:
    """Episodes the victim partition ran so far."""
    # Asked of the victim alone (the client's partition_stats waits for every partition,
    # and the busy ones answer late enough for the victim to finish all its work first).
    stats = hub.client._transport.submit(VICTIM, "stats", {}).result(timeout=30)
    return int(stats["counters"].get("episodes", 0))


def _exactly_once(history: list[Any]) -> bool:
    scheduled = [e.event_id for e in history if isinstance(e, dr.TaskScheduled)]
    completed = collections.Counter(
        e.task_scheduled_id for e in history if isinstance(e, dr.TaskCompleted)
    )
    return (
        len(scheduled) == len(common.CITIES)
        and sorted(completed) == sorted(scheduled)
        and all(count == 1 for count in completed.values())
    )


def _serve_again(hub: common.Hub, actor: Any, old_pid: int, probe: str) -> tuple[float, float]:
    """Seconds (since now) until the actor process changed, and until it served ``probe``."""
    t0 = time.perf_counter()
    deadline = t0 + 120
    restarted = None
    while time.perf_counter() < deadline:
        try:
            pid = int(ray.get(actor.describe.remote(), timeout=10)["pid"])
        except (ray.exceptions.RayError, TimeoutError):
            continue
        if pid != old_pid:
            restarted = time.perf_counter() - t0
            break
        time.sleep(0.005)  # the old process is still dying
    if restarted is None:
        raise RuntimeError(f"partition p{VICTIM} did not come back within 120 s")
    while True:
        try:
            hub.client.get_orchestration_state(probe, fetch_payloads=False)
            return restarted, time.perf_counter() - t0
        except ray.exceptions.RayError:
            if time.perf_counter() > deadline:
                raise


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    options: dict[str, Any] | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """The recovery line."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    if partitions < 2:
        raise ValueError("recovery needs at least 2 partitions (one is killed)")
    tags = [str(i) for i in range(n)]
    with common.running_hub(
        "recovery", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        client = hub.client
        actor = ray.get_actor(partition_actor_name(hub.app.name, VICTIM), namespace=NAMESPACE)
        old_pid = hub.partition_pids[VICTIM]
        start_episodes = _episodes(hub)
        # The whole tree's RSS only: the killed partition's process is replaced mid-run.
        with common.RssSampler() as rss:
            wall0 = time.perf_counter()
            ids = client.schedule_new_orchestrations("hello5", tags)
            victims = [i for i in ids if partition_for(i, partitions) == VICTIM]
            # Each hello5 instance runs 6 episodes (start + 5 results): kill the victim
            # a third of the way through its own instances' episodes.
            third = start_episodes + 2 * len(victims)
            common.wait_until(lambda: _episodes(hub) >= third, timeout=300, interval=0.005)
            killed_at = time.perf_counter() - wall0
            killed_utc = datetime.now(UTC)
            ray.kill(actor, no_restart=False)
            restart_s, recovery_s = _serve_again(hub, actor, old_pid, victims[0])
            states = client.wait_for_orchestrations(ids, timeout=max(300.0, n / 2))
            wall = time.perf_counter() - wall0
        with ThreadPoolExecutor(16) as pool:
            histories = list(pool.map(client.get_orchestration_history, ids))
        config = hub.config
        new_pids = common.partition_pids(hub.app.name)
    outputs_ok = all(
        s.runtime_status is dr.OrchestrationStatus.COMPLETED
        and s.output == common.expected_hello5(tag)
        for tag, s in zip(tags, states, strict=True)
    )
    once = [_exactly_once(history) for history in histories]
    by_id = dict(zip(ids, states, strict=True))
    # Instances of the killed partition that finished after the kill: the kill hit live work.
    after_kill = sum(1 for i in victims if (by_id[i].completed_at or killed_utc) > killed_utc)
    rate, span = common.span_rate(n, states)
    correct = (
        len(states) == n
        and outputs_ok
        and all(once)
        and new_pids[VICTIM] != old_pid
        and after_kill > 0  # else the kill hit no live work and nothing was tested
    )
    return [
        common.emit(
            common.result(
                "recovery",
                config,
                n=n,
                wall_s=wall,
                rate_per_s=rate,
                latencies_ms=common.instance_latencies_ms(states),
                rss=rss,
                correct=correct,
                recovery_s=recovery_s,
                restart_s=restart_s,
                killed_after_s=killed_at,
                killed_partition=VICTIM,
                instances_on_killed_partition=len(victims),
                finished_after_kill=after_kill,
                not_exactly_once=once.count(False),
                span_s=span,
            )
        )
    ]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("recovery", default_n=DEFAULT_N, quick_n=QUICK_N)
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
        )


if __name__ == "__main__":
    main()
