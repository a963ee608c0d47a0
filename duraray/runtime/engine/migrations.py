"""The identity and format of a partition's store, checked and upgraded when it opens.

A new store is stamped with its hub, partition, partition count and format version. An
existing one must belong to the same hub and partition and have the same partition count
(the routing of ids depends on it), and must not be newer than this code. An older one is
upgraded in one transaction with its new format number, so an upgrade that crashes
halfway runs again from the start.
"""

from __future__ import annotations

from collections import Counter

from duraray._errors import HubConfigurationError
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.clock import Clock
from duraray.runtime.engine.records import InstanceRecord
from duraray.runtime.engine.status_counts import STATUS_COUNTS_KEY, count_records
from duraray.runtime.engine.store import PartitionStore, WriteBatch


def open_store(
    store: PartitionStore, *, hub: str, index: int, partitions: int, clock: Clock
) -> None:
    """Stamp a new store, or check (and upgrade) an existing one; HubConfigurationError
    if it belongs elsewhere or is too new."""
    meta = {k.decode(): codec.decode(v) for k, v in store.scan("meta")}
    if not meta:
        wb = WriteBatch()
        for key, value in (
            ("hub", hub),
            ("partition", index),
            ("partition_count", partitions),
            ("format_version", r.FORMAT_VERSION),
        ):
            wb.put("meta", key.encode(), codec.encode(value))
        store.commit(wb)
        return
    if meta.get("partition_count") != partitions:
        raise HubConfigurationError(
            f"the data of hub {hub!r} was created with {meta.get('partition_count')} "
            f"partitions; it cannot be opened with {partitions} (changing the "
            "partition count of an existing hub is not supported)"
        )
    if meta.get("partition") != index or meta.get("hub") != hub:
        raise HubConfigurationError(
            f"store at {store.path!r} belongs to hub {meta.get('hub')!r} partition "
            f"{meta.get('partition')}, not {hub!r} partition {index}"
        )
    if meta.get("format_version", 0) > r.FORMAT_VERSION:
        raise HubConfigurationError(
            f"store format {meta.get('format_version')} is newer than this duraray "
            f"understands ({r.FORMAT_VERSION}); upgrade duraray"
        )
    version = meta.get("format_version", 1)
    if version < r.FORMAT_VERSION:
        wb = WriteBatch()
        if version < 2:
            _build_live_index(store, wb)
        if version < 3:
            _index_request_replies(store, wb, clock)
        if version < 4:
            wb.put("meta", STATUS_COUNTS_KEY, codec.encode(_count_statuses(store)))
        wb.put("meta", b"format_version", codec.encode(r.FORMAT_VERSION))
        store.commit(wb)


def _count_statuses(store: PartitionStore) -> dict[str, int]:
    """Format 3 -> 4: count the stored instances by status, a chunk at a time (a
    partition may hold millions of them)."""
    counts: Counter[str] = Counter()
    start = None
    while True:
        rows = store.scan("instances", start=start, limit=_COUNT_CHUNK)
        counts.update(count_records(rows))
        if len(rows) < _COUNT_CHUNK:
            return dict(counts)
        start = rows[-1][0] + b"\x00"


_COUNT_CHUNK = 10_000


def _build_live_index(store: PartitionStore, wb: WriteBatch) -> None:
    """Format 1 -> 2: index the non-terminal instances."""
    for key, value in store.scan("instances"):
        if not codec.decode_record(InstanceRecord, value).status.is_terminal:
            wb.put("live", key, b"")


def _index_request_replies(store: PartitionStore, wb: WriteBatch, clock: Clock) -> None:
    """Format 2 -> 3: give every stored reply a time index entry, stamped now (when
    it was stored is unknown), so it is pruned one retention window from now."""
    now = max(0, codec.utc_micros(clock.now()))
    for key, _ in store.scan("dedup", prefix=b"r"):
        wb.put("dedup", r.dedup_expiry_key(now, key[1:].decode()), b"")
