"""End to end: critical sections over entities, orphaned-lock cleanup and entity queries (rows 62-68)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

import duraray as dr
from duraray.entities.scheduler import EntityRecord, OperationMessage
from duraray.runtime.engine import codec
from duraray.runtime.engine.entity_host import entity_key, pack_message
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.engine.store import LmdbStore, WriteBatch
from duraray.testing import run_in_process

from .helpers import TIMEOUT, poll

app = dr.App("e2e-entity-locks", partitions=4)

Status = dr.OrchestrationStatus

#: A start delay on a manual clock: instances scheduled with it start together on ``advance``.
START_TOGETHER = timedelta(seconds=1)


@app.entity
class Account(dr.DurableEntity):
    def get(self) -> int:
        return self.get_state(int, 0)

    def deposit(self, amount: int) -> int:
        balance = self.get_state(int, 0) + amount
        self.set_state(balance)
        return balance

    def withdraw(self, amount: int) -> int:
        balance = self.get_state(int, 0)
        if balance < amount:
            raise ValueError(f"overdraw: {amount} from a balance of {balance}")
        self.set_state(balance - amount)
        return balance - amount


@app.entity
class Note(dr.DurableEntity):
    def write(self, text: str) -> None:
        self.set_state(text)


@app.orchestration
def lock_pair(ctx: dr.OrchestrationContext, pair: list):
    first, second = pair
    with (yield ctx.lock_entities([first, second])) as section:
        yield ctx.call_entity(first, "deposit", 1)
        yield ctx.call_entity(second, "deposit", 1)
    return [str(e) for e in section.locked_entities]


@app.orchestration
def lock_and_deposit(ctx: dr.OrchestrationContext, entity: str):
    with (yield ctx.lock_entities([entity])):
        return (yield ctx.call_entity(entity, "deposit", 1))


@app.orchestration
def hold_lock(ctx: dr.OrchestrationContext, entity: str):
    with (yield ctx.lock_entities([entity])):
        before = yield ctx.call_entity(entity, "get")
        ctx.set_custom_status("locked")
        yield ctx.wait_for_external_event("go")
        after = yield ctx.call_entity(entity, "deposit", 1)
    return [before, after]


@app.orchestration
def transfer(ctx: dr.OrchestrationContext, spec: list):
    source, target, amount = spec
    with (yield ctx.lock_entities([source, target])):
        balance = yield ctx.call_entity(source, "get")
        if balance < amount:
            return False
        # Two different locked entities may be called at the same time.
        yield dr.when_all(
            [
                ctx.call_entity(source, "withdraw", amount),
                ctx.call_entity(target, "deposit", amount),
            ]
        )
    return True


@app.orchestration
def lock_then_raise(ctx: dr.OrchestrationContext, entity: str):
    with (yield ctx.lock_entities([entity])):
        yield ctx.call_entity(entity, "deposit", 1)
        raise RuntimeError("boom inside the critical section")


@app.orchestration
def lock_and_continue(ctx: dr.OrchestrationContext, spec: list):
    entity, generation = spec
    yield ctx.lock_entities([entity])  # never exited: the end of each generation releases
    yield ctx.call_entity(entity, "deposit", 1)
    if generation < 2:
        ctx.continue_as_new([entity, generation + 1])
        return None
    return [generation, ctx.is_in_critical_section]


FAILING: set[str] = set()


@app.activity
def flaky(ctx: dr.ActivityContext, key: str) -> str:
    if key in FAILING:
        raise RuntimeError(f"flaky {key}")
    return key


@app.orchestration
def flaky_in_section(ctx: dr.OrchestrationContext, entity: str):
    with (yield ctx.lock_entities([entity])):
        yield ctx.call_entity(entity, "deposit", 1)
        yield ctx.call_activity(flaky, input=entity)
        ctx.set_custom_status(["in section", ctx.is_in_critical_section])
        yield ctx.wait_for_external_event("go")
        yield ctx.call_entity(entity, "deposit", 1)
    return "done"


@app.orchestration
def finished(ctx: dr.OrchestrationContext):
    return "done"


def account(key: str) -> str:
    return str(dr.EntityId("account", key))


def metadata_of(client: dr.Client, entity: str) -> dr.EntityMetadata:
    metadata = client.get_entity(entity)
    assert metadata is not None, entity
    return metadata


def wait_unlocked(client: dr.Client, entity: str) -> dr.EntityMetadata:
    """Poll until the entity is neither locked nor holding queued messages."""
    return poll(
        lambda: metadata_of(client, entity),
        lambda m: m.locked_by is None and m.backlog_queue_size == 0,
    )


def start_holding(client: dr.Client, entity: str, instance_id: str | None = None) -> str:
    """Start ``hold_lock`` on ``entity`` and wait until it is inside its critical section."""
    iid = client.schedule_new_orchestration(hold_lock, input=entity, instance_id=instance_id)
    poll(
        lambda: client.get_orchestration_state(iid),
        lambda s: s is not None and s.custom_status == "locked",
    )
    return iid


def completed(client: dr.Client, iid: str) -> dr.OrchestrationState:
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = Status.COMPLETED
    assert expected == state.runtime_status, (iid, state.failure_details)
    return state


# -- critical sections -----------------------------------------------------------------------


def test_opposite_lock_orders_do_not_deadlock(manual_client, manual_clock):
    """Orchestrations locking [A, B] and [B, A] concurrently all finish (sorted acquisition)."""
    client = manual_client
    a, b = account("left"), account("right")
    ids = [
        client.schedule_new_orchestration(
            lock_pair, input=[a, b] if n % 2 else [b, a], start_at=START_TOGETHER
        )
        for n in range(20)
    ]
    manual_clock.advance(START_TOGETHER * 2)  # every instance starts in the same batch
    for iid in ids:
        expected_lock_set = sorted([a, b])
        assert expected_lock_set == completed(client, iid).output
    expected = 20
    for entity in (a, b):
        assert expected == wait_unlocked(client, entity).state


def test_signal_to_a_locked_entity_waits_for_the_release(client):
    """A client signal to an entity locked by an orchestration queues until the critical section ends."""
    entity = account("held")
    client.signal_entity(entity, "deposit", 10)
    iid = start_holding(client, entity)
    client.signal_entity(entity, "deposit", 100)
    queued = poll(lambda: metadata_of(client, entity), lambda m: m.backlog_queue_size == 1)
    expected = dr.EntityMetadata(
        id=dr.EntityId.parse(entity),
        last_modified=queued.last_modified,
        state=10,
        locked_by=iid,
        backlog_queue_size=1,
    )
    assert expected == queued
    client.raise_orchestration_event(iid, "go")
    expected_output = [10, 11]  # the queued deposit ran after the section's own call
    assert expected_output == completed(client, iid).output
    expected_state = 111
    assert expected_state == wait_unlocked(client, entity).state


def test_concurrent_transfers_conserve_money_and_never_overdraw(manual_client, manual_clock):
    """500 concurrent locked transfers over 20 accounts on all 4 partitions conserve the total and never overdraw."""
    client = manual_client
    accounts = [account(f"acct-{n:02d}") for n in range(20)]
    expected_partitions = {0, 1, 2, 3}
    assert expected_partitions == {partition_for(a, 4) for a in accounts}
    for entity in accounts:
        client.signal_entity(entity, "deposit", 100)
    rng = random.Random(62)
    specs = []
    for _ in range(500):
        source, target = rng.sample(accounts, 2)
        specs.append([source, target, rng.randint(1, 120)])
    # Started together, the transfers interleave: without the locks some would overdraw
    # (withdraw raises, failing the transfer) and the check-then-withdraw would race.
    ids = [
        client.schedule_new_orchestration(transfer, input=spec, start_at=START_TOGETHER)
        for spec in specs
    ]
    manual_clock.advance(START_TOGETHER * 2)
    outcomes = Counter(completed(client, iid).output for iid in ids)
    balances = {entity: wait_unlocked(client, entity).state for entity in accounts}
    expected_total = 20 * 100
    assert expected_total == sum(balances.values())
    assert all(balance >= 0 for balance in balances.values()), balances
    assert outcomes[True] and outcomes[False]  # money moved, and some transfers were refused
    expected_count = 500
    assert expected_count == outcomes[True] + outcomes[False]


def test_raising_inside_a_critical_section_releases_the_lock(client):
    """An orchestration that raises inside its critical section fails and releases the lock."""
    entity = account("raise")
    iid = client.schedule_new_orchestration(lock_then_raise, input=entity)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_status = Status.FAILED
    assert expected_status == state.runtime_status
    assert "boom inside the critical section" in state.failure_details.message
    wait_unlocked(client, entity)
    after = client.schedule_new_orchestration(lock_and_deposit, input=entity)
    expected = 2  # the failed orchestration's completed call stays applied
    assert expected == completed(client, after).output


def test_continue_as_new_and_returning_inside_a_section_release_the_lock(client):
    """Each continue_as_new generation, and the last one returning inside its section, releases the lock."""
    entity = account("generations")
    iid = client.schedule_new_orchestration(lock_and_continue, input=[entity, 0])
    expected_output = [2, True]  # still in the section when the last generation returned
    assert expected_output == completed(client, iid).output
    expected_state = 3
    assert expected_state == wait_unlocked(client, entity).state
    after = client.schedule_new_orchestration(lock_and_deposit, input=entity)
    expected = 4
    assert expected == completed(client, after).output


def test_terminating_the_holder_releases_the_lock(client):
    """Terminating an orchestration inside its critical section releases the lock it held."""
    entity = account("terminated")
    iid = start_holding(client, entity)
    waiting = client.schedule_new_orchestration(lock_and_deposit, input=entity)
    poll(lambda: metadata_of(client, entity), lambda m: m.backlog_queue_size == 1)
    client.terminate_orchestration(iid, output="stop")
    expected_status = Status.TERMINATED
    assert expected_status == client.wait_for_orchestration_completion(iid).runtime_status
    expected = 1  # the waiting orchestration got the lock
    assert expected == completed(client, waiting).output
    wait_unlocked(client, entity)


def test_lock_granted_to_a_purged_instance_is_given_back(client):
    """A lock whose grant reaches an instance that was terminated and purged meanwhile is released."""
    entity = account("purged")
    holder = start_holding(client, entity)
    queued = client.schedule_new_orchestration(lock_and_deposit, input=entity)
    poll(lambda: metadata_of(client, entity), lambda m: m.backlog_queue_size == 1)
    client.terminate_orchestration(queued)
    client.wait_for_orchestration_completion(queued, timeout=TIMEOUT)
    expected_purged = dr.PurgeResult(1)
    assert expected_purged == client.purge_orchestration(queued)
    client.raise_orchestration_event(holder, "go")
    completed(client, holder)
    expected_state = 1  # only the holder deposited
    assert expected_state == wait_unlocked(client, entity).state
    expected_clean = dr.CleanEntityStorageResult(0, 0)
    assert expected_clean == client.clean_entity_storage()
    after = client.schedule_new_orchestration(lock_and_deposit, input=entity)
    expected = 2
    assert expected == completed(client, after).output


def test_rewound_instance_holds_its_lock_again(client):
    """An instance rewound after failing inside a critical section holds the lock while it runs the section again."""
    entity = account("rewound")
    FAILING.add(entity)
    iid = client.schedule_new_orchestration(flaky_in_section, input=entity)
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_status = Status.FAILED
    assert expected_status == state.runtime_status
    wait_unlocked(client, entity)  # the failure released the lock
    FAILING.discard(entity)
    client.rewind_orchestration(iid)
    poll(
        lambda: client.get_orchestration_state(iid).custom_status,
        lambda status: status == ["in section", True],
    )
    try:
        expected_holder = iid
        assert expected_holder == metadata_of(client, entity).locked_by
    finally:
        client.raise_orchestration_event(iid, "go")
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)


# -- clean_entity_storage ----------------------------------------------------------------------


def _craft(data_dir: str, records: list[EntityRecord]) -> None:
    """Write entity rows straight into the hub's LMDB (as a crash or an old version might leave them)."""
    for record in records:
        path = Path(data_dir) / app.name / f"p{partition_for(record.entity_id, 4)}"
        store = LmdbStore(path, sync=False)
        try:
            batch = WriteBatch()
            packed = replace(record, queue=[pack_message(m) for m in record.queue])
            batch.put("entities", entity_key(record.entity_id), codec.encode_record(packed))
            store.commit(batch)
        finally:
            store.close()


def test_clean_entity_storage_releases_orphaned_locks_and_removes_empty_entities(
    auto_clock, data_dir
):
    """clean_entity_storage releases locks of finished or purged holders (running queued work), removes empty rows and reports both counts."""
    finished_holder, purged_holder = "holder-finished", "holder-purged"
    orphan_a, orphan_b, empty, live = (
        account("orphan-a"),
        account("orphan-b"),
        account("empty"),
        account("live"),
    )
    with run_in_process(app, clock=auto_clock, data_dir=data_dir) as client:
        for iid in (finished_holder, purged_holder):
            client.schedule_new_orchestration(finished, instance_id=iid)
            completed(client, iid)
        client.purge_orchestration(purged_holder)
        client.signal_entity(orphan_a, "deposit", 5)
        wait_unlocked(client, orphan_a)
    queued = OperationMessage("deposit", codec.encode(7))
    _craft(
        data_dir,
        [
            EntityRecord(
                orphan_a, codec.encode(5), finished_holder, f"{finished_holder}#x#1", [queued]
            ),
            EntityRecord(orphan_b, None, purged_holder, f"{purged_holder}#x#1"),
            EntityRecord(empty),
        ],
    )
    with run_in_process(app, clock=auto_clock, data_dir=data_dir) as client:
        running = start_holding(client, live)
        assert client.get_entity(empty) is None  # a row without state, lock or queue is no entity
        expected_locked_by = [finished_holder, purged_holder, running]
        assert expected_locked_by == [
            metadata_of(client, e).locked_by for e in (orphan_a, orphan_b, live)
        ]
        expected_nothing = dr.CleanEntityStorageResult(0, 0)
        assert expected_nothing == client.clean_entity_storage(
            remove_empty_entities=False, release_orphaned_locks=False
        )
        expected_locked = finished_holder
        assert expected_locked == metadata_of(client, orphan_a).locked_by
        expected_clean = dr.CleanEntityStorageResult(
            empty_entities_removed=1, orphaned_locks_released=2
        )
        assert expected_clean == client.clean_entity_storage()
        expected_state = 12  # the deposit queued behind the orphaned lock ran on release
        assert expected_state == wait_unlocked(client, orphan_a).state
        assert client.get_entity(orphan_b) is None  # unlocked and stateless: gone
        expected_live = running  # a running holder keeps its lock
        assert expected_live == metadata_of(client, live).locked_by
        expected_again = dr.CleanEntityStorageResult(0, 0)
        assert expected_again == client.clean_entity_storage()
        client.raise_orchestration_event(running, "go")
        completed(client, running)
        wait_unlocked(client, live)


# -- queries ---------------------------------------------------------------------------------


def test_query_entities_by_name_and_key_prefix_pages_each_entity_once(client):
    """query_entities filters by name and key prefix, and its continuation tokens yield each entity exactly once, with or without state."""
    alphas = {account(f"alpha-{n}"): n + 1 for n in range(7)}
    betas = {account(f"beta-{n}"): 100 + n for n in range(5)}
    for entity, amount in {**alphas, **betas}.items():
        client.signal_entity(entity, "deposit", amount)
    client.signal_entity(dr.EntityId("note", "alpha-0"), "write", "not an account")
    for entity in [*alphas, *betas]:
        wait_unlocked(client, entity)
    holder = start_holding(client, account("beta-0"))

    for include_state in (True, False):
        pages = []
        token = None
        while True:
            page = client.query_entities(
                name="Account",
                key_prefix="alpha-",
                page_size=2,
                include_state=include_state,
                continuation_token=token,
            )
            pages.append(page.items)
            token = page.continuation_token
            if token is None:
                break
        assert all(len(items) <= 2 for items in pages)
        seen = Counter(str(m.id) for items in pages for m in items)
        expected_seen = Counter(dict.fromkeys(alphas, 1))  # each alpha account exactly once
        assert expected_seen == seen
        states = {str(m.id): m.state for items in pages for m in items}
        expected_states = alphas if include_state else dict.fromkeys(alphas)
        assert expected_states == states

    everything = client.get_all_entities(name="account", page_size=5)
    expected_ids = sorted([*alphas, *betas])
    assert expected_ids == [str(m.id) for m in everything]
    locked = {str(m.id): m.locked_by for m in everything if m.locked_by is not None}
    expected_locked = {account("beta-0"): holder}
    assert expected_locked == locked
    expected_all = len(alphas) + len(betas) + 1
    assert expected_all == len(client.get_all_entities(page_size=3))
    expected_notes = ["@note@alpha-0"]
    assert expected_notes == [str(m.id) for m in client.get_all_entities(name="note")]
    with pytest.raises(ValueError):
        client.query_entities(key_prefix="alpha-")
    with pytest.raises(ValueError):
        client.query_entities(name="account", page_size=0)
    client.raise_orchestration_event(holder, "go")
    completed(client, holder)
