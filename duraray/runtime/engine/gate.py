"""Backpressure on activities: at most ``max_activities_in_flight`` of a partition out at once.

Every activity an orchestration schedules is written to the partition's ``activities``
table in the batch that scheduled it; the gate only decides when it leaves the partition.
Beyond the limit, activities wait here (in memory; their rows are the durable record, so
a restart finds them again) and go out as results come back. A 1,000,000-activity fan-out
thus neither floods Ray's scheduler and object store nor starves the partition's other
instances: waiting activities are released round-robin over the instances that wait, one
activity of each in turn, so a small instance is not queued behind a huge fan-out.

The default limit sits above what a cluster runs at once: it exists to bound the work a
partition hands Ray, not to schedule it. What waits here is told to the autoscaler by the
Ray shell (runtime/ray/demand.py), since Ray cannot see it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable

from duraray.runtime.engine.records import ActivityResult, ActivityTask

_Key = tuple[str, str, int]


def _key(item: ActivityTask | ActivityResult) -> _Key:
    return (item.instance_id, item.execution_id, item.task_id)


class ActivityGate:
    """Holds back the activities beyond the limit (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._out: set[_Key] = set()
        self._waiting: OrderedDict[str, deque[ActivityTask]] = OrderedDict()
        self._count = 0
        #: waiting activities by activity name (what they will ask of the cluster)
        self.waiting_by_name: Counter[str] = Counter()

    @property
    def in_flight(self) -> int:
        """Activities released and not yet answered."""
        return len(self._out)

    @property
    def waiting(self) -> int:
        """Activities held back for want of a free slot."""
        return self._count

    def admit(
        self, tasks: Iterable[ActivityTask], still_pending: Callable[[ActivityTask], bool]
    ) -> list[ActivityTask]:
        """Queue ``tasks`` and return those that go out now: as many waiting ones as
        there are free slots, round-robin over their instances. ``still_pending`` says
        whether a waiting activity's instance still waits for it (else it is dropped)."""
        tasks = list(tasks)
        if not self._waiting and len(self._out) + len(tasks) <= self.limit:
            # The common case: nothing waits and all fit.
            self._out.update(_key(task) for task in tasks)
            return tasks
        for task in tasks:
            self._waiting.setdefault(task.instance_id, deque()).append(task)
            self.waiting_by_name[task.name] += 1
        self._count += len(tasks)
        released: list[ActivityTask] = []
        free = self.limit - len(self._out)
        waiting = self._waiting
        while free > 0 and waiting:
            instance_id, queue = next(iter(waiting.items()))
            task = queue.popleft()
            self._uncount(task)
            if queue:
                waiting.move_to_end(instance_id)  # the next instance's turn
            else:
                del waiting[instance_id]
            if not still_pending(task):
                continue  # its instance ended or moved on while it waited
            self._out.add(_key(task))
            released.append(task)
            free -= 1
        return released

    def forget(self, instance_id: str, keep_execution: str | None = None) -> None:
        """Drop the waiting activities of ``instance_id`` (its execution ended), except
        those of ``keep_execution`` (the generation a continue-as-new started)."""
        queue = self._waiting.get(instance_id)
        if queue is None:
            return
        kept: deque[ActivityTask] = deque()
        for task in queue:
            if task.execution_id == keep_execution:
                kept.append(task)
            else:
                self._uncount(task)
        if kept:
            self._waiting[instance_id] = kept
        else:
            del self._waiting[instance_id]

    def _uncount(self, task: ActivityTask) -> None:
        """``task`` no longer waits."""
        self._count -= 1
        left = self.waiting_by_name[task.name] - 1
        if left:
            self.waiting_by_name[task.name] = left
        else:
            del self.waiting_by_name[task.name]

    def give_back(self, tasks: Iterable[ActivityTask]) -> None:
        """Released activities that did not go out after all: free their slots."""
        for task in tasks:
            self._out.discard(_key(task))

    def finished(self, result: ActivityResult) -> None:
        """A result came back: its slot is free (a duplicate frees nothing)."""
        self._out.discard(_key(result))
