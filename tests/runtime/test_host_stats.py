"""The host's own figures in a partition's stats (the Ray shell adds ``shared_workers``)
survive a rebuild of the core after a failed batch."""

from __future__ import annotations

from partition_driver import make_registry

from duraray.runtime.engine.partition import PartitionCore
from duraray.runtime.engine.store import MemoryStore


def test_host_stats_are_reported_and_kept_by_a_rebuilt_core() -> None:
    """``host_stats`` adds to ``stats()``; the core rebuilt after a failure keeps it."""
    core = PartitionCore(hub="h", index=0, store=MemoryStore(), registry=make_registry())
    assert "shared_workers" not in core.stats()
    core.host_stats = lambda: {"shared_workers": 3}
    rebuilt, _ = core.recover_from_failure(RuntimeError("a failed batch"))
    assert (3, 3) == (core.stats()["shared_workers"], rebuilt.stats()["shared_workers"])
