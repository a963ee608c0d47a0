"""bank: N transfer orchestrations, each locking two of A Account entities, reading the
source, debiting it and crediting the target only if the source holds enough.

Every account starts with 100 (set by signals and read back before timing). Each transfer
moves a random amount (10..80) over its own pair of accounts (no pair twice, never an
account to itself), all started at once. Throughput = N / (last completion - first
start). Correct: every transfer completed with True or False, no account is negative or
still locked, the total is conserved, and each balance equals 100 plus the credits minus
the debits of the transfers that returned True.

    python benchmarks/bank.py [--n 2000] [--accounts 200] [--quick]
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duraray as dr
from benchmarks import common

DEFAULT_N, QUICK_N = 2000, 200
DEFAULT_ACCOUNTS, QUICK_ACCOUNTS = 200, 50


def orders(n: int, accounts: int, seed: int = 7) -> list[dict[str, Any]]:
    """n transfers over distinct ordered pairs of distinct accounts."""
    if n > accounts * (accounts - 1):
        raise ValueError(f"{accounts} accounts have fewer than {n} distinct pairs")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < n:
        pair = tuple(rng.sample(range(accounts), 2))
        if pair in seen:
            continue
        seen.add(pair)  # type: ignore[arg-type]
        out.append({"from": f"a{pair[0]}", "to": f"a{pair[1]}", "amount": rng.randint(10, 80)})
    return out


def _balances(client: dr.Client) -> dict[str, Any]:
    return {m.id.key: m for m in client.get_all_entities(name="account", page_size=1000)}


def run(
    n: int | None = None,
    *,
    partitions: int = 4,
    quick: bool = False,
    data_dir: str | None = None,
    fsync: bool = True,
    accounts: int | None = None,
    options: dict[str, Any] | None = None,
    profile: str | None = None,
    **_: Any,
) -> list[dict[str, Any]]:
    """The bank line."""
    n = common.pick_n(n, quick, DEFAULT_N, QUICK_N)
    accounts = common.pick_n(accounts, quick, DEFAULT_ACCOUNTS, QUICK_ACCOUNTS)
    work = orders(n, accounts)
    names = [f"a{i}" for i in range(accounts)]
    with common.running_hub(
        "bank", partitions=partitions, fsync=fsync, data_dir=data_dir, options=options
    ) as hub:
        client = hub.client
        client.signal_entities(
            (dr.EntityId("account", name), "deposit", common.INITIAL_BALANCE) for name in names
        )
        opened = common.wait_until(lambda: len(_balances(client)) == accounts, timeout=120)
        base = hub.stats()
        with (
            common.RssSampler(hub.partition_pids) as rss,
            common.profiled(hub.partition_pids, profile, "bank"),
        ):
            wall0 = time.perf_counter()
            ids = client.schedule_new_orchestrations("transfer", work)
            states = client.wait_for_orchestrations(ids, timeout=max(300.0, n / 2))
            wall = time.perf_counter() - wall0
        stats = common.diff_stats(hub.stats(), base)
        final = _balances(client)
        config = hub.config
    rate, span = common.span_rate(n, states)
    expected = dict.fromkeys(names, common.INITIAL_BALANCE)
    for order, state in zip(work, states, strict=True):
        if state.output is True:
            expected[order["from"]] -= order["amount"]
            expected[order["to"]] += order["amount"]
    balances = {key: meta.state for key, meta in final.items()}
    total = sum(balances.values())
    moved = sum(1 for s in states if s.output is True)
    correct = (
        opened
        and all(
            s.runtime_status is dr.OrchestrationStatus.COMPLETED and s.output in (True, False)
            for s in states
        )
        and balances == expected
        and total == accounts * common.INITIAL_BALANCE
        and min(balances.values()) >= 0
        and all(meta.locked_by is None for meta in final.values())
    )
    return [
        common.emit(
            common.result(
                "bank",
                config,
                n=n,
                wall_s=wall,
                rate_per_s=rate,
                latencies_ms=common.instance_latencies_ms(states),
                rss=rss,
                correct=correct,
                accounts=accounts,
                transferred=moved,
                refused=n - moved,
                total=total,
                min_balance=min(balances.values()),
                span_s=span,
                wall_rate_per_s=n / wall,
                stats=stats,
            )
        )
    ]


def main(argv: list[str] | None = None) -> None:
    p = common.parser("bank", default_n=DEFAULT_N, quick_n=QUICK_N)
    p.add_argument("--accounts", type=int, default=None, help="accounts (default 200)")
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
            accounts=args.accounts,
            profile=args.profile,
        )


if __name__ == "__main__":
    main()
