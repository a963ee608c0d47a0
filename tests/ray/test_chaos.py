"""Chaos on Ray: the project's own reliability suite, bounded to run in well under a minute.

Two tests on the session's Ray instance:

- random kills: while a mixed workload runs (activity chains, fan-out/fan-in,
  sub-orchestrations, entity calls and signals, a locked transfer between two accounts,
  durable timers, external events raised by the client, continue-as-new), a seeded
  background thread kills a random partition actor or activity worker every 0.5-2 s and
  Ray restarts it. Afterwards nothing may be lost or recorded twice, money is conserved
  and no entity lock is left held. The kills, the activity re-executions and the time
  each killed actor took to answer again are reported (``record_property`` and stdout).
- a whole-hub crash: every actor of a hub is killed at once, for good, while instances
  wait on events and timers, hold an entity lock and are mid fan-out; a hub relaunched on
  the same data dir finishes all of them, each result recorded once.

Activities run in worker processes, so executions are counted in an external ledger: one
appended line per execution in a file under the test's tmp dir (as in test_ray_crash.py).
Activities are declared ``cpu_bound=False``: they always travel to the worker pool, never
run inline in a partition, so a worker kill really hits running activities.
"""

from __future__ import annotations

import collections
import os
import random
import statistics
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import ray

import duraray as dr
from duraray.orchestrations import history as h
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name
from duraray.runtime.ray.pools import pools_actor_name
from duraray.runtime.ray.shared_pool import worker_actor_name

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

#: Seconds any single wait may take before it counts as a failure (restarts included).
TIMEOUT = 90.0
#: One seed drives the workload and the kill schedule (timing still varies run to run);
#: $DURARAY_CHAOS_SEED picks another, to explore or to replay a failing run's schedule.
SEED = int(os.environ.get("DURARAY_CHAOS_SEED", "1234"))
#: How long the killer runs, and the pause before each kill.
CHAOS_S = 15.0
KILL_PAUSE_S = (0.5, 2.0)
#: Seconds between two waves of new instances while the killer runs.
WAVE_EVERY_S = 1.0
#: Every account starts with this balance (its first operation creates it so).
INITIAL_BALANCE = 1000
#: A transfer of this much is never covered: it takes the "not moved" branch.
HUGE = 10**9
ACCOUNTS = [str(dr.EntityId("account", f"a{n}")) for n in range(4)]
TALLIES = [str(dr.EntityId("tally", f"t{n}")) for n in range(3)]

Status = dr.OrchestrationStatus


# -- the ledger ------------------------------------------------------------------------------


def _record_execution(log_path: str, ctx: dr.ActivityContext, generation: int) -> None:
    # One short O_APPEND write per execution: atomic, whatever process the activity runs in.
    # The generation tells continue-as-new executions apart (their task ids repeat).
    with open(log_path, "a") as log:
        log.write(f"{ctx.instance_id} {generation} {ctx.task_id}\n")


def _executions(log_path: Path) -> collections.Counter[tuple[str, int, int]]:
    if not log_path.exists():
        return collections.Counter()
    lines = log_path.read_text().splitlines()
    return collections.Counter((i, int(g), int(t)) for i, g, t in (x.split() for x in lines))


# -- activities, entities and orchestrations of the workload --------------------------------


def inc(ctx: dr.ActivityContext, arg: list) -> int:
    """``arg = [ledger, generation, x]``: x + 1 after 100 ms."""
    log_path, generation, x = arg
    _record_execution(log_path, ctx, generation)
    time.sleep(0.1)  # long: a wave keeps workers busy, so kills hit running activities
    return x + 1


def double(ctx: dr.ActivityContext, arg: list) -> int:
    """``arg = [ledger, generation, x]``: 2 * x after 100 ms."""
    log_path, generation, x = arg
    _record_execution(log_path, ctx, generation)
    time.sleep(0.1)  # long: a wave keeps workers busy, so kills hit running activities
    return 2 * x


def slow_double(ctx: dr.ActivityContext, arg: list) -> int:
    """``arg = [ledger, generation, x]``: 2 * x after 300 ms (long enough to be killed in)."""
    log_path, generation, x = arg
    _record_execution(log_path, ctx, generation)
    time.sleep(0.3)
    return 2 * x


class Tally(dr.DurableEntity):
    """A total plus the ids of the operations applied (to count each one)."""

    def add(self, arg: list) -> int:
        op_id, amount = arg
        state = self.get_state(dict, None) or {"total": 0, "ops": []}
        state["total"] += amount
        state["ops"].append(op_id)
        self.set_state(state)
        return amount


class Account(dr.DurableEntity):
    """A balance plus the ids of the deposits and withdrawals applied."""

    def _state(self) -> dict[str, Any]:
        return self.get_state(dict, None) or {"balance": INITIAL_BALANCE, "in": [], "out": []}

    def get(self) -> int:
        state = self._state()
        self.set_state(state)  # every account touched exists, to be found and checked
        return state["balance"]

    def deposit(self, arg: list) -> int:
        tid, amount = arg
        state = self._state()
        state["balance"] += amount
        state["in"].append(tid)
        self.set_state(state)
        return state["balance"]

    def withdraw(self, arg: list) -> int:
        tid, amount = arg
        state = self._state()
        if state["balance"] < amount:
            raise ValueError(f"overdraw of {amount} by {tid}")
        state["balance"] -= amount
        state["out"].append(tid)
        self.set_state(state)
        return state["balance"]


def chain(ctx: dr.OrchestrationContext, spec: list):
    """``n`` activities in sequence: x + n."""
    log_path, x, n = spec
    for _ in range(n):
        x = yield ctx.call_activity(inc, input=[log_path, 0, x])
    return x


def fan(ctx: dr.OrchestrationContext, spec: list):
    """Fan-out of ``n`` activities, fan-in of their sum."""
    log_path, x, n = spec
    values = yield dr.when_all(
        [ctx.call_activity(double, input=[log_path, 0, x + i]) for i in range(n)]
    )
    return sum(values)


def slow_fan(ctx: dr.OrchestrationContext, spec: list):
    """``fan`` with 300 ms activities."""
    log_path, x, n = spec
    values = yield dr.when_all(
        [ctx.call_activity(slow_double, input=[log_path, 0, x + i]) for i in range(n)]
    )
    return sum(values)


def parent(ctx: dr.OrchestrationContext, spec: list):
    """Chains as children with the given ids (on chosen partitions), then a fan child with
    the default id ``<parent>:<task id>``."""
    log_path, x, child_ids = spec
    subs = yield dr.when_all(
        [
            ctx.call_sub_orchestrator(chain, input=[log_path, x + 10 * j, 2], instance_id=kid)
            for j, kid in enumerate(child_ids)
        ]
    )
    fanned = yield ctx.call_sub_orchestrator(fan, input=[log_path, x, 2])
    return [subs, fanned]


def counting(ctx: dr.OrchestrationContext, ops: list):
    """Entity calls (their results summed) and signals on tallies."""
    total = 0
    for tally_id, op_id, amount, how in ops:
        if how == "call":
            total += yield ctx.call_entity(tally_id, "add", [op_id, amount])
        else:
            ctx.signal_entity(tally_id, "add", [op_id, amount])
    return total


def transfer(ctx: dr.OrchestrationContext, spec: list):
    """The critical section: lock both accounts, move the amount if it is covered."""
    tid, source, target, amount = spec
    with (yield ctx.lock_entities([source, target])):
        balance = yield ctx.call_entity(source, "get")
        moved = balance >= amount
        if moved:
            yield dr.when_all(
                [
                    ctx.call_entity(source, "withdraw", [tid, amount]),
                    ctx.call_entity(target, "deposit", [tid, amount]),
                ]
            )
    return moved


def sleeper(ctx: dr.OrchestrationContext, spec: list):
    """Durable timers, then an activity; says whether no timer fired early."""
    log_path, delays, x = spec
    start = ctx.current_utc_datetime
    yield dr.when_all([ctx.create_timer(timedelta(seconds=d)) for d in delays])
    on_time = ctx.current_utc_datetime >= start + timedelta(seconds=max(delays))
    return [on_time, (yield ctx.call_activity(inc, input=[log_path, 0, x]))]


def waiter(ctx: dr.OrchestrationContext, spec: list):
    """Waits for ``n`` external events "e", one activity after each."""
    log_path, n = spec
    got = []
    for _ in range(n):
        value = yield ctx.wait_for_external_event("e")
        got.append((yield ctx.call_activity(inc, input=[log_path, 0, value])))
    return got


def looper(ctx: dr.OrchestrationContext, spec: list):
    """Continue-as-new over ``gens`` generations: an activity, a signal and (every other
    generation) a short timer each."""
    log_path, gen, gens, acc, tally_id = spec
    acc = yield ctx.call_activity(inc, input=[log_path, gen, acc])
    ctx.signal_entity(tally_id, "add", [f"{ctx.instance_id}/g{gen}", 1])
    if gen % 2:
        yield ctx.create_timer(timedelta(seconds=0.3))
    if gen < gens:
        ctx.continue_as_new([log_path, gen + 1, gens, acc, tally_id])
        return None
    return acc


def hold_lock(ctx: dr.OrchestrationContext, spec: list):
    """Locks an account, deposits, waits for "go" inside the section, deposits again."""
    account, tid = spec
    with (yield ctx.lock_entities([account])):
        yield ctx.call_entity(account, "deposit", [f"{tid}/1", 5])
        ctx.set_custom_status("locked")
        yield ctx.wait_for_external_event("go")
        balance = yield ctx.call_entity(account, "deposit", [f"{tid}/2", 5])
    return balance


ACTIVITIES = (inc, double, slow_double)
ORCHESTRATIONS = (chain, fan, slow_fan, parent, counting, transfer, sleeper, waiter, looper)
ORCHESTRATIONS += (hold_lock,)


def _make_app(name: str, partitions: int) -> dr.App:
    # resend_interval=1: a message lost with a killed partition is resent after 1 s, not 5,
    # which keeps the recovery (and the test) short; activity_workers=2: two worker victims.
    app = dr.App(name, partitions=partitions, activity_workers=2, resend_interval=1.0)
    for fn in ACTIVITIES:
        app.add_activity(fn, cpu_bound=False)
    for orchestration in ORCHESTRATIONS:
        app.add_orchestration(orchestration)
    app.add_entity(Tally)
    app.add_entity(Account)
    return app


chaos_app = _make_app("rt-chaos", partitions=3)
relaunch_app = _make_app("rt-chaos-relaunch", partitions=2)


# -- what the hub must end with --------------------------------------------------------------


@dataclass
class Expected:
    """Everything the client did, and what the hub must end with."""

    #: instance id -> expected output (top-level instances and named children)
    outputs: dict[str, Any] = field(default_factory=dict)
    #: instance id -> generation of its last execution (a looper's; others 0)
    generations: dict[str, int] = field(default_factory=dict)
    #: waiter id -> every event value, in order; and how many were raised so far
    events: dict[str, list[int]] = field(default_factory=dict)
    raised: collections.Counter[str] = field(default_factory=collections.Counter)
    #: instances that start a child with a default id (one each)
    default_children: int = 0
    tally_ops: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: {t: collections.Counter() for t in TALLIES}
    )
    tally_totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TALLIES, 0))
    account_in: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: {a: collections.Counter() for a in ACCOUNTS}
    )
    account_out: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: {a: collections.Counter() for a in ACCOUNTS}
    )
    balances: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(ACCOUNTS, INITIAL_BALANCE)
    )
    deposited: int = 0

    def moved(self, tid: str, source: str, target: str, amount: int) -> None:
        self.account_out[source][tid] += 1
        self.account_in[target][tid] += 1
        self.balances[source] -= amount
        self.balances[target] += amount

    def deposit(self, tid: str, target: str, amount: int) -> None:
        self.account_in[target][tid] += 1
        self.balances[target] += amount
        self.deposited += amount


def _child_id(parent_id: str, j: int, partitions: int, *, elsewhere: bool) -> str:
    """A child id for ``parent_id``: on another partition (``elsewhere``) or on its own."""
    home = partition_for(parent_id, partitions)
    for k in range(1000):
        candidate = f"{parent_id}-c{j}-{k}"
        if (partition_for(candidate, partitions) != home) == elsewhere:
            return candidate
    raise AssertionError("no child id found")


class Driver:
    """The client side of the chaos test: waves of mixed instances, events, deposits."""

    def __init__(self, client: dr.Client, log_path: Path, partitions: int, seed: int) -> None:
        self.client = client
        self.log = str(log_path)
        self.partitions = partitions
        self.rng = random.Random(seed)
        self.expected = Expected()
        self.waves = 0

    def _start(self, orchestration: Any, iid: str, spec: Any, output: Any) -> None:
        self.client.schedule_new_orchestration(orchestration, input=spec, instance_id=iid)
        self.expected.outputs[iid] = output
        self.expected.generations.setdefault(iid, 0)

    def wave(self) -> None:
        """Start one instance of each kind (ids prefixed by the wave), and one deposit."""
        rng, e, w, log = self.rng, self.expected, self.waves, self.log
        self.waves += 1
        x, n = rng.randint(0, 100), rng.randint(2, 4)
        self._start(chain, f"w{w}-chain", [log, x, n], x + n)
        x, n = rng.randint(0, 100), rng.randint(3, 6)
        self._start(fan, f"w{w}-fan", [log, x, n], sum(2 * (x + i) for i in range(n)))
        # Children on another partition (their start and result travel between partition
        # actors) and one on the parent's own; one more with a default id.
        iid, x = f"w{w}-parent", rng.randint(0, 100)
        kids = [_child_id(iid, j, self.partitions, elsewhere=j != 1) for j in range(2)]
        for j, kid in enumerate(kids):
            e.outputs[kid], e.generations[kid] = x + 10 * j + 2, 0
        e.default_children += 1
        self._start(parent, iid, [log, x, kids], [[x + 10 * j + 2 for j in range(2)], 4 * x + 2])
        iid, ops, called = f"w{w}-counting", [], 0
        for k in range(rng.randint(1, 3)):
            target, amount, how = (
                rng.choice(TALLIES),
                rng.randint(1, 9),
                rng.choice(["call", "signal"]),
            )
            ops.append([target, f"{iid}/{k}", amount, how])
            e.tally_ops[target][f"{iid}/{k}"] += 1
            e.tally_totals[target] += amount
            called += amount if how == "call" else 0
        self._start(counting, iid, ops, called)
        # At most CHAOS_S waves of at most 50 out of 1000: a small amount is always covered,
        # a huge one never, so the outcome does not depend on the interleaving.
        tid = f"w{w}-transfer"
        source, target = rng.sample(ACCOUNTS, 2)
        amount = HUGE if rng.random() < 0.2 else rng.randint(1, 50)
        if amount != HUGE:
            e.moved(tid, source, target, amount)
        self._start(transfer, tid, [tid, source, target, amount], amount != HUGE)
        delays, x = (
            [rng.choice([0.2, 0.5, 1.0]) for _ in range(rng.randint(1, 2))],
            rng.randint(0, 9),
        )
        self._start(sleeper, f"w{w}-sleeper", [log, delays, x], [True, x + 1])
        iid, values = f"w{w}-waiter", [rng.randint(0, 1000) for _ in range(rng.randint(1, 2))]
        e.events[iid] = values
        self._start(waiter, iid, [log, len(values)], [v + 1 for v in values])
        iid, gens, acc, target = (
            f"w{w}-looper",
            rng.randint(1, 2),
            rng.randint(0, 9),
            rng.choice(TALLIES),
        )
        for gen in range(gens + 1):
            e.tally_ops[target][f"{iid}/g{gen}"] += 1
            e.tally_totals[target] += 1
        self._start(looper, iid, [log, 0, gens, acc, target], acc + gens + 1)
        e.generations[iid] = gens
        # A client signal: durable when the call returns, applied later.
        target, amount = rng.choice(ACCOUNTS), rng.randint(1, 20)
        self.client.signal_entity(target, "deposit", [f"w{w}-deposit", amount])
        e.deposit(f"w{w}-deposit", target, amount)

    def raise_events(self, *, all_of_them: bool = False) -> None:
        """The next event of every waiter (or all of them), in order per waiter."""
        for iid, values in self.expected.events.items():
            while self.expected.raised[iid] < len(values):
                value = values[self.expected.raised[iid]]
                self.client.raise_orchestration_event(iid, "e", data=value)
                self.expected.raised[iid] += 1
                if not all_of_them:
                    break

    def run(self, until: float) -> None:
        """Waves, one a second, each followed by one event per waiter, until ``until``."""
        while time.monotonic() < until:
            next_wave = time.monotonic() + WAVE_EVERY_S
            self.wave()
            self.raise_events()
            time.sleep(max(0.0, next_wave - time.monotonic()))  # pacing, not waiting


# -- the killer ------------------------------------------------------------------------------


def _worker_pid(_worker: Any) -> int:
    """Run on an activity worker through ``__ray_call__`` (workers have no pid method)."""
    return os.getpid()


def _pid(kind: str, actor: Any, timeout: float) -> int:
    """The process id of a partition actor or activity worker (its answer to a cheap call)."""
    if kind == "partition":
        return int(ray.get(actor.describe.remote(), timeout=timeout)["pid"])
    return int(ray.get(actor.__ray_call__.remote(_worker_pid), timeout=timeout))


@dataclass
class Kill:
    """One kill: the victim, when, and how long until it answered again (a new process)."""

    kind: str
    index: int
    at: float
    recovery_s: float | None = None


class Killer:
    """Kills a random partition actor or activity worker every 0.5-2 s (Ray restarts it).

    Kinds alternate, so every run kills both; the index and the pause are drawn from a
    seeded RNG. A victim is never killed again before it answered after its last kill: the
    recovery time is then that of one kill, and a restart is never cut short.
    """

    def __init__(self, hub: str, partitions: int, workers: int, seed: int) -> None:
        self.rng = random.Random(seed)
        # Looked up by name: the shared workers start when the first batch needs them.
        self.names = {("partition", i): partition_actor_name(hub, i) for i in range(partitions)}
        self.names |= {("worker", i): worker_actor_name(hub, i) for i in range(workers)}
        self.kills: list[Kill] = []
        self._recovering: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._measures = ThreadPoolExecutor(len(self.names), thread_name_prefix="recovery")
        self._futures: list[Future[None]] = []

    def run(self, until: float) -> None:
        while True:
            time.sleep(self.rng.uniform(*KILL_PAUSE_S))
            if time.monotonic() >= until:
                return
            kind = ("partition", "worker")[len(self.kills) % 2]
            with self._lock:
                ready = sorted(v for v in self.names if v[0] == kind and v not in self._recovering)
            if not ready:
                continue
            victim = self.rng.choice(ready)
            actor = self._actor(victim)
            if actor is None:  # a shared worker not started yet
                continue
            old_pid = _pid(victim[0], actor, TIMEOUT)  # alive now: the kill hits a live process
            kill = Kill(victim[0], victim[1], time.monotonic())
            ray.kill(actor, no_restart=False)
            with self._lock:
                self._recovering.add(victim)
            self.kills.append(kill)
            self._futures.append(self._measures.submit(self._recover, victim, kill, old_pid))

    def _actor(self, victim: tuple[str, int]) -> Any | None:
        try:
            return ray.get_actor(self.names[victim], namespace=NAMESPACE)
        except ValueError:
            return None

    def _recover(self, victim: tuple[str, int], kill: Kill, old_pid: int) -> None:
        """Poll the victim until a new process answers; record how long that took."""
        actor = self._actor(victim)
        deadline = kill.at + TIMEOUT
        while time.monotonic() < deadline:
            try:
                # A call may still reach the dying process (same pid), or fail while it
                # restarts (a worker does not retry calls): either way, ask again.
                if _pid(victim[0], actor, max(0.1, deadline - time.monotonic())) != old_pid:
                    kill.recovery_s = time.monotonic() - kill.at
                    break
            except ray.exceptions.RayError:
                pass
            time.sleep(0.01)
        with self._lock:
            self._recovering.discard(victim)

    def join(self) -> None:
        """Wait for every recovery measurement (each bounded by TIMEOUT)."""
        for future in self._futures:
            future.result()
        self._measures.shutdown()


def _in_thread(target: Any, *args: Any) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``target`` in a thread; its exception (if any) lands in the returned list."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:  # re-raised by the test, not lost in a thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


# -- the checks ------------------------------------------------------------------------------

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
FAILURE_EVENTS = (h.TaskFailed, h.SubOrchestrationInstanceFailed, h.EntityOperationFailed)


def _wait_all(client: dr.Client, ids: list[str]) -> list[dr.OrchestrationState]:
    """Every instance finished; on a timeout, fail naming the ones that did not."""
    try:
        return client.wait_for_orchestrations(ids, timeout=TIMEOUT)
    except TimeoutError:
        states = {i: client.get_orchestration_state(i) for i in ids}
        stuck = {
            i: (s.runtime_status.name, s.custom_status) if s else "LOST"
            for i, s in states.items()
            if s is None or s.runtime_status is not Status.COMPLETED
        }
        pytest.fail(f"{len(stuck)} instances not finished within {TIMEOUT} s: {stuck}")


def _check_instances(
    client: dr.Client, expected: Expected, log_path: Path, states: list[dr.OrchestrationState]
) -> collections.Counter[tuple[str, int, int]]:
    """Every instance COMPLETED with its output; each scheduled task, timer, entity call,
    lock and child recorded exactly once; each recorded activity result backed by an
    execution in the ledger. Returns the ledger."""
    outputs = {s.instance_id: s.output for s in states}
    assert expected.outputs == outputs
    everything = client.get_all_instances()
    not_completed = {s.instance_id: s.runtime_status for s in everything}
    not_completed = {i: s for i, s in not_completed.items() if s is not Status.COMPLETED}
    assert {} == not_completed
    unnamed = {s.instance_id for s in everything} - set(expected.outputs)
    assert expected.default_children == len(unnamed), sorted(unnamed)
    executions = _executions(log_path)
    recorded: set[tuple[str, int, int]] = set()
    for state in everything:
        iid = state.instance_id
        history = client.get_orchestration_history(iid)
        scheduled = collections.Counter(
            e.event_id for e in history if isinstance(e, SCHEDULING_EVENTS)
        )
        results = collections.Counter(
            e.task_scheduled_id for e in history if isinstance(e, RESULT_EVENTS)
        )
        results.update(e.timer_id for e in history if isinstance(e, h.TimerFired))
        assert scheduled == results, f"{iid}: results {results} for {scheduled}"
        assert set(results.values()) <= {1}, f"{iid}: a result recorded twice"
        assert [] == [e for e in history if isinstance(e, FAILURE_EVENTS)], iid
        if iid in expected.events:  # each raised event delivered once
            raised = sum(1 for e in history if isinstance(e, h.EventRaised))
            assert len(expected.events[iid]) == raised, iid
        generation = expected.generations.get(iid, 0)
        for e in history:
            if isinstance(e, h.TaskCompleted):
                key = (iid, generation, e.task_scheduled_id)
                assert executions[key] >= 1, f"{key}: recorded but never executed"
                recorded.add(key)
    # ... and every execution of a last generation belongs to a recorded task (a looper's
    # earlier generations have no history left to compare with).
    last = {(s.instance_id, expected.generations.get(s.instance_id, 0)) for s in everything}
    stray = {key for key in executions if key[:2] in last and key not in recorded}
    assert set() == stray
    return executions


def _entities_settled(client: dr.Client, expected: Expected) -> dict[str, Any]:
    """What is still wrong with the entities (empty once all signals were applied)."""
    wrong: dict[str, Any] = {}
    entities = {str(m.id): m for m in client.get_all_entities()}
    for entity_id, m in entities.items():
        if m.locked_by is not None or m.backlog_queue_size:
            wrong[entity_id] = ("locked", m.locked_by, m.backlog_queue_size)
    for tally_id, ops in expected.tally_ops.items():
        state = entities[tally_id].state if tally_id in entities else None
        if not ops:
            if state is not None:
                wrong[tally_id] = state
        elif state is None or (ops, expected.tally_totals[tally_id]) != (
            collections.Counter(state["ops"]),
            state["total"],
        ):
            wrong[tally_id] = state
    for account_id, balance in expected.balances.items():
        state = entities[account_id].state if account_id in entities else None
        if state is None:
            if expected.account_in[account_id] or expected.account_out[account_id]:
                wrong[account_id] = None
            continue
        got = (
            collections.Counter(state["in"]),
            collections.Counter(state["out"]),
            state["balance"],
        )
        want = (expected.account_in[account_id], expected.account_out[account_id], balance)
        if got != want:
            wrong[account_id] = state
    return wrong


def _check_entities(client: dr.Client, expected: Expected) -> int:
    """Poll until every signal is applied (they travel after their senders finished):
    exact tallies and balances, each transfer and deposit applied once, no lock held, no
    message queued. Returns the total money, which must be conserved."""
    deadline = time.monotonic() + TIMEOUT
    while wrong := _entities_settled(client, expected):
        if time.monotonic() > deadline:
            pytest.fail(f"entities not settled within {TIMEOUT} s: {wrong}")
        time.sleep(0.05)
    total = 0
    for account_id in ACCOUNTS:
        metadata = client.get_entity(account_id)
        total += INITIAL_BALANCE if metadata is None else metadata.state["balance"]
    assert INITIAL_BALANCE * len(ACCOUNTS) + expected.deposited == total, "money made or lost"
    return total


def _re_executions(executions: collections.Counter[tuple[str, int, int]]) -> int:
    # At-least-once execution: a killed worker or partition repeats the activities it had
    # not reported; only their recorded results must be unique.
    return sum(n - 1 for n in executions.values())


# -- the tests -------------------------------------------------------------------------------


def test_random_kills_under_a_mixed_workload(ray_session, tmp_path: Path, record_property) -> None:
    """Partition actors and activity workers killed at random (Ray restarts them) while a
    mixed workload runs: 0 instances lost, 0 results recorded twice, balances conserved,
    no lock left held. Reports kills, re-executions and each kill's recovery time."""
    log_path = tmp_path / "executions.log"
    config = chaos_app.config
    began = time.monotonic()
    with chaos_app.run(data_dir=str(tmp_path / "data")) as client:
        launched = time.monotonic()
        driver = Driver(client, log_path, config.partitions, SEED)
        killer = Killer(chaos_app.name, config.partitions, config.activity_workers or 2, SEED)
        until = time.monotonic() + CHAOS_S
        driving, driver_errors = _in_thread(driver.run, until)
        killing, killer_errors = _in_thread(killer.run, until)
        for thread in (driving, killing):
            thread.join(CHAOS_S + TIMEOUT)
        assert [] == driver_errors + killer_errors
        assert not (driving.is_alive() or killing.is_alive())
        chaos_over = time.monotonic()
        driver.raise_events(all_of_them=True)  # the waiters' remaining events
        states = _wait_all(client, list(driver.expected.outputs))
        drained = time.monotonic()
        executions = _check_instances(client, driver.expected, log_path, states)
        total = _check_entities(client, driver.expected)
        killer.join()

    kills = killer.kills
    recoveries = [k.recovery_s for k in kills]
    assert None not in recoveries, f"an actor did not answer within {TIMEOUT} s: {kills}"
    assert len(kills) >= 4, kills  # the chaos really happened
    assert {"partition", "worker"} == {k.kind for k in kills}
    re_executions = _re_executions(executions)
    figures = {
        "kills": len(kills),
        "partition_kills": sum(k.kind == "partition" for k in kills),
        "worker_kills": sum(k.kind == "worker" for k in kills),
        "instances": len(driver.expected.outputs) + driver.expected.default_children,
        "activity_executions": sum(executions.values()),
        "re_executions": re_executions,
        "recovery_s_median": round(statistics.median(recoveries), 3),
        "recovery_s_max": round(max(recoveries), 3),
        "drain_s": round(drained - chaos_over, 2),
        "launch_s": round(launched - began, 2),
        "money": total,
    }
    for name, value in figures.items():
        record_property(name, value)
    record_property("recoveries", [(k.kind, k.index, round(k.recovery_s or 0, 3)) for k in kills])
    print(f"\nchaos (seed {SEED}):", figures)
    for k in kills:
        at = k.at - launched
        print(f"  kill {k.kind} {k.index} at +{at:.1f} s: answered after {k.recovery_s:.3f} s")


def _all_actor_names(hub: str, partitions: int, workers: int) -> list[str]:
    names = [partition_actor_name(hub, i) for i in range(partitions)]
    names += [worker_actor_name(hub, i) for i in range(workers)]
    return [*names, pools_actor_name(hub)]


def _poll(probe: Any, done: Any, what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not done(value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {TIMEOUT} s; last value: {value!r}")
        time.sleep(0.01)
    return value


def _name_taken(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def test_whole_hub_killed_and_relaunched_on_its_data_dir(
    hubs_to_stop, tmp_path: Path, record_property
) -> None:
    """Every actor of a hub killed at once, for good, with instances waiting on events and
    timers, one holding an entity lock (another queued behind it) and one mid fan-out; a
    hub relaunched on the same data dir finishes them all, each result recorded once."""
    hub, config = relaunch_app.name, relaunch_app.config
    hubs_to_stop.append(hub)
    data_dir, log_path = str(tmp_path / "data"), tmp_path / "executions.log"
    log = str(log_path)
    a0, a1, tally = ACCOUNTS[0], ACCOUNTS[1], TALLIES[0]
    expected = Expected()
    expected.outputs = {
        "r-waiter-0": [6, 8],
        "r-waiter-1": [12],
        "r-sleeper": [True, 4],
        "r-fan": sum(2 * i for i in range(16)),
        "r-chain": 1 + 6,
        "r-hold": INITIAL_BALANCE + 10,  # the transfer queues behind its lock
        "r-transfer": True,
        "r-looper": 0 + 4,
    }
    expected.generations["r-looper"] = 3
    expected.events = {"r-waiter-0": [5, 7], "r-waiter-1": [11]}
    expected.deposit("r-hold/1", a0, 5)
    expected.deposit("r-hold/2", a0, 5)
    expected.moved("r-transfer", a0, a1, 30)
    for gen in range(4):
        expected.tally_ops[tally][f"r-looper/g{gen}"] += 1
        expected.tally_totals[tally] += 1

    with relaunch_app.run(data_dir=data_dir) as client:
        client.schedule_new_orchestration(waiter, input=[log, 2], instance_id="r-waiter-0")
        client.schedule_new_orchestration(waiter, input=[log, 1], instance_id="r-waiter-1")
        client.schedule_new_orchestration(
            sleeper, input=[log, [1.0, 2.0], 3], instance_id="r-sleeper"
        )
        client.schedule_new_orchestration(chain, input=[log, 1, 6], instance_id="r-chain")
        client.schedule_new_orchestration(
            looper, input=[log, 0, 3, 0, tally], instance_id="r-looper"
        )
        client.schedule_new_orchestration(hold_lock, input=[a0, "r-hold"], instance_id="r-hold")
        _poll(
            lambda: client.get_orchestration_state("r-hold").custom_status,
            lambda status: status == "locked",
            "r-hold inside its critical section",
        )
        client.schedule_new_orchestration(
            transfer, input=["r-transfer", a0, a1, 30], instance_id="r-transfer"
        )
        client.schedule_new_orchestration(slow_fan, input=[log, 0, 16], instance_id="r-fan")
        # Mid fan-out: some 300 ms activities have started (the ledger line is their first
        # act), none can have finished yet.
        _poll(
            lambda: sum(n for (i, _, _), n in _executions(log_path).items() if i == "r-fan"),
            lambda started: started >= 4,
            "the fan-out under way",
        )
        names = _all_actor_names(hub, config.partitions, config.activity_workers or 2)
        names = [name for name in names if _name_taken(name)]  # those started
        actors = [ray.get_actor(name, namespace=NAMESPACE) for name in names]
        crashed = time.monotonic()
        for actor in actors:  # all at once, no restart: the whole hub is gone
            ray.kill(actor, no_restart=True)
        # A relaunch must not attach to dying actors: wait until every name is released.
        _poll(lambda: [n for n in names if _name_taken(n)], lambda taken: not taken, "names freed")
        before_crash = _executions(log_path)

    with relaunch_app.run(data_dir=data_dir) as client:
        relaunched = time.monotonic()
        # Nothing lost: every instance is still there, none has finished what it waits for.
        states = {i: client.get_orchestration_state(i) for i in expected.outputs}
        assert {} == {i: s for i, s in states.items() if s is None}
        for iid in ("r-waiter-0", "r-waiter-1", "r-hold", "r-transfer"):
            assert Status.RUNNING == states[iid].runtime_status, iid
        client.raise_orchestration_event("r-hold", "go")
        for iid, values in expected.events.items():
            for value in values:
                client.raise_orchestration_event(iid, "e", data=value)
                expected.raised[iid] += 1
        states_after = _wait_all(client, list(expected.outputs))
        finished = time.monotonic()
        executions = _check_instances(client, expected, log_path, states_after)
        _check_entities(client, expected)

    re_executions = _re_executions(executions)
    # Not vacuous: the crash cut the fan-out short, so some activity ran again.
    assert re_executions >= 1, (before_crash, executions)
    figures = {
        "fan_started_before_crash": sum(n for (i, _, _), n in before_crash.items() if i == "r-fan"),
        "re_executions": re_executions,
        "relaunch_s": round(relaunched - crashed, 2),
        "finish_after_relaunch_s": round(finished - relaunched, 2),
    }
    for name, value in figures.items():
        record_property(name, value)
    print("\nrelaunch:", figures)
