"""The activity dispatch plan: which activities run inline, which travel together, which alone.

A partition learns each activity's cost (wall time and CPU time, as moving averages fed
by every successful run) and decides, for every activity it releases, one of four routes:

- ``INLINE``: cheap, plain activities run in the partition's own process, saving a Ray
  round trip (about a millisecond) on work that takes microseconds;
- ``POOL``: activities that are cheap but not cheap enough to run inline travel in batches
  sized to a small total run time (``BATCH_BUDGET_S``) to the shared worker pool, whose
  processes hold no CPU and run a few batches at once on threads; activities that mostly
  wait (CPU time well below wall time, ``async def``, or ``cpu_bound=False``) go there too,
  alone, since threads overlap their waiting;
- ``TASK``: heavy CPU-bound activities, and probes of activities whose cost is not known
  yet, each travel alone as one Ray task holding its CPU. Ray then runs at most one per core and
  spreads them over every node with free ones, so two CPU-bound activities never share
  one Python process (and its GIL) at the same time. An activity with a ``timeout`` also
  travels alone as a task (holding no CPU if it mostly waits): a task that overruns is
  stopped with its process, which a thread could not be;
- ``SHAPED``: activities that ask for Ray resources (``num_cpus``, ``num_gpus``,
  ``resources``, ``memory``, ``accelerator_type``), a ``runtime_env`` or pool limits
  (``max_workers``, ``max_activities_per_worker``) each go to a warm worker of exactly
  that shape (``runtime/ray/pools.py``).

An activity of unknown cost is probed: at most ``capacity`` of them (the cluster's CPUs)
go out at once, each alone as a task holding a CPU (in case it is heavy), and the rest
wait here until a result teaches the plan what they cost. A fan-out of 10,000 microsecond activities therefore costs a few probe tasks, not
10,000, and a fan-out of heavy ones still fills every core at once. The first run of an
activity in a process is "cold" (imports, caches, a model to load) and says little about
the next ones: a cheap one still counts (the activity is at most that cheap), a slow one
only ends its probe, and the next probe goes out.

Pure: no Ray, no I/O. The partition core owns one plan, stores its learned costs with
the partition (so a restart does not forget them) and hands its decisions to the host
(the Ray shell or the in-process runtime) in ``Effects.dispatches``.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from duraray._registry import Registry
from duraray.runtime.engine.records import ActivityTask

INLINE = "inline"
POOL = "pool"
TASK = "task"
SHAPED = "shaped"

#: Options that shape the worker an activity needs: such an activity runs in a warm pool of
#: workers holding exactly those (the values become the workers' Ray options).
SHAPE_OPTIONS = ("num_cpus", "num_gpus", "resources", "memory", "accelerator_type", "runtime_env")
#: Options that size or recycle a shaped pool (they send an activity to one too).
POOL_OPTIONS = ("max_workers", "max_activities_per_worker")
#: Total expected run time of one batch sent to the shared pool: small, so one slow batch
#: holds back little and a fan-out spreads over every worker.
BATCH_BUDGET_S = 0.02
#: A pool batch expected to run longer than this streams its results back as they finish;
#: a shorter one returns them together (a streamed result costs an extra Ray message).
STREAM_AFTER_S = 0.005
#: Most activities in one batch, whatever their cost (bounds one message's size).
MAX_BATCH = 32
#: An instance with at most this many inline activities in one plan has them go in the
#: plan's express chunk (at most ``MAX_BATCH`` activities): a sequence of small steps
#: that should not queue behind a fan-out's chunks, and whose results the Ray shell
#: waits for, briefly, before its next batch (runtime/ray/express.py).
EXPRESS_PER_INSTANCE = 2
#: Runs before an activity may be judged cheap enough to run inline.
INLINE_WARMUP = 8
#: An activity whose CPU time is below this share of its wall time mostly waits.
CPU_BOUND_SHARE = 0.5
#: Weight of the newest run in the moving averages.
ALPHA = 0.2
#: The shortest run time the plan believes (a clock reads no finer).
MIN_WALL_S = 1e-7


@dataclass(slots=True)
class Cost:
    """What the plan knows about one activity: runs seen and average wall and CPU seconds."""

    runs: int = 0
    wall: float = 0.0
    cpu: float = 0.0

    def observe(self, wall: float, cpu: float) -> None:
        """Fold one run into the averages (the first run sets them)."""
        if self.runs == 0:
            self.wall, self.cpu = wall, cpu
        else:
            self.wall += ALPHA * (wall - self.wall)
            self.cpu += ALPHA * (cpu - self.cpu)
        self.runs += 1

    @property
    def cpu_bound(self) -> bool:
        """True when the activity spends most of its run time on the CPU, or more CPU time
        than a whole pool batch may take (threads sharing a GIL stretch the wall time of
        heavy work, and native threads' CPU time is not counted: the share alone would
        misjudge it)."""
        return self.cpu >= CPU_BOUND_SHARE * self.wall or self.cpu > BATCH_BUDGET_S


@dataclass(slots=True)
class Dispatch:
    """One unit the host sends out: a route and the tasks that travel together.

    ``ray_options`` are the Ray resources of a ``TASK`` (``{"num_cpus": 1}`` for a
    CPU-bound activity that asked for nothing); ``timeout`` is the activity's own timeout
    in seconds, if it has one (such an activity always travels alone).
    """

    route: str
    tasks: list[ActivityTask]
    ray_options: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    #: a pool batch expected to run long enough that its results should stream back one
    #: by one rather than together at its end
    stream: bool = False
    #: an inline chunk of small instances' steps (see ``EXPRESS_PER_INSTANCE``)
    express: bool = False


class DispatchPlan:
    """Learns activity costs and turns released activities into ``Dispatch`` units."""

    def __init__(
        self,
        registry: Registry,
        *,
        inline: bool = True,
        inline_max_s: float = 0.0005,
        capacity: int | None = None,
    ) -> None:
        self.registry = registry
        self.inline = inline
        self.inline_max_s = inline_max_s
        #: Activities of unknown cost sent out at once, per name (None: no limit, for a
        #: host that runs everything on its own threads). The Ray shell sets it to the
        #: cluster's CPU count and refreshes it as nodes come and go.
        self.capacity = capacity
        self.costs: dict[str, Cost] = {}
        self._probing: dict[str, int] = defaultdict(int)
        self._held: dict[str, deque[ActivityTask]] = {}
        #: Set when costs changed since the last ``snapshot``.
        self.dirty = False

    # -- learning ---------------------------------------------------------------------------

    def observe(self, name: str, wall: float, cpu: float, *, cold: bool = False) -> None:
        """Record one finished run of ``name`` (``cold``: its first run in its process)."""
        if self._probing.get(name):
            self._probing[name] -= 1
        if not (math.isfinite(wall) and math.isfinite(cpu)) or wall < 0 or cpu < 0:
            return  # a result from a confused worker teaches nothing
        wall = max(wall, MIN_WALL_S)
        if cold and (wall > BATCH_BUDGET_S or name in self.costs):
            # A slow first run in a process may be start-up (imports, a model to load),
            # not the activity; a fast one is an upper bound of its cost, good enough.
            return
        self.costs.setdefault(name, Cost()).observe(wall, cpu)
        self.dirty = True

    def forget(self, name: str) -> None:
        """A probe of ``name`` ended without a usable run time (e.g. its worker died)."""
        if self._probing.get(name):
            self._probing[name] -= 1

    def snapshot(self) -> dict[str, list[float]]:
        """The learned costs, to store with the partition: ``{name: [runs, wall, cpu]}``."""
        self.dirty = False
        return {n: [c.runs, c.wall, c.cpu] for n, c in self.costs.items()}

    def restore(self, stored: Any) -> None:
        """Costs from ``snapshot`` (ignores anything malformed: it is only a hint)."""
        if not isinstance(stored, dict):
            return
        for name, row in stored.items():
            try:
                runs, wall, cpu = int(row[0]), float(row[1]), float(row[2])
            except (TypeError, ValueError, IndexError, OverflowError):
                continue
            if not (isinstance(name, str) and runs > 0 and math.isfinite(wall + cpu)):
                continue
            if wall < MIN_WALL_S or cpu < 0:
                continue
            # Inline again only after fresh runs confirm it: the code may have changed.
            self.costs[name] = Cost(min(runs, INLINE_WARMUP - 1), wall, cpu)

    # -- deciding ---------------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Activities waiting for a probe of their kind to report its cost."""
        return sum(len(q) for q in self._held.values())

    @property
    def held_by_name(self) -> dict[str, int]:
        """Activities held for a probe of their kind, by name."""
        return {name: len(queue) for name, queue in self._held.items()}

    def cpus_of(self, name: str) -> float:
        """The CPUs one waiting activity ``name`` will ask the cluster for, as far as the
        plan knows now: 1 if it goes out alone as a task holding a CPU (declared
        ``cpu_bound=True``, or learned CPU-bound and heavy), else 0: inline, on the shared
        pool (which holds none), waiting on I/O, of unknown cost (until a probe says
        otherwise), or in a shaped pool (whose workers Ray sees as pending actors with
        their resources). What a backlog of it asks of an autoscaler."""
        spec = self.registry.activities.get(name)
        if spec is None:
            return 0.0
        options = spec.options
        if any(k in options for k in SHAPE_OPTIONS) or any(k in options for k in POOL_OPTIONS):
            return 0.0
        declared = options.get("cpu_bound")
        if declared is False or inspect.iscoroutinefunction(spec.fn):
            return 0.0
        if declared is True:
            return 0.0 if options.get("inline") else 1.0
        cost = self.costs.get(name)
        if cost is None or not cost.cpu_bound or cost.wall <= BATCH_BUDGET_S:
            return 0.0
        return 0.0 if self._inline_ok(name, spec, cost) else 1.0

    def plan(self, tasks: Iterable[ActivityTask]) -> list[Dispatch]:
        """Route ``tasks`` (plus any held ones whose cost is now known)."""
        out: list[Dispatch] = []
        pools: dict[str, list[ActivityTask]] = defaultdict(list)
        inline: list[ActivityTask] = []
        # Where the rest of a name's activities go once its first is routed, when that
        # holds for all of them (nothing the plan learns changes during one call): a
        # batch of a fan-out's 32 results releases 32 of one name.
        same: dict[str, list[ActivityTask]] = {}
        for task in itertools.chain(self._releasable(), tasks):
            target = same.get(task.name)
            if target is not None:
                target.append(task)
                continue
            target = self._route(task, out, pools, inline)
            if target is not None:
                same[task.name] = target
        # Inline activities run a chunk per job on the partition's inline threads: one
        # job (and one result message) per activity would cost more than the activities.
        if inline:
            express, inline = _express(inline)
            if express:
                out.append(Dispatch(INLINE, express, express=True))
            out += [
                Dispatch(INLINE, inline[i : i + MAX_BATCH])
                for i in range(0, len(inline), MAX_BATCH)
            ]
        for name, group in pools.items():
            size = self._batch_size(name)
            cost = self.costs.get(name)
            for start in range(0, len(group), size):
                batch = group[start : start + size]
                # Unknown, or more than STREAM_AFTER_S of work: stream its results back.
                stream = cost is None or len(batch) * cost.wall > STREAM_AFTER_S
                out.append(Dispatch(POOL, batch, stream=stream and len(batch) > 1))
        return out

    def _route(
        self,
        task: ActivityTask,
        out: list[Dispatch],
        pools: dict[str, list[ActivityTask]],
        inline: list[ActivityTask],
    ) -> list[ActivityTask] | None:
        """Route ``task``: into ``out`` (alone), ``pools`` or ``inline``. Returns the list
        it went to when every activity of its name goes there in this plan, else None."""
        spec = self.registry.activities.get(task.name)
        if spec is None:
            # Fails at once with ActivityNotRegisteredError wherever it runs: no CPU needed.
            pools[task.name].append(task)
            return pools[task.name]
        options = spec.options
        shape = {k: options[k] for k in SHAPE_OPTIONS if k in options}
        timeout = options.get("timeout")
        declared = options.get("cpu_bound")
        cost = self.costs.get(task.name)
        if shape or any(k in options for k in POOL_OPTIONS):
            out.append(Dispatch(SHAPED, [task], shape, timeout))
            return None
        if timeout is None and self._inline_ok(task.name, spec, cost):
            inline.append(task)
            return inline
        waits = declared is False or (
            declared is None
            and (inspect.iscoroutinefunction(spec.fn) or (cost is not None and not cost.cpu_bound))
        )
        if waits:
            if timeout is not None:
                out.append(Dispatch(TASK, [task], {"num_cpus": 0}, timeout))
            elif cost is None or cost.wall > BATCH_BUDGET_S:
                out.append(Dispatch(POOL, [task]))
            else:
                pools[task.name].append(task)
                return pools[task.name]
            return None
        if declared is None and timeout is None and cost is not None:
            if cost.wall <= BATCH_BUDGET_S:
                pools[task.name].append(task)
                return pools[task.name]
        elif declared is None and timeout is None and cost is None and self.capacity is not None:
            # Unknown cost: probe with a few (each alone, holding a CPU, in case it is
            # heavy), hold the rest until one reports.
            if self._probing[task.name] >= self.capacity:
                self._held.setdefault(task.name, deque()).append(task)
                return None
            self._probing[task.name] += 1
        out.append(Dispatch(TASK, [task], {"num_cpus": 1}, timeout))
        return None

    def _inline_ok(self, name: str, spec: Any, cost: Cost | None) -> bool:
        if not self.inline:
            return False
        forced = spec.options.get("inline")
        if forced is not None:
            return bool(forced)
        if (
            spec.options.get("cpu_bound") is not None
            or inspect.iscoroutinefunction(spec.fn)
            or inspect.isclass(spec.fn)
        ):
            # Declared work, an event loop, or a class that may load a model: never in the
            # partition's own process.
            return False
        if cost is None:
            return False
        return cost.runs >= INLINE_WARMUP and cost.wall < self.inline_max_s

    def _batch_size(self, name: str) -> int:
        cost = self.costs.get(name)
        if cost is None:
            return MAX_BATCH
        return max(1, min(MAX_BATCH, int(BATCH_BUDGET_S / max(cost.wall, MIN_WALL_S))))

    def _releasable(self) -> list[ActivityTask]:
        out: list[ActivityTask] = []
        for name in list(self._held):
            queue = self._held[name]
            if name in self.costs:
                out.extend(queue)  # the cost is known: route them all afresh
                del self._held[name]
                continue
            # Still unknown (the probes so far were cold, or lost): keep ``capacity`` probes
            # out; ``_route`` counts them.
            free = (self.capacity or len(queue)) - self._probing.get(name, 0)
            for _ in range(min(max(0, free), len(queue))):
                out.append(queue.popleft())
            if not queue:
                del self._held[name]
        return out


def _express(inline: list[ActivityTask]) -> tuple[list[ActivityTask], list[ActivityTask]]:
    """Split inline activities into the express chunk (those of instances with at most
    ``EXPRESS_PER_INSTANCE`` here, up to ``MAX_BATCH`` of them) and the rest, in order.
    An instance's activities stay together: all in the express chunk, or none."""
    per_instance: dict[str, int] = defaultdict(int)
    for task in inline:
        per_instance[task.instance_id] += 1
    chosen: set[str] = set()
    room = MAX_BATCH
    for instance_id, n in per_instance.items():
        if n <= EXPRESS_PER_INSTANCE and n <= room:
            chosen.add(instance_id)
            room -= n
    express = [task for task in inline if task.instance_id in chosen]
    rest = [task for task in inline if task.instance_id not in chosen]
    return express, rest
