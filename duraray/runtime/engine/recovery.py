"""What a partition core rebuilds from its store when it opens.

Timers are re-armed, pending activities queued for dispatch again, the outbox queued for
resending, and instances with buffered events made runnable. Only the ``live`` index of
instances is read, so recovery time follows the unfinished instances, not every instance
the partition ever ran. A row that cannot be read is skipped and reported (it is parked
by the first batch): one bad row must not keep the partition from opening.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from duraray.orchestrations.history import OrchestrationStatus
from duraray.runtime.engine import codec
from duraray.runtime.engine.instances import InstanceTable
from duraray.runtime.engine.outbox import Outbox
from duraray.runtime.engine.records import ActivityTask, Effects
from duraray.runtime.engine.store import PartitionStore
from duraray.runtime.engine.timers import Timers


@dataclass(slots=True)
class Recovered:
    """What recovery found: counts for the log, and the rows it could not read."""

    resent: int = 0
    bad_rows: list[tuple[str, bytes, BaseException]] = field(default_factory=list)


def recover(
    store: PartitionStore,
    table: InstanceTable,
    timers: Timers,
    outbox: Outbox,
    *,
    mono: float,
    pending: Effects,
) -> Recovered:
    """Load the partition's unfinished work; what must go out again goes into ``pending``."""
    found = Recovered()
    bad = found.bad_rows
    table.recover(bad)
    for key, timer in timers.recover(store, bad):
        live = table.get(timer.instance_id)
        if live is not None:
            live.timers.add(key)
    for live in table.values():
        # A PENDING instance without its start timer had it fire in a committed batch
        # whose in-memory "drain next batch" was lost with the crash: start it now.
        rows = (timers.get(key) for key in live.timers)
        if live.record.status is OrchestrationStatus.PENDING and not any(
            row is not None and row.kind == "start" for row in rows
        ):
            table.mark_ready(live.record.instance_id)
    for key, value in store.scan("activities"):
        try:
            task = codec.decode_record(ActivityTask, value)
        except Exception as exc:
            bad.append(("activities", key, exc))
            continue
        live = table.get(task.instance_id)
        if live is None or live.record.execution_id != task.execution_id:
            continue
        live.activities.add(task.task_id)
        pending.activities.append(task)
    found.resent = outbox.recover(store, mono, pending, bad)
    return found
