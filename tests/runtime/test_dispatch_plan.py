"""The dispatch plan: which activities run inline, travel in batches, or go alone on a CPU."""

from __future__ import annotations

import asyncio
import time

import pytest

import duraray as dr
from duraray.runtime.engine import codec
from duraray.runtime.engine.activity import execute_activity
from duraray.runtime.engine.dispatch import (
    BATCH_BUDGET_S,
    EXPRESS_PER_INSTANCE,
    INLINE,
    INLINE_WARMUP,
    MAX_BATCH,
    POOL,
    SHAPED,
    TASK,
    DispatchPlan,
)
from duraray.runtime.engine.records import ActivityTask


def _app() -> dr.App:
    app = dr.App("plan")

    @app.activity
    def work(ctx, n):
        return n

    @app.activity
    async def fetch(ctx, n):
        return n

    @app.activity(num_gpus=0.25)
    def gpu(ctx, n):
        return n

    @app.activity(timeout=5)
    def bounded(ctx, n):
        return n

    @app.activity(cpu_bound=False)
    def waits(ctx, n):
        return n

    @app.activity(cpu_bound=True)
    def crunch(ctx, n):
        return n

    @app.activity(inline=True)
    def forced(ctx, n):
        return n

    return app


def _tasks(name: str, n: int) -> list[ActivityTask]:
    return [ActivityTask("i", "e", i, name, None, 0) for i in range(n)]


def _routes(dispatches) -> list[tuple[str, int]]:
    return [(d.route, len(d.tasks)) for d in dispatches]


def test_unknown_activities_are_probed_alone_and_the_rest_held():
    """Of 10 activities of unknown cost, ``capacity`` go out alone, each holding a CPU;
    7 wait."""
    plan = DispatchPlan(_app().registry, capacity=3)
    out = plan.plan(_tasks("work", 10))
    assert [(TASK, 1)] * 3 == _routes(out)
    assert {"num_cpus": 1} == out[0].ray_options
    assert 7 == plan.held


def test_held_activities_go_out_once_a_probe_reports_their_cost():
    """The first result teaches the cost; the held activities then travel in one batch."""
    plan = DispatchPlan(_app().registry, capacity=2)
    plan.plan(_tasks("work", 12))
    assert [] == plan.plan([])  # nothing learned yet: the ten stay held
    plan.observe("work", 0.0001, 0.0001)
    out = plan.plan([])
    assert [(POOL, 10)] == _routes(out)
    assert 0 == plan.held


def test_without_capacity_nothing_is_held():
    """A host running activities on its own threads (capacity None) gets every one at once."""
    plan = DispatchPlan(_app().registry, capacity=None)
    assert [(TASK, 1)] * 5 == _routes(plan.plan(_tasks("work", 5)))
    assert 0 == plan.held


def test_heavy_cpu_bound_activities_each_hold_a_cpu():
    """An activity above the batch budget that uses its CPU goes alone as a Ray task."""
    plan = DispatchPlan(_app().registry, capacity=2)
    plan.observe("work", 0.2, 0.19)
    out = plan.plan(_tasks("work", 64))
    assert [(TASK, 1)] * 64 == _routes(out)
    assert all({"num_cpus": 1} == d.ray_options for d in out)


def test_cheap_activities_travel_in_batches_sized_to_the_budget():
    """A 5 ms activity travels BATCH_BUDGET_S / 5 ms to a batch; a 1 µs one MAX_BATCH."""
    plan = DispatchPlan(_app().registry, capacity=2, inline=False)
    plan.observe("work", 0.005, 0.005)
    per_batch = int(BATCH_BUDGET_S / 0.005)
    out = plan.plan(_tasks("work", 10))
    assert [POOL] == sorted({d.route for d in out})
    assert per_batch == len(out[0].tasks)
    assert 10 == sum(len(d.tasks) for d in out)
    plan = DispatchPlan(_app().registry, capacity=2, inline=False)
    plan.observe("work", 0.000001, 0.000001)
    assert [(POOL, MAX_BATCH), (POOL, 8)] == _routes(plan.plan(_tasks("work", 40)))


def test_activities_that_wait_share_the_pool_alone():
    """A slow activity whose CPU time is far below its wall time runs on a pool thread."""
    plan = DispatchPlan(_app().registry, capacity=2)
    plan.observe("work", 0.2, 0.001)
    out = plan.plan(_tasks("work", 3))
    assert [(POOL, 1)] * 3 == _routes(out)


def test_async_and_declared_waiting_activities_use_the_pool():
    """``async def`` and ``cpu_bound=False`` activities never hold a CPU, even unknown."""
    plan = DispatchPlan(_app().registry, capacity=1)
    assert [(POOL, 1)] * 3 == _routes(plan.plan(_tasks("fetch", 3)))
    assert [(POOL, 1)] * 3 == _routes(plan.plan(_tasks("waits", 3)))
    assert 0 == plan.held


def test_declared_cpu_bound_activities_always_go_alone():
    """``cpu_bound=True`` goes alone on a CPU even once it is known to be cheap."""
    plan = DispatchPlan(_app().registry, capacity=1)
    for _ in range(INLINE_WARMUP + 1):
        plan.observe("crunch", 0.00001, 0.00001)
    assert [(TASK, 1)] * 4 == _routes(plan.plan(_tasks("crunch", 4)))


def test_resource_and_timeout_options():
    """Resource options go to a warm pool of that shape; a timeout makes an activity
    travel alone as a task (holding no CPU when it mostly waits)."""
    plan = DispatchPlan(_app().registry, capacity=1)
    out = plan.plan(_tasks("gpu", 2))
    assert [(SHAPED, 1)] * 2 == _routes(out)
    assert {"num_gpus": 0.25} == out[0].ray_options
    out = plan.plan(_tasks("bounded", 2))
    assert [(TASK, 1)] * 2 == _routes(out)
    assert 5 == out[0].timeout
    assert {"num_cpus": 1} == out[0].ray_options
    plan.observe("bounded", 0.2, 0.001)
    out = plan.plan(_tasks("bounded", 1))
    assert [(TASK, 1)] == _routes(out)
    assert {"num_cpus": 0} == out[0].ray_options


def test_pool_limits_and_runtime_env_send_an_activity_to_a_shaped_pool():
    """``max_workers``, ``max_activities_per_worker`` and ``runtime_env`` pick a shaped pool;
    classes never run inline unless told to."""
    app = dr.App("shapes")

    @app.activity(max_workers=2)
    def limited(ctx, n):
        return n

    @app.activity(runtime_env={"env_vars": {"A": "1"}})
    def envd(ctx, n):
        return n

    @app.activity
    class Model:
        def __call__(self, ctx, n):
            return n

    plan = DispatchPlan(app.registry, capacity=1)
    assert [(SHAPED, 1)] == _routes(plan.plan(_tasks("limited", 1)))
    out = plan.plan(_tasks("envd", 1))
    assert [(SHAPED, 1)] == _routes(out)
    assert {"runtime_env": {"env_vars": {"A": "1"}}} == out[0].ray_options
    for _ in range(INLINE_WARMUP * 2):
        plan.observe("Model", 0.00001, 0.00001)
    assert INLINE not in {d.route for d in plan.plan(_tasks("Model", 2))}


def test_cheap_activities_run_inline_after_warmup_and_leave_when_slow():
    """Inline only after INLINE_WARMUP cheap runs; an activity that turns slow leaves."""
    plan = DispatchPlan(_app().registry, capacity=1, inline_max_s=0.001)
    for _ in range(INLINE_WARMUP - 1):
        plan.observe("work", 0.00001, 0.00001)
    assert INLINE not in {d.route for d in plan.plan(_tasks("work", 2))}
    plan.observe("work", 0.00001, 0.00001)
    assert [(INLINE, 2)] == _routes(plan.plan(_tasks("work", 2)))
    assert [(INLINE, MAX_BATCH), (INLINE, 8)] == _routes(plan.plan(_tasks("work", 40)))
    for _ in range(10):
        plan.observe("work", 0.05, 0.05)
    assert INLINE not in {d.route for d in plan.plan(_tasks("work", 2))}
    assert [(INLINE, 1)] == _routes(plan.plan(_tasks("forced", 1)))


def test_small_instances_inline_steps_travel_in_the_express_chunk():
    """Inline activities of instances with at most EXPRESS_PER_INSTANCE of them in a plan
    go first, in one express chunk (at most MAX_BATCH); a fan-out's go in the usual ones."""
    plan = DispatchPlan(_app().registry, capacity=1, inline_max_s=0.001)
    for _ in range(INLINE_WARMUP):
        plan.observe("work", 0.00001, 0.00001)

    def tasks(instance, n):
        return [ActivityTask(instance, "e", i, "work", None, 0) for i in range(n)]

    many = EXPRESS_PER_INSTANCE + 1
    out = plan.plan(tasks("flood", 40) + tasks("a", 1) + tasks("b", 2) + tasks("c", many))
    assert [(INLINE, 3), (INLINE, MAX_BATCH), (INLINE, 8 + many)] == _routes(out)
    assert [True, False, False] == [d.express for d in out]
    assert ["a", "b", "b"] == [t.instance_id for t in out[0].tasks]
    # Many small instances: the express chunk holds MAX_BATCH, the rest go as usual.
    out = plan.plan([t for i in range(40) for t in tasks(f"i{i}", 1)])
    assert [(INLINE, MAX_BATCH), (INLINE, 8)] == _routes(out)
    assert [True, False] == [d.express for d in out]
    # An instance's steps stay together: b's two do not fit after 31 others.
    out = plan.plan([t for i in range(31) for t in tasks(f"i{i}", 1)] + tasks("b", 2))
    assert [(INLINE, 31), (INLINE, 2)] == _routes(out)
    assert ["b", "b"] == [t.instance_id for t in out[1].tasks]
    # Other routes are never express.
    assert not any(d.express for d in plan.plan(_tasks("crunch", 1) + _tasks("fetch", 1)))


def test_inline_can_be_switched_off():
    """``inline_activities=False`` sends even the cheapest activity out."""
    plan = DispatchPlan(_app().registry, capacity=1, inline=False)
    for _ in range(INLINE_WARMUP * 2):
        plan.observe("work", 0.00001, 0.00001)
    assert INLINE not in {d.route for d in plan.plan(_tasks("work", 3))}


def test_unregistered_activities_go_to_the_pool():
    """An unknown name fails at once wherever it runs, so it holds no CPU and is not probed."""
    plan = DispatchPlan(_app().registry, capacity=1)
    assert [(POOL, 3)] == _routes(plan.plan(_tasks("nope", 3)))


def test_a_lost_probe_releases_the_held_ones():
    """A probe that ends without a run time (its worker died) lets the held activities go."""
    plan = DispatchPlan(_app().registry, capacity=1)
    plan.plan(_tasks("work", 3))
    assert 2 == plan.held
    plan.forget("work")
    out = plan.plan([])
    assert [(TASK, 1)] == _routes(out)  # the next probe
    assert 1 == plan.held


def test_costs_survive_a_snapshot_and_ignore_garbage():
    """Learned costs round-trip through ``snapshot``/``restore``; malformed rows are skipped."""
    plan = DispatchPlan(_app().registry)
    plan.observe("work", 0.2, 0.1)
    assert plan.dirty
    stored = plan.snapshot()
    assert not plan.dirty
    again = DispatchPlan(_app().registry)
    again.restore(
        {
            **stored,
            "bad": "x",
            3: [1, 2, 3],
            "neg": [1, -1.0, 0.0],
            "inf": [float("inf"), 1.0, 1.0],
            "tiny": [1, 5e-324, 0.0],
        }
    )
    assert {"work"} == set(again.costs)
    assert 0.2 == again.costs["work"].wall
    again.restore(None)
    assert {"work"} == set(again.costs)


def test_nonsense_run_times_teach_nothing():
    """NaN, infinite or negative run times are ignored."""
    plan = DispatchPlan(_app().registry)
    plan.observe("work", float("nan"), 0.0)
    plan.observe("work", -1.0, 0.0)
    plan.observe("work", float("inf"), 0.0)
    assert {} == plan.costs


def test_execute_activity_reports_wall_and_cpu_time():
    """A result carries its name, wall time and CPU time: far more CPU when it computes
    than when it waits (compared as amounts of work, never as timings)."""
    app = dr.App("cost")

    @app.activity
    def spin(ctx, n: int) -> int:
        return sum(range(n))

    @app.activity
    def nap(ctx, seconds: float) -> None:
        time.sleep(seconds)

    @app.activity
    async def anap(ctx, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @app.activity
    def boom(ctx, _):
        raise ValueError("no")

    def run(name: str, arg):
        return execute_activity(app.registry, ActivityTask("i", "e", 0, name, codec.encode(arg), 0))

    spun = run("spin", 2_000_000)
    assert "spin" == spun.name
    napped = run("nap", 0.05)
    assert napped.duration >= 0.05
    assert spun.cpu > 10 * napped.cpu
    failed = run("boom", 1)
    assert failed.failure is not None
    assert "boom" == failed.name
    assert run("anap", 0.01).failure is None


def test_a_cold_run_ends_its_probe_but_teaches_no_cost():
    """A first run in a fresh process (imports, a model to load) sets no cost: the next
    probe goes out, and the first warm run decides for the rest."""
    plan = DispatchPlan(_app().registry, capacity=2)
    plan.plan(_tasks("work", 10))
    assert 8 == plan.held
    plan.observe("work", 0.5, 0.5, cold=True)  # slow: perhaps only start-up
    assert {} == plan.costs
    assert [(TASK, 1)] == _routes(plan.plan([]))  # one more probe, still two out
    assert 7 == plan.held
    plan.observe("work", 0.0001, 0.0001)
    assert [(POOL, 7)] == _routes(plan.plan([]))
    assert 0 == plan.held
    quick = DispatchPlan(_app().registry, capacity=2)
    quick.plan(_tasks("work", 10))
    quick.observe("work", 0.001, 0.001, cold=True)  # fast even when cold: an upper bound
    assert {"work"} == set(quick.costs)


def test_execute_activity_marks_the_first_run_in_a_process_cold():
    """The first run of an activity name in this process is reported cold, later ones not."""
    app = dr.App("cold")

    @app.activity
    def first_time_here_xyz(ctx, n):
        return n

    def run():
        task = ActivityTask("i", "e", 0, "first_time_here_xyz", codec.encode(1), 0)
        return execute_activity(app.registry, task)

    assert [True, False] == [run().cold, run().cold]


def test_heavy_cpu_time_counts_as_cpu_bound_whatever_the_share():
    """An activity using 200 ms of CPU in an 800 ms run (threads contending for the GIL
    stretched its wall time) is still CPU-bound: it goes alone onto a CPU."""
    plan = DispatchPlan(_app().registry, capacity=2)
    plan.observe("work", 0.8, 0.2)
    assert [(TASK, 1)] * 2 == _routes(plan.plan(_tasks("work", 2)))


def test_restored_costs_need_fresh_runs_before_inline():
    """A cost restored from the store routes at once, but runs inline only after new runs
    confirm it (the activity's code may have changed since)."""
    plan = DispatchPlan(_app().registry, capacity=2)
    for _ in range(INLINE_WARMUP * 2):
        plan.observe("work", 0.00001, 0.00001)
    again = DispatchPlan(_app().registry, capacity=2)
    again.restore(plan.snapshot())
    assert INLINE not in {d.route for d in again.plan(_tasks("work", 3))}
    again.observe("work", 0.00001, 0.00001)
    assert [(INLINE, 3)] == _routes(again.plan(_tasks("work", 3)))


def _make_app_with_model(reply: str) -> dr.App:
    app = dr.App("models")

    @app.activity
    class Model:
        def __call__(self, ctx, _):
            return reply

    return app


def test_activity_classes_of_two_apps_keep_their_own_instances():
    """Two registrations of classes with the same name and qualname in one process each get
    their own instance (the cache is keyed per registration, not per name)."""

    def call(app: dr.App) -> object:
        task = ActivityTask("i", "e", 0, "Model", codec.encode(None), 0)
        return codec.decode(execute_activity(app.registry, task).result)

    assert ["one", "two"] == [call(_make_app_with_model("one")), call(_make_app_with_model("two"))]


def test_an_async_activity_class_keeps_its_event_loop_between_calls():
    """State an async activity class ties to its event loop (a lock) works on later calls."""
    app = dr.App("aio")

    @app.activity
    class Counter:
        def __init__(self):
            self.lock = None
            self.n = 0

        async def __call__(self, ctx, _):
            if self.lock is None:
                self.lock = asyncio.Lock()
            async with self.lock:
                self.n += 1
                return self.n

    def call() -> object:
        result = execute_activity(app.registry, ActivityTask("i", "e", 0, "Counter", None, 0))
        assert result.failure is None, result.failure
        return codec.decode(result.result)

    assert [1, 2, 3] == [call(), call(), call()]


def test_system_exit_in_an_activity_is_a_failed_attempt():
    """An activity calling sys.exit() fails its attempt; it does not escape the runner."""
    app = dr.App("exit")

    @app.activity
    def quits(ctx, _):
        raise SystemExit(3)

    result = execute_activity(app.registry, ActivityTask("i", "e", 0, "quits", None, 0))
    assert result.failure is not None
    assert "SystemExit" in result.failure.error_type


def test_unknown_activity_options_are_refused_at_registration():
    """A typo such as ``num_gpu`` (silently ignored before) or a wrong type is a clear error."""
    app = dr.App("opts")
    with pytest.raises(TypeError, match="unknown option 'num_gpu'"):
        app.add_activity(lambda ctx: None, name="a", num_gpu=1)
    with pytest.raises(TypeError, match="'max_workers' must be int"):
        app.add_activity(lambda ctx: None, name="b", max_workers="2")
    with pytest.raises(ValueError, match="'max_workers' must be >= 1"):
        app.add_activity(lambda ctx: None, name="c", max_workers=0)


def test_cpus_of_says_what_a_backlog_asks_of_the_cluster():
    """What the autoscaler is told a waiting activity wants (runtime/ray/demand.py): one CPU
    for work known to be CPU-bound and heavy, none for work that waits, is cheap enough
    for the shared pool, is of unknown cost, or runs in a shaped pool (Ray sees those
    workers itself)."""
    plan = DispatchPlan(_app().registry, capacity=2)
    assert 0.0 == plan.cpus_of("work")  # unknown cost: nothing claimed until a probe says
    assert 1.0 == plan.cpus_of("crunch")
    assert 0.0 == plan.cpus_of("waits")
    assert 0.0 == plan.cpus_of("fetch")  # async: it waits
    assert 0.0 == plan.cpus_of("gpu")  # a shaped worker: a pending actor Ray sees
    assert 0.0 == plan.cpus_of("not-registered")
    plan.observe("work", 0.5, 0.5)
    assert 1.0 == plan.cpus_of("work")  # heavy and CPU-bound: a task holding a CPU
    plan.observe("work", 0.0001, 0.0001)
    for _ in range(20):
        plan.observe("work", 0.0001, 0.0001)
    assert 0.0 == plan.cpus_of("work")  # cheap: batches on the shared pool
    plan.plan(_tasks("crunch", 1))
    plan.plan(_tasks("work", 5))
    assert {} == plan.held_by_name  # known costs: nothing held for a probe
    fresh = DispatchPlan(_app().registry, capacity=1)
    fresh.plan(_tasks("work", 4))
    assert {"work": 3} == fresh.held_by_name
