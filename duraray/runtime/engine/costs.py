"""The activity costs a partition's dispatch plan learned, kept across restarts.

They ride in ``meta`` on a batch that commits anyway, at most every few seconds, and are
read back when the partition opens, so a restart does not start learning from nothing.
They are only a hint: a record that cannot be read is relearned, and a save that fails
never fails its batch.
"""

from __future__ import annotations

import structlog

from duraray.runtime.engine import codec
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.dispatch import DispatchPlan
from duraray.runtime.engine.store import PartitionStore

#: Where the learned costs are kept, and how often (seconds) they are saved at most.
COSTS_KEY = b"activity_costs"
COSTS_SAVE_INTERVAL = 5.0

log = structlog.get_logger("duraray.partition")


class LearnedCosts:
    """Saves and restores one dispatch plan's learned costs (see the module docstring)."""

    def __init__(self, store: PartitionStore, dispatch: DispatchPlan) -> None:
        self._store = store
        self._dispatch = dispatch
        #: monotonic time of the last save
        self.saved_at = 0.0

    def restore(self) -> None:
        """Give the plan the costs stored by an earlier run, if they can be read."""
        stored = self._store.get("meta", COSTS_KEY)
        if stored is None:
            return
        try:
            self._dispatch.restore(codec.decode(stored))
        except Exception:
            log.warning("stored activity costs unreadable; learning them anew")

    def save(self, b: Batch) -> None:
        """Store the learned costs in ``b`` if they changed, ``b`` writes anyway, and the
        last save is old enough."""
        if not self._dispatch.dirty or not b.wb or b.mono - self.saved_at < COSTS_SAVE_INTERVAL:
            return
        self.saved_at = b.mono
        try:
            b.wb.put("meta", COSTS_KEY, codec.encode(self._dispatch.snapshot()))
        except Exception:
            log.warning("activity costs not saved", exc_info=True)
