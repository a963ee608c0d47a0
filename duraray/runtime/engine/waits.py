"""Client waits parked in a partition until an instance starts or finishes.

A ``wait`` or ``wait_many`` request whose instances are not there yet becomes a
``Watcher``; after each batch ``Waits.notify`` answers those whose instance changed in a
way they wait for, and those whose deadline (monotonic clock) passed with TimeoutError,
so no caller waits forever. Only instances the batch changed are looked at, and every
watcher only once a deadline has passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from duraray.orchestrations import history as h
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.records import InstanceRecord, Reply

Status = h.OrchestrationStatus


@dataclass(slots=True)
class Watcher:
    """One parked wait: ``reply_to`` is the caller's handle or a ``WaitGroup``."""

    kind: str  # "start" | "completion"
    reply_to: Any
    deadline: float

    @property
    def caller(self) -> Any:
        """The handle the answer goes to."""
        target = self.reply_to
        return target.reply_to if isinstance(target, WaitGroup) else target


class WaitGroup:
    """A ``wait_many`` request: replies when its last instance is satisfied."""

    def __init__(self, instance_ids: list[str], reply_to: Any, kind: str) -> None:
        self.order = instance_ids
        self.unique = len(set(instance_ids))  # computed once: done is checked per completion
        self.reply_to = reply_to
        self.kind = kind
        self.records: dict[str, InstanceRecord] = {}
        self.expired = False

    def pending_ids(self) -> list[str]:
        """The awaited instances not yet satisfied, each once, in order."""
        return [i for i in dict.fromkeys(self.order) if i not in self.records]

    def satisfy(self, instance_id: str, record: InstanceRecord) -> None:
        """``instance_id`` reached the awaited state."""
        self.records[instance_id] = record

    @property
    def done(self) -> bool:
        """True once every awaited instance is satisfied."""
        return len(self.records) == self.unique

    def results(self) -> list[InstanceRecord]:
        """The records, in the order the instances were given."""
        return [self.records[i] for i in self.order]


def wait_satisfied(kind: str, record: InstanceRecord) -> bool:
    """True if ``record`` is in the state a wait of ``kind`` waits for."""
    if kind == "start":
        return record.status is not Status.PENDING
    return record.status.is_terminal


class Waits:
    """The parked waits of one partition (see the module docstring)."""

    def __init__(self) -> None:
        self._watchers: dict[str, list[Watcher]] = {}
        #: the earliest deadline of any watcher (monotonic), or None when none waits
        self.deadline: float | None = None

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._watchers

    def __bool__(self) -> bool:
        return bool(self._watchers)

    def add(self, instance_id: str, watcher: Watcher) -> None:
        """Park a wait for ``instance_id``."""
        self._watchers.setdefault(instance_id, []).append(watcher)
        if self.deadline is None or watcher.deadline < self.deadline:
            self.deadline = watcher.deadline

    def items(self) -> list[tuple[str, Watcher]]:
        """Every parked wait, with its instance id."""
        return [(iid, w) for iid, ws in self._watchers.items() for w in ws]

    def take_all(self) -> list[Watcher]:
        """Remove and return every parked wait (their callers will not be answered here)."""
        taken = [w for ws in self._watchers.values() for w in ws]
        self._watchers.clear()
        self.deadline = None
        return taken

    def notify(self, b: Batch, get_record: Callable[[str], InstanceRecord | None]) -> None:
        """Answer the waits the batch satisfied, and those past their deadline."""
        if not self._watchers:
            # No wait left: no deadline either, or an idle partition would keep running
            # (empty) batches from the last wait's deadline on.
            self.deadline = None
            return
        now = b.mono
        sweep = self.deadline is not None and self.deadline <= now
        # Only instances that changed in this batch can satisfy a wait; every watcher is
        # visited only when some deadline has passed.
        candidates = (
            list(self._watchers) if sweep else [iid for iid in b.changed if iid in self._watchers]
        )
        for iid in candidates:
            watchers = self._watchers[iid]
            record = get_record(iid) if iid in b.changed else None
            keep = []
            for watcher in watchers:
                if record is not None and wait_satisfied(watcher.kind, record):
                    group = watcher.reply_to
                    if isinstance(group, WaitGroup):
                        group.satisfy(iid, replace(record))
                        if group.done:
                            b.fx.replies.append((group.reply_to, group.results()))
                        continue
                    b.fx.replies.append((watcher.reply_to, replace(record)))
                elif watcher.deadline > now:
                    keep.append(watcher)
                else:
                    # Expired: answer it, so no caller (or Ray call) waits forever.
                    self._expire(b, iid, watcher)
            if keep:
                self._watchers[iid] = keep
            else:
                del self._watchers[iid]
        if sweep or not self._watchers:
            self.deadline = min(
                (w.deadline for ws in self._watchers.values() for w in ws), default=None
            )

    def _expire(self, b: Batch, instance_id: str, watcher: Watcher) -> None:
        target = watcher.reply_to
        if isinstance(target, WaitGroup):
            if target.expired:
                return
            target.expired = True
            pending = len(target.pending_ids())
            target = target.reply_to
            message = f"{pending} awaited instances did not reach the awaited state in time"
        else:
            message = f"instance {instance_id!r} did not reach the awaited state in time"
        b.fx.replies.append((target, Reply(TimeoutError(message))))
