"""Listings and counts of a partition's instances (the ``query`` and ``count`` operations).

Both run in a batch (``ClientOps`` handlers) or beside it (``ClientOps.read``: committed
records only, ``b`` is None). Instances are scanned by the creation-time index, in
chunks, and filtered by status, name and tags; counts without filters (but status) come
from the status counters (status_counts.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import datetime

from duraray.orchestrations import history as h
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.instances import InstanceTable
from duraray.runtime.engine.records import ClientRequest, InstanceRecord
from duraray.runtime.engine.store import PartitionStore

Status = h.OrchestrationStatus


class Listings:
    """The partition's instance listings and counts (see the module docstring)."""

    def __init__(self, store: PartitionStore, table: InstanceTable) -> None:
        self._store = store
        self._table = table

    def query(
        self,
        b: Batch | None,
        req: ClientRequest | None,
        *,
        statuses: list[str] | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        prefix: str | None = None,
        after: bytes | None = None,
        limit: int = 100,
        fetch_payloads: bool = True,
        newest_first: bool = False,
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> list[InstanceRecord]:
        match = _matcher(statuses, name, tags)
        out: list[InstanceRecord] = []
        load = self.load(b)
        scan = self.scan_records(load, created_from, created_to, after, prefix, newest_first)
        for record in scan:
            if not match(record):
                continue
            if not fetch_payloads:
                if b is not None and self._table.get(record.instance_id) is not None:
                    record = copy.copy(record)  # the live one is the core's
                record.input = record.output = record.custom_status = None
            out.append(record)
            if len(out) >= limit:
                break
        return out

    def count(
        self,
        b: Batch | None,
        req: ClientRequest | None,
        *,
        statuses: list[str] | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        prefix: str | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> dict[str, int]:
        """Instances by status value: from the counters, or by a scan when filtered by
        anything but status."""
        if created_from is None and created_to is None and not prefix and not name and not tags:
            counts = self._table.status_counts.counts
            return {k: v for k, v in counts.items() if statuses is None or k in statuses}
        match = _matcher(statuses, name, tags)
        out: dict[str, int] = {}
        scan = self.scan_records(self.load(b), created_from, created_to, None, prefix, False)
        for record in scan:
            if match(record):
                out[record.status.value] = out.get(record.status.value, 0) + 1
        return out

    def load(self, b: Batch | None) -> Callable[[list[str]], Iterator[InstanceRecord | None]]:
        """How a read gets records: in a batch, as the core holds them (live ones in
        memory); off the batch (``read``), as last committed, many in one store read."""
        if b is not None:
            get_record = self._table.get_record
            return lambda ids: (get_record(i) for i in ids)
        store = self._store

        def committed(ids: list[str]) -> Iterator[InstanceRecord | None]:
            values = store.get_many("instances", [r.instance_key(i) for i in ids])
            for data in values:  # decoded one by one: the caller may stop after a page
                yield None if data is None else codec.decode_record(InstanceRecord, data)

        return committed

    def scan_records(
        self,
        load: Callable[[list[str]], Iterator[InstanceRecord | None]],
        created_from: datetime | None,
        created_to: datetime | None,
        after: bytes | None,
        prefix: str | None,
        newest_first: bool,
    ) -> Iterator[InstanceRecord]:
        """Records by creation time (then id) in the range, after the key ``after`` in
        the order of the scan."""
        start = r.u64(codec.utc_micros(created_from)) if created_from else None
        stop = r.u64(codec.utc_micros(created_to) + 1) if created_to else None
        if after is not None:
            if not newest_first and (start is None or after >= start):
                start = after + b"\x00"
            elif newest_first and (stop is None or after < stop):
                stop = after  # exclusive: the rows before the token's key
        chunk = _FIRST_CHUNK
        while True:
            # In chunks: the caller usually stops after a page, and the index may hold
            # millions of rows past it.
            rows = self._store.scan(
                "by_created", start=start, stop=stop, reverse=newest_first, limit=chunk
            )
            ids = [key[8:].decode() for key, _ in rows]
            if prefix:
                ids = [i for i in ids if i.startswith(prefix)]
            for record in load(ids):
                if record is not None:
                    yield record
            if len(rows) < chunk:
                return
            if newest_first:
                stop = rows[-1][0]
            else:
                start = rows[-1][0] + b"\x00"
            chunk = min(chunk * 4, _MAX_CHUNK)


#: Index rows a query reads at first, and at most, per read of the store.
_FIRST_CHUNK, _MAX_CHUNK = 256, 1024


def _matcher(
    statuses: list[str] | None, name: str | None, tags: dict[str, str] | None
) -> Callable[[InstanceRecord], bool]:
    """The query's filters on a record: any of ``statuses``, exactly ``name``, and every
    one of ``tags``."""
    wanted = {Status(s) for s in statuses} if statuses else None
    wanted_tags = tuple(tags.items()) if tags else ()

    def match(record: InstanceRecord) -> bool:
        if wanted is not None and record.status not in wanted:
            return False
        if name is not None and record.name != name:
            return False
        if wanted_tags:
            have = record.tags or {}
            return all(have.get(k) == v for k, v in wanted_tags)
        return True

    return match
