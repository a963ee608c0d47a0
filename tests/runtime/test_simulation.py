"""A deterministic simulation of a whole multi-partition hub: one seed, one run, faults included.

Every core of a ``partition_driver.Cluster`` sees the same injected clock (manual wall and
monotonic time, ids from a generator seeded by the cluster's seed), and everything else
that varies, the workload, the crash schedule, which in-transit message is delivered,
dropped, duplicated or delayed, which held activity runs now, late or twice, when time
jumps, is drawn from one ``random.Random(seed)``. So a seed replays a whole run, crashes
included, and a failure message names the seed that reproduces it.

The workload mixes activity chains, fan-out/fan-in, sub-orchestrations (most of them on
another partition), entity calls and signals (some scheduled), a critical section that
moves money between two locked accounts, durable timers, external events raised by the
client one at a time, delayed starts and continue-as-new loops. Faults are injected from
``Cluster.run``'s batch hook: a core crashes before its commit (the batch is lost), after
it (its effects are lost) or between batches (its intake is lost); messages in transit are
dropped (the sender's resend heals them), duplicated and reordered; activity results come
late, twice, or after the instance moved on. Then the faults stop, everything held back
is delivered, and the run quiesces.

Afterwards every instance must be COMPLETED with its expected output, each scheduled task,
timer, entity call and lock of each history must have exactly one result (recorded results
are exactly-once even where activities ran more than once: at-least-once execution is
allowed), entity counters and balances must be exact and conserved, no lock, queued
message, outbox row, timer or activity row may be left, and two runs of one seed must leave
byte-identical stores.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from partition_driver import Cluster, FaultInjector, completions

from duraray import when_all
from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.partition import COSTS_KEY
from duraray.runtime.engine.records import ActivityTask, Message, Reply
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.engine.status_counts import STATUS_COUNTS_KEY, count_records
from duraray.runtime.engine.store import DATABASES

Status = h.OrchestrationStatus

#: Every account starts with this balance (its first operation creates it so).
INITIAL_BALANCE = 1000
#: A transfer of this much can never be covered: it takes the "not moved" branch.
HUGE = 10**9
#: Crash kinds the schedule draws from (see ``Simulation.crash``).
CRASH_KINDS = ("before", "after", "kill")
#: Crashes are planned within the first batches of a run, so that every planned crash
#: happens (a run takes well over a hundred batches; asserted per seed).
CRASH_HORIZON = 60

MEMORY_SEEDS = list(range(50))
LMDB_SEEDS = [1000, 1001, 1002]
STORE_FAULT_SEEDS = list(range(2000, 2020))


# -- activities, orchestrations and entities of the workload -----------------------------


def inc(ctx: Any, x: int) -> int:
    return x + 1


def double(ctx: Any, x: int) -> int:
    return 2 * x


def audit(ctx: Any, tid: str) -> str:
    return tid


def chain(ctx: Any, spec: list) -> Any:
    """``n`` activities in sequence."""
    x, n = spec
    for _ in range(n):
        x = yield ctx.call_activity("inc", input=x)
    return x


def fan(ctx: Any, spec: list) -> Any:
    """Fan-out of ``n`` activities, fan-in of their sum."""
    x, n = spec
    values = yield when_all([ctx.call_activity("double", input=x + i) for i in range(n)])
    return sum(values)


def parent(ctx: Any, spec: list) -> Any:
    """Chains as children with the given ids (placed on chosen partitions), then a fan
    child with the default id ``<parent>:<task id>``."""
    x, child_ids = spec
    subs = yield when_all(
        [
            ctx.call_sub_orchestrator("chain", input=[x + 10 * j, 2], instance_id=child_id)
            for j, child_id in enumerate(child_ids)
        ]
    )
    fanned = yield ctx.call_sub_orchestrator("fan", input=[x, 2])
    return [subs, fanned]


def counting(ctx: Any, ops: list) -> Any:
    """Entity operations on counters: calls (their results summed) and signals, some of
    them scheduled for later."""
    total = 0
    for counter_id, op_id, amount, how, delay in ops:
        if how == "call":
            total += yield ctx.call_entity(counter_id, "add", [op_id, amount])
        else:
            when = timedelta(seconds=delay) if delay else None
            ctx.signal_entity(counter_id, "add", [op_id, amount], signal_time=when)
    return total


def transfer(ctx: Any, spec: list) -> Any:
    """The critical section: lock both accounts, read the source, move the amount if it
    is covered (with an activity inside the section for some), release."""
    tid, source, target, amount, audited = spec
    with (yield ctx.lock_entities([source, target])):
        balance = yield ctx.call_entity(source, "get")
        moved = balance >= amount
        if moved:
            if audited:
                yield ctx.call_activity("audit", input=tid)
            yield when_all(
                [
                    ctx.call_entity(source, "withdraw", [tid, amount]),
                    ctx.call_entity(target, "deposit", [tid, amount]),
                ]
            )
    return moved


def sleeper(ctx: Any, spec: list) -> Any:
    """Durable timers, then an activity; says whether no timer fired early."""
    delays, x = spec
    start = ctx.current_utc_datetime
    yield when_all([ctx.create_timer(timedelta(seconds=d)) for d in delays])
    on_time = ctx.current_utc_datetime >= start + timedelta(seconds=max(delays))
    return [on_time, (yield ctx.call_activity("inc", input=x))]


def waiter(ctx: Any, n: int) -> Any:
    """Waits for ``n`` external events "e", one activity after each."""
    got = []
    for _ in range(n):
        value = yield ctx.wait_for_external_event("e")
        got.append((yield ctx.call_activity("inc", input=value)))
    return got


def looper(ctx: Any, spec: list) -> Any:
    """Continue-as-new over ``gens`` generations: an activity, a signal and (every other
    generation) a timer each."""
    gen, gens, acc, counter_id = spec
    acc = yield ctx.call_activity("inc", input=acc)
    ctx.signal_entity(counter_id, "add", [f"{ctx.instance_id}/g{gen}", 1])
    if gen % 2:
        yield ctx.create_timer(timedelta(seconds=7))
    if gen < gens:
        ctx.continue_as_new([gen + 1, gens, acc, counter_id])
        return None
    return acc


def counter(ctx: Any, arg: Any) -> Any:
    """A total plus the ids of the operations applied (to count each one)."""
    state = ctx.get_state() or {"total": 0, "ops": []}
    op_id, amount = arg
    state["total"] += amount
    state["ops"].append(op_id)
    ctx.set_state(state)
    return amount


def account(ctx: Any, arg: Any) -> Any:
    """A balance plus the ids of the deposits and withdrawals applied."""
    state = ctx.get_state() or {"balance": INITIAL_BALANCE, "in": [], "out": []}
    if ctx.operation == "get":
        ctx.set_state(state)  # every account touched exists, to be found and checked
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


def make_sim_registry() -> Registry:
    registry = Registry()
    for fn in (chain, fan, parent, counting, transfer, sleeper, waiter, looper):
        registry.add_orchestration(fn, fn.__name__)
    for fn in (inc, double, audit):
        registry.add_activity(fn, fn.__name__)
    registry.add_entity(counter, "counter")
    registry.add_entity(account, "account")
    return registry


REGISTRY = make_sim_registry()


# -- the workload --------------------------------------------------------------------------


@dataclass
class Workload:
    """What the client does and what the hub must end with."""

    #: (orchestration, instance id, input, extra start arguments)
    starts: list[tuple[str, str, Any, dict[str, Any]]] = field(default_factory=list)
    #: expected output of every top-level instance and named child
    outputs: dict[str, Any] = field(default_factory=dict)
    #: waiter instance id -> event values, raised in this order
    events: dict[str, list[int]] = field(default_factory=dict)
    #: client signals: (entity id, request id, amount) of a "deposit"
    deposits: list[tuple[str, str, int]] = field(default_factory=list)
    #: counter entity id -> ids of the "add" operations it must have applied once each
    counter_ops: dict[str, Counter[str]] = field(default_factory=dict)
    counter_totals: dict[str, int] = field(default_factory=dict)
    #: account entity id -> transfer (or request) ids deposited / withdrawn once each
    account_in: dict[str, Counter[str]] = field(default_factory=dict)
    account_out: dict[str, Counter[str]] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)


def child_id_on(parent_id: str, j: int, partitions: int, *, elsewhere: bool) -> str:
    """A child id for ``parent_id``: on another partition (``elsewhere``) or on its own."""
    home = partition_for(parent_id, partitions)
    for k in range(1000):
        candidate = f"{parent_id}-c{j}-{k}"
        if (partition_for(candidate, partitions) != home) == elsewhere:
            return candidate
    raise AssertionError("no child id found")


def build_workload(rng: random.Random, partitions: int) -> Workload:
    """A random mix of every kind of instance, with the outputs and entity states it must
    produce whatever the interleaving."""
    w = Workload()
    counters = [str(EntityId("counter", f"c{n}")) for n in range(3)]
    accounts = [str(EntityId("account", f"a{n}")) for n in range(4)]
    for c in counters:
        w.counter_ops[c], w.counter_totals[c] = Counter(), 0
    for a in accounts:
        w.account_in[a], w.account_out[a] = Counter(), Counter()
        w.balances[a] = INITIAL_BALANCE

    def start(name: str, iid: str, value: Any, output: Any, **extra: Any) -> None:
        w.starts.append((name, iid, value, extra))
        w.outputs[iid] = output

    for n in range(rng.randint(2, 5)):
        x, steps = rng.randint(0, 100), rng.randint(1, 4)
        # Some start later: a start timer on the instance's partition.
        extra = {"start_at": timedelta(seconds=rng.choice([5, 20]))} if rng.random() < 0.3 else {}
        start("chain", f"chain{n}", [x, steps], x + steps, **extra)
    for n in range(rng.randint(1, 3)):
        x, width = rng.randint(0, 100), rng.randint(2, 5)
        start("fan", f"fan{n}", [x, width], sum(2 * (x + i) for i in range(width)))
    for n in range(rng.randint(1, 3)):
        iid, x = f"parent{n}", rng.randint(0, 100)
        # Most children live on another partition: their start and result travel as messages.
        kids = [child_id_on(iid, j, partitions, elsewhere=j != 1) for j in range(rng.randint(1, 3))]
        for j, kid in enumerate(kids):
            w.outputs[kid] = x + 10 * j + 2
        start("parent", iid, [x, kids], [[x + 10 * j + 2 for j in range(len(kids))], 4 * x + 2])
    for n in range(rng.randint(2, 4)):
        iid, ops, called = f"counting{n}", [], 0
        for k in range(rng.randint(1, 4)):
            target, amount = rng.choice(counters), rng.randint(1, 9)
            how = rng.choice(["call", "signal"])
            delay = rng.choice([0, 0, 10]) if how == "signal" else 0
            op_id = f"{iid}/{k}"
            ops.append([target, op_id, amount, how, delay])
            w.counter_ops[target][op_id] += 1
            w.counter_totals[target] += amount
            called += amount if how == "call" else 0
        start("counting", iid, ops, called)
    for n in range(rng.randint(3, 8)):
        tid = f"transfer{n}"
        source, target = rng.sample(accounts, 2)
        # Small amounts are always covered (at most 8 transfers of 50 out of 1000); a huge
        # one never is. Either way the outcome does not depend on the interleaving.
        amount = HUGE if rng.random() < 0.25 else rng.randint(1, 50)
        moved = amount != HUGE
        if moved:
            w.account_out[source][tid] += 1
            w.account_in[target][tid] += 1
            w.balances[source] -= amount
            w.balances[target] += amount
        start("transfer", tid, [tid, source, target, amount, rng.random() < 0.5], moved)
    for n in range(rng.randint(1, 3)):
        delays, x = [rng.choice([1, 10, 60]) for _ in range(rng.randint(1, 3))], rng.randint(0, 9)
        start("sleeper", f"sleeper{n}", [delays, x], [True, x + 1])
    for n in range(rng.randint(1, 3)):
        iid = f"waiter{n}"
        values = [rng.randint(0, 1000) for _ in range(rng.randint(1, 3))]
        w.events[iid] = values
        start("waiter", iid, len(values), [v + 1 for v in values])
    for n in range(rng.randint(1, 3)):
        iid, gens, acc = f"looper{n}", rng.randint(1, 3), rng.randint(0, 9)
        target = rng.choice(counters)
        for gen in range(gens + 1):
            w.counter_ops[target][f"{iid}/g{gen}"] += 1
            w.counter_totals[target] += 1
        start("looper", iid, [0, gens, acc, target], acc + gens + 1)
    for n in range(rng.randint(0, 3)):
        target, amount = rng.choice(accounts), rng.randint(1, 20)
        w.deposits.append((target, f"deposit{n}", amount))
        w.account_in[target][f"deposit{n}"] += 1
        w.balances[target] += amount
    rng.shuffle(w.starts)  # the client starts them in a random order
    return w


# -- the simulation ------------------------------------------------------------------------


class Simulation:
    """One seeded run: a cluster, a workload, a crash schedule and a chaotic network.

    ``log`` records every fault and client action in order; with the stores it is what two
    runs of one seed must reproduce exactly.
    """

    def __init__(
        self, seed: int, *, data_dir: Path | None = None, store_faults: float = 0.0
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.partitions = self.rng.choice([3, 4])
        # Small batches make more batches, hence more crash points between related steps.
        config = HubConfig(max_batch_items=self.rng.choice([2, 3, 8, 64]), resend_interval=5.0)
        self.cluster = Cluster(
            REGISTRY,
            partitions=self.partitions,
            config=config,
            data_dir=data_dir,
            hold_messages=True,
            hold_activities=True,
            auto_advance=True,
            seed=seed,
        )
        # Store reads and commits that raise at random while batches run (memory stores
        # only: a reopened LMDB store would come without its injector).
        self.injectors = [
            FaultInjector(random.Random(seed * 1000 + index), store_faults)
            for index in range(self.partitions if store_faults else 0)
        ]
        for store, injector in zip(self.cluster.stores, self.injectors, strict=False):
            store.injector = injector
        self.workload = build_workload(self.rng, self.partitions)
        kinds = list(CRASH_KINDS)
        self.rng.shuffle(kinds)  # every kind at least once, then any
        kinds += self.rng.choices(CRASH_KINDS, k=self.rng.randint(2, 9))
        points = sorted(self.rng.sample(range(1, CRASH_HORIZON), len(kinds)))
        self.crash_plan: deque[tuple[int, str]] = deque(zip(points, kinds, strict=True))
        # How hostile the network and the workers are varies by seed: some runs lose
        # little, some lose a lot.
        self.message_weights = [55, 10, self.rng.choice([5, 15, 40]), 20]
        self.activity_weights = [55, 10, 10, self.rng.choice([10, 25, 50])]
        self.log: list[tuple[Any, ...]] = []
        self.batches = 0
        self.starts = deque(self.workload.starts)
        self.events = {iid: deque(values) for iid, values in self.workload.events.items()}
        self.deposits = deque(self.workload.deposits)
        self.last_token: dict[str, int] = {}  # per instance: its client's latest request
        self.tokens: list[int] = []
        #: late duplicates: activity tasks already executed once, to deliver again later
        self.again: list[ActivityTask] = []

    # -- the client ------------------------------------------------------------------------

    def client(self, p: float) -> bool:
        """Each ready client action happens with probability ``p``; True if any did."""
        c, rng, acted = self.cluster, self.rng, False
        if self.starts and rng.random() < p:
            name, iid, value, extra = self.starts.popleft()
            if "start_at" in extra:  # the delay counts from now, on the simulated clock
                extra = {"start_at": c.now + extra["start_at"]}
            self.last_token[iid] = token = c.start(name, iid, value, **extra)
            self.tokens.append(token)
            self.log.append((self.batches, "start", iid))
            acted = True
        for iid, values in self.events.items():
            # One request at a time per instance, like a real client: the next event only
            # once the previous request (the start first) was answered, so that events keep
            # their order and never reach an instance not yet started.
            if not values or self.last_token.get(iid) not in c.replies or rng.random() >= p:
                continue
            value = values.popleft()
            self.last_token[iid] = token = c.submit(
                "raise_event",
                instance_id=iid,
                name="e",
                data=codec.encode(value),
                request_id=f"{iid}/e{len(values)}",
            )
            self.tokens.append(token)
            self.log.append((self.batches, "event", iid, value))
            acted = True
        if self.deposits and rng.random() < p:
            target, rid, amount = self.deposits.popleft()
            token = c.submit(
                "signal_entity",
                partition=partition_for(target, self.partitions),
                request_id=rid,
                entity_id=target,
                operation="deposit",
                input=codec.encode([rid, amount]),
            )
            self.tokens.append(token)
            self.log.append((self.batches, "deposit", target, rid))
            acted = True
        return acted

    def client_done(self) -> bool:
        return not (self.starts or self.deposits or any(self.events.values()))

    # -- faults ----------------------------------------------------------------------------

    def network(self, force: bool) -> bool:
        """Decide the fate of every message bundle in transit; True if any was delivered."""
        c, rng = self.cluster, self.rng
        bundles, c.in_transit = c.in_transit, []
        delivered = False
        for source, destination, messages in bundles:
            fate = (
                "deliver"
                if force
                else rng.choices(
                    ["deliver", "duplicate", "drop", "delay"], weights=self.message_weights
                )[0]
            )
            if fate != "deliver":
                self.log.append((self.batches, fate, source, destination, _seqs(messages)))
            if fate in ("deliver", "duplicate"):
                c.cores[destination].submit_messages(source, list(messages))
                delivered = True
            if fate in ("duplicate", "delay"):  # a copy comes (again) later, out of order
                c.in_transit.append((source, destination, messages))
            # "drop": lost; the sender resends what is not acknowledged after resend_interval
        return delivered

    def activities(self, force: bool) -> bool:
        """Run held activities now, twice, now and again later, or later; True if any ran."""
        c, rng = self.cluster, self.rng
        tasks, c.held = c.held, []
        again, self.again = self.again, []
        ran = False
        for task in tasks:
            fate = (
                "run"
                if force
                else rng.choices(
                    ["run", "twice", "late-copy", "hold"], weights=self.activity_weights
                )[0]
            )
            if fate != "run":
                self.log.append((self.batches, fate, task.instance_id, task.task_id))
            if fate == "hold":
                c.held.append(task)
                continue
            c.execute(task)
            ran = True
            if fate == "twice":  # a duplicate result at once: must be ignored
                c.execute(task)
            elif fate == "late-copy":  # a duplicate result much later (maybe after a crash)
                self.again.append(task)
        for task in again:
            if force or rng.random() < 0.3:
                self.log.append((self.batches, "late-duplicate", task.instance_id, task.task_id))
                c.execute(task)
                ran = True
            else:
                self.again.append(task)
        return ran

    def crash(self, index: int) -> None:
        """Crash core ``index`` the planned way, if a planned crash is due."""
        if not self.crash_plan or self.crash_plan[0][0] > self.batches:
            return
        _, kind = self.crash_plan.popleft()
        self.log.append((self.batches, "crash-" + kind, index))
        if kind == "before":  # the batch's commit fails: batch and intake lost
            self.cluster.crash_before_commit(index)
        elif kind == "after":  # the batch commits, its replies, messages and tasks are lost
            self.cluster.crash_after_commit(index)
        else:  # "kill": between batches, only what waits in the intake is lost
            self.cluster.reopen(index)

    def on_batch(self, _batch: int, index: int) -> None:
        """``Cluster.run``'s hook, before each batch: the client, the faults, time."""
        self.batches += 1
        rng, c = self.rng, self.cluster
        self.client(0.3)
        self.network(force=False)
        self.activities(force=False)
        if rng.random() < 0.05:  # wall time jumps: timers and scheduled signals come due
            seconds = rng.choice([1, 5, 30])
            c.advance(seconds)
            self.log.append((self.batches, "advance", seconds))
        if rng.random() < 0.05:  # monotonic time jumps: unacknowledged messages are resent
            c.mono.now += c.config.resend_interval
            self.log.append((self.batches, "resend-due"))
        self.crash(index)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> None:
        """The faulty phase, then a healing phase that delivers everything held back."""
        c = self.cluster
        for _ in range(1000):
            c.run(on_batch=self.on_batch)
            if not self.crash_plan and self.client_done():
                break
            # The hub went idle while the client still has work or messages and results are
            # held back: deliver them all (and act as the client), then go on.
            progressed = self.client(1.0)
            progressed |= self.network(force=True)
            progressed |= self.activities(force=True)
            if not progressed and not c.pending:
                break  # nothing left to do: any crash still planned can no longer happen
        # Healing: no more faults; deliver what is still held back and finish the client.
        c.hold_messages = c.hold_activities = False
        for _ in range(1000):
            self.client(1.0)
            self.network(force=True)
            self.activities(force=True)
            c.run()
            if (
                self.client_done()
                and not (c.in_transit or c.held or self.again or c.pending)
                and not any(core.has_work() or core.resend_due() for core in c.cores)
            ):
                return
        raise AssertionError(f"seed {self.seed}: the healing phase did not quiesce")

    # -- the checks ------------------------------------------------------------------------

    def dump(self) -> dict[int, dict[str, list[tuple[bytes, bytes]]]]:
        """Every database of every partition, row by row.

        ``meta``'s ``activity_costs`` is left out: it holds the activities' measured wall
        and CPU durations (``time.perf_counter``), the one thing a simulated clock does not
        control.
        """
        out: dict[int, dict[str, list[tuple[bytes, bytes]]]] = {}
        for index, store in enumerate(self.cluster.stores):
            out[index] = {
                db: [(k, v) for k, v in store.scan(db) if not (db == "meta" and k == COSTS_KEY)]
                for db in DATABASES
            }
        return out

    def check(self) -> dict[str, int]:
        """Assert every invariant; returns what happened (crashes, re-executions, ...)."""
        c, w, seed = self.cluster, self.workload, self.seed
        where = f"seed {seed} (replay: simulate({seed}))"
        assert not self.crash_plan, f"{where}: crashes planned but never reached"
        for token in self.tokens:  # every client request answered, none with an error
            assert token in c.replies, f"{where}: request {token} never answered"
            errors = [r.error for r in c.replies[token] if isinstance(r, Reply)]
            assert not errors, f"{where}: request {token} failed: {errors}"

        # Every instance on every partition: the expected ones, COMPLETED, right output.
        instances = {}
        for index in range(self.partitions):
            for record in c.call("query", partition=index, limit=10_000):
                instances[record.instance_id] = record
        named = set(w.outputs)
        assert named <= set(instances), f"{where}: missing {sorted(named - set(instances))}"
        for iid, record in sorted(instances.items()):
            assert Status.COMPLETED == record.status, f"{where}: {iid} {record.status}"
            if iid in w.outputs:
                assert w.outputs[iid] == codec.decode(record.output), f"{where}: {iid} output"
            # Exactly-once recording: each scheduled task, timer, entity call, lock and
            # child has one result in the history (of the last generation, for a loop).
            history = c.history(iid)
            scheduled, results = scheduled_and_results(history)
            assert scheduled == results, f"{where}: {iid} results {results} for {scheduled}"
            assert set(completions(history).values()) <= {1}, f"{where}: {iid} duplicate"
            # Each recorded result came from an execution in the ledger (ids repeat across
            # continue-as-new generations, so this reads "at least once").
            for e in history:
                if isinstance(e, h.TaskScheduled):
                    assert c.executions[(iid, e.event_id)] >= 1, f"{where}: {iid} {e.event_id}"
            failed = [e for e in history if isinstance(e, FAILURE_EVENTS)]
            assert not failed, f"{where}: {iid} {failed}"
        # Unnamed instances are the parents' default-id fan children.
        expected_unnamed = sum(1 for name, *_ in w.starts if name == "parent")
        assert expected_unnamed == len(set(instances) - named), f"{where}: stray instances"

        # Entities: exact counters and balances, money conserved, no lock or queue left.
        entities = {}
        for index in range(self.partitions):
            for record in c.call("query_entities", partition=index, limit=10_000):
                assert record.locked_by is None and record.lock_owner is None, (where, record)
                assert [] == record.queue, (where, record)
                entities[record.entity_id] = codec.decode(record.state)
        for counter_id, ops in w.counter_ops.items():
            if not ops:
                assert counter_id not in entities, where
                continue
            state = entities[counter_id]
            assert ops == Counter(state["ops"]), f"{where}: {counter_id} ops"
            assert w.counter_totals[counter_id] == state["total"], f"{where}: {counter_id}"
        balances = {}
        for account_id, balance in w.balances.items():
            state = entities.get(account_id)
            if state is None:  # never touched: neither transferred from nor to
                assert not (w.account_in[account_id] or w.account_out[account_id]), where
                balances[account_id] = INITIAL_BALANCE
                continue
            assert w.account_in[account_id] == Counter(state["in"]), f"{where}: {account_id}"
            assert w.account_out[account_id] == Counter(state["out"]), f"{where}: {account_id}"
            assert balance == state["balance"], f"{where}: {account_id} balance"
            balances[account_id] = state["balance"]
        deposited = sum(amount for _, _, amount in w.deposits)
        expected_total = INITIAL_BALANCE * len(w.balances) + deposited
        assert expected_total == sum(balances.values()), f"{where}: money made or lost"

        # Nothing left in flight: outboxes acknowledged, timers fired, activities recorded.
        for index, store in enumerate(c.stores):
            for db in ("outbox", "timers", "activities", "inbox"):
                assert not store.count(db), f"{where}: partition {index} {db} not empty"
            # The status counters, kept batch by batch through every crash, match the records.
            counted = count_records(store.scan("instances"))
            assert counted == c.call("count", partition=index), f"{where}: partition {index}"
            assert counted == codec.decode(store.get("meta", STATUS_COUNTS_KEY) or b"\x80")

        re_executions = sum(n - 1 for n in c.executions.values() if n > 1)
        crashes = Counter(e[1] for e in self.log if str(e[1]).startswith("crash-"))
        faults = Counter(e[1] for e in self.log)
        return {
            "batches": self.batches,
            "crashes": sum(crashes.values()),
            "dropped": faults["drop"],
            "duplicated_messages": faults["duplicate"],
            "duplicate_results": faults["twice"] + faults["late-duplicate"],
            # At-least-once execution: an activity may run again after a crash or a lost
            # result; only its recorded result must be unique.
            "re_executions": re_executions,
            # ... of which the engine's own re-dispatches (the rest are the duplicates above)
            "re_dispatched": re_executions - faults["twice"] - faults["late-duplicate"],
        }


#: Events that schedule something with an id, and the events that answer it.
SCHEDULING_EVENTS = (
    h.TaskScheduled,
    h.TimerCreated,
    h.SubOrchestrationInstanceCreated,
    h.EntityOperationCalled,
    h.EntityLockRequested,
)
RESULT_EVENTS = (
    h.TaskCompleted,
    h.TaskFailed,
    h.SubOrchestrationInstanceCompleted,
    h.SubOrchestrationInstanceFailed,
    h.EntityOperationCompleted,
    h.EntityOperationFailed,
    h.EntityLockGranted,
)
FAILURE_EVENTS = (
    h.TaskFailed,
    h.SubOrchestrationInstanceFailed,
    h.EntityOperationFailed,
)


def scheduled_and_results(history: list[h.HistoryEvent]) -> tuple[Counter[int], Counter[int]]:
    """How often each id was scheduled, and how many results each id got."""
    scheduled = Counter(e.event_id for e in history if isinstance(e, SCHEDULING_EVENTS))
    results = Counter(e.task_scheduled_id for e in history if isinstance(e, RESULT_EVENTS))
    results.update(e.timer_id for e in history if isinstance(e, h.TimerFired))
    return scheduled, results


def _seqs(messages: list[Message]) -> tuple[int, ...]:
    return tuple(m.seq for m in messages)


@dataclass
class Outcome:
    """A finished run: its log, its stores as they were at quiescence, its numbers."""

    log: list[tuple[Any, ...]]
    stores: dict[int, dict[str, list[tuple[bytes, bytes]]]]
    stats: dict[str, int]


def simulate(seed: int, data_dir: Path | None = None, store_faults: float = 0.0) -> Outcome:
    """Run seed ``seed`` to quiescence and check every invariant."""
    sim = Simulation(seed, data_dir=data_dir, store_faults=store_faults)
    try:
        sim.run()
        for injector in sim.injectors:
            injector.rate = 0.0  # the checks read the stores: no more faults
        stores = sim.dump()  # before the checks' own requests run batches
        stats = sim.check()
        stats["store_faults"] = sum(i.injected for i in sim.injectors)
        stats["rebuilds"] = sim.cluster.rebuilds
        return Outcome(sim.log, stores, stats)
    except Exception as exc:  # an engine error mid-run: say which seed replays it
        exc.add_note(f"seed {seed}: replay with simulate({seed})")
        raise
    finally:
        sim.cluster.close()


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", MEMORY_SEEDS)
def test_simulated_hub_keeps_every_invariant(seed: int, record_property: Any) -> None:
    """One seeded run on memory stores: all instances complete with the right output,
    every result is recorded once, entities are exact, nothing is left in flight."""
    stats = simulate(seed).stats
    for name, value in stats.items():  # information, e.g. re-executions: not a failure
        record_property(name, value)
    assert stats["crashes"] >= len(CRASH_KINDS), f"seed {seed}: {stats}"


@pytest.mark.parametrize("seed", LMDB_SEEDS)
def test_simulated_hub_on_lmdb_keeps_every_invariant(
    seed: int, tmp_path: Path, record_property: Any
) -> None:
    """The same simulation on LMDB stores, where a crash also closes and reopens the
    environment: the same invariants hold, and the run is the very one the memory stores
    make (same faults, same bytes stored)."""
    outcome = simulate(seed, data_dir=tmp_path)
    for name, value in outcome.stats.items():
        record_property(name, value)
    assert outcome.stats["crashes"] >= len(CRASH_KINDS), f"seed {seed}: {outcome.stats}"
    in_memory = simulate(seed)
    assert in_memory.log == outcome.log, f"seed {seed}: LMDB and memory runs diverge"
    assert in_memory.stores == outcome.stores, f"seed {seed}: LMDB and memory stores differ"


@pytest.mark.parametrize("seed", STORE_FAULT_SEEDS)
def test_store_faults_cost_one_rebuild_each_and_lose_nothing(
    seed: int, record_property: Any
) -> None:
    """The same simulation over stores whose reads and commits raise at random while a
    batch runs (engine/poison.py): every instance still completes with its output, every
    result is recorded once, and each injected fault cost exactly one in-process rebuild
    of its partition: no restart, no item taken for poison."""
    stats = simulate(seed, store_faults=0.03).stats
    for name, value in stats.items():
        record_property(name, value)
    assert stats["store_faults"] > 0, f"seed {seed}: no fault injected"
    assert stats["rebuilds"] == stats["store_faults"], f"seed {seed}: {stats}"


@pytest.mark.parametrize("seed", [7, 23])
def test_one_seed_reproduces_the_whole_run(seed: int) -> None:
    """Two runs of one seed make the same faults and client actions and leave
    byte-identical stores on every partition; another seed makes a different run."""
    first, second = simulate(seed), simulate(seed)
    assert first.log == second.log, f"seed {seed}: the fault schedule differs"
    assert first.stores == second.stores, f"seed {seed}: the stores differ"
    other = simulate(seed + 1)
    # Not vacuous: the schedule and the stores depend on the seed.
    assert first.log != other.log
    assert first.stores != other.stores
    kinds = {e[1] for e in first.log}
    expected = {"crash-before", "crash-after", "crash-kill", "drop", "duplicate", "twice"}
    assert expected <= kinds, f"seed {seed}: {kinds}"


# -- engine bugs the simulation found (minimal reproductions) ------------------------------
#
# Seeds 417, 1077, 1132 and 1711 of the simulation above (not in MEMORY_SEEDS) end with
# transfers stuck RUNNING behind an account locked by a transfer that had completed. The
# cause, shown below without any crash or fault: within one batch, the partition applies
# the messages it sent to itself in further "local rounds" (partition.LOCAL_ROUNDS), each
# ending with EntityHost._save_entities. That method drops from its cache an entity that
# no longer exists (no state, lock or queue) and, past max_cached_entities, the least
# recently used ones, although their new rows are only in the batch's uncommitted write
# batch. A later round of the same batch then reads the entity back from the store, i.e.
# as it was before the batch, and writes that stale record over the new one.

BOX_X = str(EntityId("box", "x"))
BOX_Y = str(EntityId("box", "y"))


def box(ctx: Any, arg: Any) -> Any:
    """An entity that never stores state (it exists only while locked or queued)."""
    return ctx.get_state() or 0


def tally(ctx: Any, arg: Any) -> Any:
    """Counts its "add" operations."""
    ctx.set_state((ctx.get_state() or 0) + 1)
    return ctx.get_state()


def unlock_then_call(ctx: Any, _: Any) -> Any:
    with (yield ctx.lock_entities([BOX_X])):
        yield ctx.create_timer(timedelta(seconds=1))  # the lock is committed, then released
    # One batch: the unlock of x and the call to y go out; y's reply comes back in a
    # local round; the call to x goes out in the next round and reaches x in the one after.
    yield ctx.call_entity(BOX_Y, "get")
    return (yield ctx.call_entity(BOX_X, "get"))


def add_three(ctx: Any, _: Any) -> Any:
    yield ctx.call_entity("@tally@x", "add")
    yield ctx.create_timer(timedelta(seconds=1))  # the first add is committed
    yield ctx.call_entity("@tally@x", "add")
    return (yield ctx.call_entity("@tally@x", "add"))  # a later round of the same batch


def bug_registry() -> Registry:
    registry = Registry()
    registry.add_orchestration(unlock_then_call, "unlock_then_call")
    registry.add_orchestration(add_three, "add_three")
    registry.add_entity(box, "box")
    registry.add_entity(tally, "tally")
    return registry


def test_entity_released_then_called_again_in_one_batch_is_not_locked_again() -> None:
    """One partition, no fault: a critical section ends and, in later local rounds of the
    same batch, the orchestration calls the entity it just released. The call must run
    and the lock stay released. (Found by the simulation: the released entity used to be
    dropped from the cache before the commit and read back stale, still locked.)"""
    with Cluster(bug_registry(), partitions=1, auto_advance=True) as cluster:
        cluster.start("unlock_then_call", "u")
        cluster.run()
        state = cluster.state("u")
        records = cluster.call("query_entities", partition=0)
    assert [] == [(r.entity_id, r.locked_by) for r in records]  # nothing left locked
    assert Status.COMPLETED == state.status


def test_entity_update_survives_cache_eviction_within_a_batch() -> None:
    """With no entity cache, three calls to a counting entity, the last two in successive
    local rounds of one batch, must count three. (Found by the simulation: an entity
    evicted before the commit was read back stale and an update lost.)"""
    config = HubConfig(max_cached_entities=0)
    with Cluster(bug_registry(), partitions=1, config=config, auto_advance=True) as cluster:
        cluster.start("add_three", "a")
        cluster.run()
        output = cluster.output("a")
        record = cluster.call("get_entity", partition=0, entity_id="@tally@x")
    assert 3 == codec.decode(record.state)
    assert 3 == output
