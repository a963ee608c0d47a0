"""Write the committed store fixture: ``python tests/golden/make_store_fixture.py OUTDIR``.

Runs ``store_workload`` on a two-partition LMDB hub with the synchronous test driver
(``tests/runtime/partition_driver.py``: no Ray, no threads, a clock that stands still at
``T0``) and leaves it at rest with the mix of states ``store_v3/README.md`` lists. Then
each partition's environment is copied with compaction to ``OUTDIR/hub/p<n>/data.mdb``
(only the pages in use: a few dozen KB instead of a sparse 64 MiB map); an existing
``OUTDIR/hub`` is replaced, anything else in OUTDIR is left alone.

The run is deterministic: ids, times and the order of every batch are fixed; the
execution ids the partitions draw from ``uuid.uuid4`` come from a counter, scheduled
signals' random timer ids from a seeded generator, and activity timings (learned costs,
stored in ``meta``) are fixed. Regenerating with unchanged code writes the same records,
except for the stack traces of the failed instance, which name the checkout's paths (the
file bytes differ anyway: LMDB leaves unused parts of pages as they were in memory).
Regenerate only on purpose: a new store format gets a new ``store_v<N>`` directory, and
the old one stays as it is.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The checkout's own code and the driver, whatever the environment's install points at.
for entry in (ROOT, ROOT / "tests" / "runtime", HERE):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import lmdb  # noqa: E402
import partition_driver  # noqa: E402
import pytest  # noqa: E402
import store_workload as w  # noqa: E402
from partition_driver import Cluster  # noqa: E402

from duraray._registry import Registry  # noqa: E402
from duraray.runtime.engine.activity import execute_activity  # noqa: E402
from duraray.runtime.engine.records import ActivityResult, ActivityTask  # noqa: E402
from duraray.runtime.engine.store import DATABASES  # noqa: E402

#: What every activity run reports it took (wall and CPU seconds). Partitions store the
#: costs they learn in ``meta``; measured times would make each regeneration differ.
ACTIVITY_SECONDS = 0.001


def _counted_uuid4s() -> Iterator[uuid.UUID]:
    n = 0
    while True:
        n += 1
        yield uuid.UUID(int=n, version=4)


def _timed_activity(registry: Registry, task: ActivityTask) -> ActivityResult:
    result = execute_activity(registry, task)
    return dataclasses.replace(result, duration=ACTIVITY_SECONDS, cpu=ACTIVITY_SECONDS)


def build(cluster: Cluster) -> None:
    """Drive the hub into the fixture's state: ``store_workload.STARTS``, then each of
    ``REQUESTS`` run to quiescence in turn. Every one carries a request id, so each
    leaves a stored reply (``STORED_REPLIES``)."""
    for name, instance_id, value, extra in w.STARTS:
        cluster.start(name, instance_id, value, **extra)
    cluster.run()
    for request_id, op, args in w.REQUESTS:
        key = args.get("instance_id") or args["entity_id"]
        cluster.submit(op, partition=w.partition_of(key), request_id=request_id, **args)
        cluster.run()
    unanswered = sorted(str(request.request_id) for _, request in cluster.pending.values())
    assert not unanswered, f"requests left unanswered: {unanswered}"
    stored = {
        key[1:].decode()
        for core in cluster.cores
        for key, _ in core.store.scan("dedup", prefix=b"r")
    }
    assert set(w.STORED_REPLIES) == stored, sorted(stored ^ set(w.STORED_REPLIES))


def write_fixture(outdir: Path) -> list[Path]:
    """Build the hub in a scratch directory and copy it, compacted, to ``outdir/hub``."""
    target = outdir / "hub"
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch)
        with pytest.MonkeyPatch.context() as patch:
            uuids = _counted_uuid4s()
            patch.setattr(uuid, "uuid4", lambda: next(uuids))
            patch.setattr(partition_driver, "execute_activity", _timed_activity)
            # Scheduled entity signals get random timer ids (entity_host._schedule_signal).
            saved = random.getstate()
            random.seed(2026)
            try:
                registry = w.make_workload_registry()
                with Cluster(registry, partitions=w.PARTITIONS, data_dir=data_dir) as cluster:
                    build(cluster)
            finally:
                random.setstate(saved)
        if target.exists():
            shutil.rmtree(target)
        written = []
        for index in range(w.PARTITIONS):
            source = data_dir / "hub" / f"p{index}"
            dest = target / f"p{index}"
            dest.mkdir(parents=True)
            env = lmdb.open(str(source), readonly=True, lock=False, max_dbs=len(DATABASES))
            try:
                env.copy(str(dest), compact=True)
            finally:
                env.close()
            written.append(dest / "data.mdb")
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(argv[1])
    for path in write_fixture(outdir):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
