"""How many instances a partition holds in each status, kept as counters.

``Client.count_instances()`` must not read a million records. Every batch that writes or
deletes an instance's record notes in ``Batch.statuses`` the status the store held before
the batch and the status it writes (InstanceTable.put_record / note_deleted); the net
change rides in ``meta`` (``STATUS_COUNTS_KEY``) in the same transaction, so the counters
are exactly as durable as the records. A store written
before the counters existed is counted once when it is upgraded (migrations.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.records import InstanceRecord

Status = h.OrchestrationStatus

#: ``meta`` key of the counters: a map from status value to count.
STATUS_COUNTS_KEY = b"status_counts"


def count_records(rows: Iterable[tuple[bytes, bytes]]) -> dict[str, int]:
    """Counters of the stored ``instances`` rows (an upgrade's one full read); rows that
    cannot be read are not counted."""
    counts: Counter[str] = Counter()
    for _, value in rows:
        try:
            counts[codec.decode_record(InstanceRecord, value).status.value] += 1
        except Exception:
            continue
    return dict(counts)


class StatusCounts:
    """The partition's counters and the changes of the batch in progress."""

    def __init__(self, stored: bytes | None) -> None:
        self.counts: dict[str, int] = {} if stored is None else dict(codec.decode(stored))

    def stage(self, b: Batch, put_meta: Callable[[bytes, bytes], None]) -> None:
        """Before the commit: the counters after this batch, written with it if they
        changed."""
        if not b.statuses:
            return
        counts = dict(self.counts)
        changed = False
        for old, new in b.statuses.values():
            if old is new:
                continue
            changed = True
            if old is not None:
                counts[old.value] = counts.get(old.value, 0) - 1
            if new is not None:
                counts[new.value] = counts.get(new.value, 0) + 1
        if changed:
            b.counts = {k: v for k, v in counts.items() if v}
            put_meta(STATUS_COUNTS_KEY, codec.encode(b.counts))

    def committed(self, b: Batch) -> None:
        """After the commit: the batch's counters are the partition's."""
        if b.counts is not None:
            self.counts = b.counts
