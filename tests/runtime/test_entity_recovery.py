"""Crash recovery of entities and critical sections on LMDB: money is neither lost nor made.

Four partitions hold twenty accounts. Clients seed them with signals (retried when a crash
ate the reply), then two hundred transfer orchestrations each lock two accounts, read the
source, move the amount if it is covered, and record themselves in a ledger entity (half
of them with a scheduled signal). Cores crash after a commit (effects lost), before a
commit (batch lost) or between batches (intake lost). Afterwards the bank must balance,
no lock or queued message may be left, and every transfer must have taken effect exactly
once.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from partition_driver import Cluster, completions, make_registry

from duraray import when_all
from duraray.config import HubConfig
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.routing import partition_for

Status = h.OrchestrationStatus

PARTITIONS = 4
ACCOUNTS = [str(EntityId("account", f"acct-{n:02d}")) for n in range(20)]
LEDGER = str(EntityId("ledger", "main"))
SEED = 100
TRANSFERS = 200


def account(ctx: Any, arg: Any) -> Any:
    """Balance plus the ids of the deposits and withdrawals applied (to count them)."""
    state = ctx.get_state() or {"balance": 0, "in": [], "out": []}
    if ctx.operation == "get":
        return state["balance"]
    tid, amount = arg
    if ctx.operation == "deposit":
        state["balance"] += amount
        state["in"].append(tid)
    elif ctx.operation == "withdraw":
        if state["balance"] < amount:
            raise ValueError(f"overdraw of {amount} by {tid}")
        state["balance"] -= amount
        state["out"].append(tid)
    else:
        raise ValueError(f"unknown operation {ctx.operation}")
    ctx.set_state(state)
    return state["balance"]


def ledger(ctx: Any, arg: Any) -> None:
    """Every finished transfer: its id and whether it moved money."""
    tid, moved = arg
    state = ctx.get_state() or {}
    state.setdefault(tid, []).append(moved)
    ctx.set_state(state)


def quote(ctx: Any, spec: list) -> int:
    return spec[1]


def transfer(ctx: Any, spec: list) -> Any:
    tid, source, target, amount = spec
    amount = yield ctx.call_activity("quote", input=[tid, amount])
    with (yield ctx.lock_entities([source, target])):
        balance = yield ctx.call_entity(source, "get")
        moved = balance >= amount
        if moved:
            yield when_all(
                [
                    ctx.call_entity(source, "withdraw", [tid, amount]),
                    ctx.call_entity(target, "deposit", [tid, amount]),
                ]
            )
    # Every other ledger entry is a scheduled signal: it waits as a timer row, through crashes.
    delay = timedelta(seconds=30) if int(tid[1:]) % 2 else None
    ctx.signal_entity(LEDGER, "record", [tid, moved], signal_time=delay)
    return moved


def make_bank_registry() -> Any:
    registry = make_registry(transfer=transfer, quote=quote)
    registry.add_entity(account, "account")
    registry.add_entity(ledger, "ledger")
    return registry


class Crashes:
    """A batch hook crashing core ``k % P`` every ``every`` batches, cycling through ``modes``."""

    def __init__(self, cluster: Cluster, modes: list[str], every: int, first: int = 1) -> None:
        self.cluster = cluster
        self.modes = modes
        self.every = every
        self.batches = 0
        self.next_at = first
        self.done: list[tuple[int, str]] = []

    def __call__(self, batch: int, index: int) -> None:
        self.batches += 1
        if not self.modes or self.batches < self.next_at:
            return
        mode = self.modes[len(self.done) % len(self.modes)]
        self.done.append((index, mode))
        self.next_at = self.batches + self.every
        if mode == "after":
            self.cluster.crash_after_commit(index)
        elif mode == "before":
            self.cluster.crash_before_commit(index)
        else:  # "kill": between batches, losing what waits in the intake
            self.cluster.reopen(index)


def entity(cluster: Cluster, entity_id: str) -> Any:
    """The entity's record as get_entity returns it (None if it does not exist)."""
    return cluster.call(
        "get_entity", partition=partition_for(entity_id, PARTITIONS), entity_id=entity_id
    )


def run_bank(cluster: Cluster, modes: list[str], every: int) -> Crashes:
    """Seed the accounts and run the transfers, crashing as planned; returns the hook."""
    crashes = Crashes(cluster, modes, every)
    for n, account_id in enumerate(ACCOUNTS):
        cluster.submit(
            "signal_entity",
            partition=partition_for(account_id, PARTITIONS),
            request_id=f"seed-{n}",
            entity_id=account_id,
            operation="deposit",
            input=codec.encode([f"seed-{n}", SEED]),
        )
    cluster.run(on_batch=crashes)
    rng = random.Random(2026)
    for n in range(TRANSFERS):
        source, target = rng.sample(ACCOUNTS, 2)
        cluster.start("transfer", f"t{n}", [f"t{n}", source, target, rng.randint(1, 150)])
    cluster.run(on_batch=crashes)
    return crashes


def check_bank(cluster: Cluster) -> Counter[bool]:
    """Assert the invariants; returns how many transfers moved money and how many did not."""
    expected_partitions = set(range(PARTITIONS))
    assert expected_partitions == {partition_for(a, PARTITIONS) for a in ACCOUNTS}
    assert not cluster.pending, "every client request got its reply"
    outcomes: dict[str, bool] = {}
    for n in range(TRANSFERS):
        iid = f"t{n}"
        state = cluster.state(iid)
        expected_status = Status.COMPLETED
        assert expected_status == state.status, (iid, state.failure)
        outcomes[iid] = codec.decode(state.output)
        recorded = completions(cluster.history(iid))
        expected_recorded = [1]  # the quote activity's result, recorded once
        assert expected_recorded == list(recorded.values()), iid

    deposits: Counter[str] = Counter()
    withdrawals: Counter[str] = Counter()
    balances = {}
    for account_id in ACCOUNTS:
        record = entity(cluster, account_id)
        assert record.locked_by is None and record.lock_owner is None, account_id
        expected_queue: list = []
        assert expected_queue == record.queue, account_id
        state = codec.decode(record.state)
        balances[account_id] = state["balance"]
        deposits.update(state["in"])
        withdrawals.update(state["out"])
    expected_total = SEED * len(ACCOUNTS)
    assert expected_total == sum(balances.values())
    assert all(b >= 0 for b in balances.values()), balances

    moved = {iid for iid, did in outcomes.items() if did}
    expected_deposits = Counter({f"seed-{n}": 1 for n in range(len(ACCOUNTS))})
    expected_deposits.update(moved)
    assert expected_deposits == deposits
    expected_withdrawals = Counter(moved)
    assert expected_withdrawals == withdrawals

    ledger_record = entity(cluster, LEDGER)
    assert ledger_record.locked_by is None and not ledger_record.queue
    expected_ledger = {iid: [did] for iid, did in outcomes.items()}
    assert expected_ledger == codec.decode(ledger_record.state)

    for core in cluster.cores:
        for db in ("outbox", "timers", "activities", "inbox"):
            assert not core.store.count(db), (core.index, db)
    expected_entities = len(ACCOUNTS) + 1
    assert expected_entities == sum(core.store.count("entities") for core in cluster.cores)
    return Counter(outcomes.values())


def test_bank_without_crashes_balances(tmp_path: Path) -> None:
    """Without crashes the transfers balance, leave no lock behind and each apply once."""
    with Cluster(
        make_bank_registry(), partitions=PARTITIONS, data_dir=tmp_path, auto_advance=True
    ) as cluster:
        run_bank(cluster, [], every=1)
        outcomes = check_bank(cluster)
    assert outcomes[True] and outcomes[False]  # both branches of a transfer were taken


@pytest.mark.parametrize("modes", [["after"], ["before"], ["after", "before", "kill"]])
def test_bank_survives_crashes_exactly_once(tmp_path: Path, modes: list[str]) -> None:
    """Crashes after and before commits keep the bank balanced and apply each transfer and seed exactly once."""
    config = HubConfig(max_batch_items=8)
    with Cluster(
        make_bank_registry(),
        partitions=PARTITIONS,
        config=config,
        data_dir=tmp_path,
        auto_advance=True,
    ) as cluster:
        crashes = run_bank(cluster, modes, every=7)
        check_bank(cluster)
    assert len(crashes.done) >= 20, crashes.done
    expected_cores = set(range(PARTITIONS))  # every core crashed at least once
    assert expected_cores == {index for index, _ in crashes.done}
    expected_modes = set(modes)
    assert expected_modes == {mode for _, mode in crashes.done}
