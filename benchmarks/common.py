"""What the benchmark scripts share: the app, the JSON line, RSS sampling, percentiles.

The app's code (activities, orchestrations, entities) lives at module level so every
workload registers the same functions under its own hub (``make_app``). This module is
not importable by Ray's worker processes, so it registers itself with Ray's cloudpickle
to travel by value, like the Ray tests do.

Every script prints one JSON line per result (``emit``) with at least ``workload, config,
n, wall_s, rate_per_s, p50_ms, p99_ms, peak_rss_mb, correct``. ``peak_rss_mb`` is the
peak, sampled every 100 ms while the workload runs, of the summed RSS of this process and
all its descendants (with a local Ray: the raylet, GCS, partition actors and workers; the
object store's shared pages count once per process that touched them, so this is an
upper bound). Without psutil it falls back to ``getrusage`` (peak of self + waited-for
children since the process started).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import ray

import duraray as dr

try:  # optional: without it RSS falls back to getrusage
    import psutil
except ImportError:  # pragma: no cover - psutil ships with Ray's default extras
    psutil = None

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

CITIES = ("Tokyo", "Seattle", "London", "Paris", "Cairo")
#: The balance every account starts with in ``bank``.
INITIAL_BALANCE = 100


# == the app =================================================================================


def say_hello(ctx: dr.ActivityContext, name: str) -> str:
    """Greet someone."""
    return f"Hello, {name}!"


def square(ctx: dr.ActivityContext, n: int) -> int:
    """Square a number."""
    return n * n


def hello5(ctx: dr.OrchestrationContext, tag: str) -> Any:
    """Call ``say_hello`` five times in sequence."""
    greetings = []
    for city in CITIES:
        greetings.append((yield ctx.call_activity(say_hello, input=f"{city} {tag}")))
    return greetings


def expected_hello5(tag: str) -> list[str]:
    """What ``hello5(tag)`` returns."""
    return [f"Hello, {city} {tag}!" for city in CITIES]


def fan_out(ctx: dr.OrchestrationContext, n: int) -> Any:
    """Fan ``square(i)`` out for i < n with ``when_all`` and return the sum."""
    results = yield dr.when_all([ctx.call_activity(square, input=i) for i in range(n)])
    return sum(results)


def instant(ctx: dr.OrchestrationContext, value: Any) -> Any:
    """Complete at once with the input (instances to query, events to wait for)."""
    return value


def expected_fan_out(n: int) -> int:
    """Sum of i*i for i < n."""
    return (n - 1) * n * (2 * n - 1) // 6


def transfer(ctx: dr.OrchestrationContext, order: dict[str, Any]) -> Any:
    """Move ``amount`` between two accounts under a lock; False if the source lacks it."""
    source = dr.EntityId("account", order["from"])
    target = dr.EntityId("account", order["to"])
    amount = order["amount"]
    with (yield ctx.lock_entities([source, target])):
        balance = yield ctx.call_entity(source, "get")
        if balance < amount:
            return False
        yield ctx.call_entity(source, "withdraw", amount)
        yield ctx.call_entity(target, "deposit", amount)
    return True


def timer_wait(ctx: dr.OrchestrationContext, seconds: float) -> Any:
    """Wait on one durable timer, then return the orchestration's clock."""
    yield ctx.create_timer(timedelta(seconds=seconds))
    return ctx.current_utc_datetime


def wait_event(ctx: dr.OrchestrationContext, _: Any = None) -> Any:
    """Wait for one external event "go" and return its data."""
    return (yield ctx.wait_for_external_event("go"))


class Counter(dr.DurableEntity):
    """A counter: ``add(amount)``, ``get()``."""

    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)

    def get(self) -> int:
        return int(self.get_state(int, 0))


class Account(dr.DurableEntity):
    """A bank account: ``get``, ``deposit(amount)``, ``withdraw(amount)``."""

    def get(self) -> int:
        return int(self.get_state(int, 0))

    def deposit(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)

    def withdraw(self, amount: int) -> None:
        balance = self.get_state(int, 0)
        if amount > balance:
            raise ValueError(f"cannot withdraw {amount} from a balance of {balance}")
        self.set_state(balance - amount)


def burn_cpu(ms: float) -> tuple[int, float, float]:
    """Spend ``ms`` milliseconds of this thread's CPU time (not wall time: a busy machine
    stretches the wall clock, never the work); (pid, start, end) as Unix times."""
    start = time.time()
    end = time.thread_time() + ms / 1000.0
    while time.thread_time() < end:
        pass
    return os.getpid(), start, time.time()


def burn(ctx: dr.ActivityContext, ms: float) -> tuple[int, float, float]:
    """``burn_cpu`` as an activity (the shared pool: the dispatch plan decides)."""
    return burn_cpu(ms)


def burn_cpu1(ctx: dr.ActivityContext, ms: float) -> tuple[int, float, float]:
    """``burn_cpu`` as an activity registered with ``num_cpus=1``."""
    return burn_cpu(ms)


def hold_gpu(seconds: float) -> tuple[int, float, float]:
    """Hold a CUDA tensor for ``seconds`` (the process's first call also pays for CUDA's
    start-up); (pid, start, end) as Unix times."""
    import torch

    start = time.time()
    tensor = torch.ones((1024, 1024), device="cuda")
    torch.cuda.synchronize()
    time.sleep(seconds)
    float(tensor.sum())  # touch it at the end: held the whole time
    return os.getpid(), start, time.time()


def gpu_hold(ctx: dr.ActivityContext, seconds: float) -> tuple[int, float, float]:
    """``hold_gpu`` as an activity registered with ``num_gpus=0.25``."""
    return hold_gpu(seconds)


def spread(ctx: dr.OrchestrationContext, job: dict[str, Any]) -> Any:
    """``job["n"]`` activities ``job["activity"]`` with input ``job["input"]``, all at once."""
    tasks = [ctx.call_activity(job["activity"], input=job["input"]) for _ in range(job["n"])]
    return (yield dr.when_all(tasks))


def make_app(hub: str, *, partitions: int = 4, fsync: bool = True, **options: Any) -> dr.App:
    """A hub named ``hub`` with every benchmark's code registered."""
    app = dr.App(hub, partitions=partitions, fsync=fsync, **options)
    app.add_activity(say_hello)
    app.add_activity(square)
    app.add_activity(burn)
    app.add_activity(burn_cpu1, num_cpus=1)
    app.add_activity(gpu_hold, num_gpus=0.25)
    app.add_orchestration(spread)
    app.add_orchestration(hello5)
    app.add_orchestration(fan_out)
    app.add_orchestration(instant)
    app.add_orchestration(transfer)
    app.add_orchestration(timer_wait)
    app.add_orchestration(wait_event)
    app.add_entity(Counter)
    app.add_entity(Account)
    return app


# == running a hub ===========================================================================

_hub_numbers = itertools.count(1)


@contextlib.contextmanager
def ray_running(**options: Any) -> Iterator[bool]:
    """Ray for the block: a new local instance unless this process is already connected."""
    started = False
    if not ray.is_initialized():
        init: dict[str, Any] = {
            "address": os.environ.get("RAY_ADDRESS") or "local",
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
        }
        init.update(options)
        ray.init(**init)
        started = True
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


@dataclass
class Hub:
    """A running benchmark hub: its app, a client and what the JSON line says about it."""

    app: dr.App
    client: dr.Client
    partition_pids: list[int] = field(default_factory=list)
    #: Ray node ids of the partition actors, in partition order.
    partition_nodes: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        """The ``config`` field of this hub's JSON lines.

        ``options``: the hub options that differ from HubConfig's defaults (data_dir
        aside), so two configurations compared in one run tell themselves apart.
        """
        config = self.app.config
        line: dict[str, Any] = {
            "partitions": config.partitions,
            "workers": config.activity_workers or max(2, cluster_cpus()),
            "nodes": node_count(),
            "fsync": config.fsync,
            "runtime": "duraray",
        }
        if line["nodes"] > 1:
            # On a cluster: over how many nodes the partitions themselves ran.
            line["partition_nodes"] = len(set(self.partition_nodes))
        if hasattr(config, "inline_activities"):
            # Cheap activities may run inside the partitions rather than on the workers.
            line["inline_activities"] = config.inline_activities
        defaults = dr.HubConfig()
        changed = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name not in ("data_dir", "partitions", "fsync")
            and getattr(config, f.name) != getattr(defaults, f.name)
        }
        if changed:
            line["options"] = {k: _jsonable(v) for k, v in changed.items()}
        return line

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the shared activity workers that the warm-up started all answer.

        They start on a hub's first cheap activity (``runtime/ray/shared_pool.py``): their
        start-up belongs to the warm-up, not to the figures measured after it. Returns
        soon on a hub whose warm-up started none (or in process).
        """
        if not ray.is_initialized():
            return
        count = self.app.config.activity_workers or max(2, cluster_cpus())
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            started = [p.get("shared_workers", 0) for p in self.client.partition_stats()]
            if any(started) and all(n == 0 or n >= count for n in started):
                return
            if not any(started) and time.monotonic() - began > 2.0:
                return  # the warm-up sent nothing to the shared pool
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        """Counters summed over partitions: batches, items, commit seconds, episodes."""
        totals: dict[str, float] = {}
        for part in self.client.partition_stats():
            for key, value in part["counters"].items():
                totals[key] = totals.get(key, 0) + value
        if totals.get("batches"):
            totals["items_per_batch"] = totals.get("items", 0) / totals["batches"]
        return {k: _round(v) for k, v in sorted(totals.items())}


def diff_stats(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Partition counters accrued between two ``Hub.stats()`` snapshots."""
    out = {k: _round(v - before.get(k, 0)) for k, v in after.items() if k != "items_per_batch"}
    if out.get("batches"):
        out["items_per_batch"] = _round(out.get("items", 0) / out["batches"])
    return out


def quiet_logs() -> None:
    """Send this process's structlog output (``hub started``) to stderr, not the JSON lines."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


@contextlib.contextmanager
def running_hub(
    workload: str,
    *,
    partitions: int = 4,
    fsync: bool = True,
    data_dir: str | None = None,
    options: dict[str, Any] | None = None,
    **more_options: Any,
) -> Iterator[Hub]:
    """A fresh hub (own name, own data dir under ``data_dir`` or the temp dir) on Ray.

    ``options`` (and keyword options) are HubConfig fields. Ray must be running
    (``ray_running``); the hub and its data dir go away afterwards.
    """
    options = {**(options or {}), **more_options}
    if data_dir is not None:
        os.makedirs(data_dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix=f"duraray-bench-{workload}-", dir=data_dir)
    hub_name = f"bench-{workload}-{os.getpid()}-{next(_hub_numbers)}"
    app = make_app(hub_name, partitions=partitions, fsync=fsync, **options)
    try:
        with app.run(data_dir=base) as client:
            hub = Hub(app, client)
            infos = partition_infos(hub_name)
            hub.partition_pids = [int(info["pid"]) for info in infos]
            hub.partition_nodes = [str(info["node_id"]) for info in infos]
            _await_pools(hub_name)
            yield hub
    finally:
        shutil.rmtree(base, ignore_errors=True)


def ids_on(partition: int, partitions: int, prefix: str) -> Iterator[str]:
    """Instance ids ``prefix-0``, ``prefix-1``, ... that hash to ``partition``."""
    from duraray.runtime.engine.routing import partition_for

    for i in itertools.count():
        iid = f"{prefix}-{i}"
        if partition_for(iid, partitions) == partition:
            yield iid


def partition_infos(hub: str) -> list[dict[str, Any]]:
    """``describe()`` of each of a hub's partition actors (pid, node id, ...)."""
    from duraray.runtime.ray.manager import PartitionManager

    handle = PartitionManager.find(hub)
    if handle is None:
        return []
    infos: list[dict[str, Any]] = ray.get(
        [p.describe.remote() for p in handle.partitions], timeout=60
    )
    return infos


def _await_pools(hub: str) -> None:
    """Wait until the hub's pools actor answers: the launch does not wait for it, and its
    process starting would fall in the first measurement (which may last 0.3 s)."""
    from duraray.runtime.ray.actors import NAMESPACE
    from duraray.runtime.ray.pools import pools_actor_name

    try:
        pools = ray.get_actor(pools_actor_name(hub), namespace=NAMESPACE)
    except ValueError:
        return  # in process, or an older version's hub
    ray.get(pools.ping.remote(), timeout=120)


def partition_pids(hub: str) -> list[int]:
    """Process ids of a hub's partition actors (for RSS and profilers)."""
    return [int(info["pid"]) for info in partition_infos(hub)]


def cluster_cpus() -> int:
    """CPUs Ray sees in the cluster."""
    return int(ray.cluster_resources().get("CPU", 1))


def node_count() -> int:
    """Alive Ray nodes."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def ray_config() -> dict[str, Any]:
    """The ``config`` field of plain-Ray lines: one task slot per CPU, nothing durable."""
    return {
        "partitions": None,
        "workers": cluster_cpus(),
        "nodes": node_count(),
        "fsync": False,
        "runtime": "ray",
    }


# == measuring ===============================================================================


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _tree_rss(pids: Sequence[int] | None = None) -> int:
    """Summed RSS in bytes: of ``pids``, or of this process and all its descendants."""
    if psutil is None:
        if pids is not None:
            return 0
        self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return (self_kb + children_kb) * 1024
    if pids is None:
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
    else:
        procs = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


class RssSampler:
    """Samples RSS every ``interval`` s in a thread: the whole tree, and some pids apart.

    ``peak_mb``/``baseline_mb``: this process and its descendants; ``watched_*``: the
    ``pids`` given (the partition actors), to show whether their memory stays flat.
    """

    def __init__(self, pids: Sequence[int] = (), interval: float = 0.1) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.baseline_mb = _tree_rss() / 2**20
        self.peak_mb = self.baseline_mb
        self.watched_baseline_mb = _tree_rss(self.pids) / 2**20 if self.pids else None
        self.watched_peak_mb = self.watched_baseline_mb
        self.watched_end_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, _tree_rss() / 2**20)
        if self.pids:
            watched = _tree_rss(self.pids) / 2**20
            self.watched_peak_mb = max(self.watched_peak_mb or 0.0, watched)
            self.watched_end_mb = watched

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def fields(self) -> dict[str, Any]:
        """RSS fields of a JSON line."""
        out: dict[str, Any] = {
            "peak_rss_mb": _round(self.peak_mb),
            "baseline_rss_mb": _round(self.baseline_mb),
        }
        if self.pids:
            out["partition_rss_start_mb"] = _round(self.watched_baseline_mb)
            out["partition_rss_peak_mb"] = _round(self.watched_peak_mb)
            out["partition_rss_end_mb"] = _round(self.watched_end_mb)
        return out


@contextlib.contextmanager
def profiled(pids: Sequence[int], out_dir: str | None, label: str) -> Iterator[None]:
    """Record py-spy profiles of ``pids`` for the block (``out_dir`` None: do nothing).

    Writes ``<label>-p<i>.txt`` (collapsed stacks: ``py-spy record --format raw``) per pid;
    ``summarize_profile`` turns one into a top list. A missing py-spy is a note, not an
    error: profiling is an aid, never part of a result.
    """
    if not out_dir:
        yield
        return
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        print(f"note: py-spy not found; no profile for {label}", file=sys.stderr)
        yield
        return
    os.makedirs(out_dir, exist_ok=True)
    procs = []
    for i, pid in enumerate(pids):
        path = os.path.join(out_dir, f"{label}-p{i}.txt")
        procs.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--threads",
                    "--rate",
                    "200",
                    "--output",
                    path,
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(0.5)  # let py-spy attach before the workload starts
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def summarize_profile(path: str, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, inclusive %, self %) of a collapsed-stack file, by inclusive share."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            total += count
            frames = stack.split(";")
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return []
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return [(f, 100.0 * c / total, 100.0 * own.get(f, 0) / total) for f, c in ranked]


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def ms(delta: timedelta) -> float:
    """A timedelta in milliseconds."""
    return delta.total_seconds() * 1000.0


def steps_ms(history: list[Any]) -> list[float]:
    """A hello5's sequential steps from its history, in ms: between consecutive
    TaskCompleted events, the first from ExecutionStarted."""
    marks = [e.timestamp for e in history if isinstance(e, dr.ExecutionStarted)][:1]
    marks += [e.timestamp for e in history if isinstance(e, dr.TaskCompleted)]
    return [ms(b - a) for a, b in itertools.pairwise(marks)]


def span_rate(n: int, states: Iterable[Any]) -> tuple[float, float]:
    """(rate, span seconds): n / (last completion - first start) of instance states."""
    states = list(states)
    first: datetime = min(s.created_at for s in states)
    last: datetime = max(s.completed_at or s.last_updated_at for s in states)
    span = max((last - first).total_seconds(), 1e-9)
    return n / span, span


def instance_latencies_ms(states: Iterable[Any]) -> list[float]:
    """Start-to-completion time of each instance, in ms."""
    return [ms((s.completed_at or s.last_updated_at) - s.created_at) for s in states]


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3) if abs(value) < 1000 else round(value, 1)
    return value


def result(
    workload: str,
    config: dict[str, Any],
    *,
    n: int,
    wall_s: float,
    rate_per_s: float | None,
    latencies_ms: Sequence[float] = (),
    rss: RssSampler | None = None,
    correct: bool,
    **extra: Any,
) -> dict[str, Any]:
    """One JSON line's fields, in a stable order."""
    line: dict[str, Any] = {
        "workload": workload,
        "variant": extra.pop("variant", None),
        "config": config,
        "n": n,
        "wall_s": _round(wall_s),
        "rate_per_s": _round(rate_per_s),
        "p50_ms": _round(percentile(latencies_ms, 50)),
        "p99_ms": _round(percentile(latencies_ms, 99)),
        "peak_rss_mb": None,
        "correct": bool(correct),
    }
    if rss is not None:
        line.update(rss.fields())
    for key, value in extra.items():
        line[key] = (
            {k: _round(v) for k, v in value.items()} if isinstance(value, dict) else (_round(value))
        )
    return line


def with_ratio(durable: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Add ``ratio`` = duraray rate / raw Ray rate (measured in the same run) to a line."""
    if durable.get("rate_per_s") and raw.get("rate_per_s"):
        durable["ratio"] = round(durable["rate_per_s"] / raw["rate_per_s"], 3)
    else:
        durable["ratio"] = None
    durable["ratio_to"] = raw["workload"] + (f"/{raw['variant']}" if raw.get("variant") else "")
    raw["compared_with"] = durable["workload"] + (
        f" ({durable['variant']})" if durable.get("variant") else ""
    )
    return durable


def emit(line: dict[str, Any]) -> dict[str, Any]:
    """Print one JSON line (and flush); returns it."""
    print(json.dumps(line, default=str), flush=True)
    return line


# == command lines ===========================================================================


def parser(workload: str, *, default_n: int, quick_n: int, durable: bool = True) -> Any:
    """An argparse parser with the options every script shares."""
    p = argparse.ArgumentParser(description=f"duraray benchmark: {workload}")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help=f"size of the workload (default {default_n}; {quick_n} with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="a small N, for smoke runs")
    if durable:
        p.add_argument("--partitions", type=int, default=4, help="partitions (default 4)")
        p.add_argument(
            "--data-dir",
            default=None,
            help="parent of the hub's temporary data dir (default: the temp dir)",
        )
        p.add_argument("--no-fsync", action="store_true", help="commit without fsync")
        p.add_argument(
            "--profile",
            default=None,
            metavar="DIR",
            help="record py-spy profiles of the partition actors into DIR",
        )
        p.add_argument(
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a HubConfig option, e.g. inline_activities=false (repeatable)",
        )
    return p


def hub_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs as HubConfig options (values parsed as JSON if they can)."""
    return parse_options(getattr(args, "option", None) or [])


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``["inline_activities=false", "max_batch_items=100"]`` -> HubConfig options."""
    out: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(dr.HubConfig)}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(
                f"bad hub option {pair!r}: expected KEY=VALUE with KEY one of {sorted(known)}"
            )
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def pick_n(n: int | None, quick: bool, default_n: int, quick_n: int) -> int:
    """``n`` if given, else the default for the mode."""
    if n is not None:
        if n < 1:
            raise ValueError("n must be >= 1")
        return n
    return quick_n if quick else default_n
