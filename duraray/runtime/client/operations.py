"""The client's operations over many instances: queries, counts, bulk actions, diagnostics.

``HubOperations`` is a base of ``Client``: what an operator runs against a whole hub
(paged queries with server-side filters, counts by status, terminate and purge by filter,
the partitions' counters, parked items, blocking reports), beside the per-instance calls
in ``sync.py``. It reaches partitions through the client's router and keeps the
read-ahead of paged queries (``queries.OpenCursors``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from duraray.runtime.client import bulk, queries
from duraray.runtime.client.results import (
    OrchestrationState,
    OrchestrationStatus,
    Page,
    PurgeResult,
)
from duraray.runtime.client.transport import Router
from duraray.runtime.engine.records import BlockingReport, ParkedItem


class HubOperations:
    """Queries, counts, bulk actions and diagnostics over a whole hub (a base of ``Client``)."""

    _router: Router
    _cursors: queries.OpenCursors

    def _encode(self, value: Any, what: str) -> bytes:
        raise NotImplementedError  # the client's codec (sync.py)

    def purge_orchestrations_by(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Any = None,
    ) -> PurgeResult:
        """Delete finished instances created in the range, optionally only some statuses.

        Times lie from 1970 to about year 9899 (naive: UTC); ValueError otherwise.
        """
        return queries.purge_by(self._router, created_time_from, created_time_to, runtime_status)

    def query_instances(
        self,
        *,
        runtime_status: Any = None,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        instance_id_prefix: str | None = None,
        page_size: int = 100,
        continuation_token: str | None = None,
        fetch_payloads: bool = True,
        newest_first: bool = False,
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Page[OrchestrationState]:
        """One page of instances matching the filters, oldest first (``newest_first``:
        newest first), by creation time then id.

        Every filter is applied by the partitions: ``runtime_status`` (one or several),
        the creation time range, ``instance_id_prefix``, the orchestration ``name``
        (exactly) and ``tags`` (instances carrying every one of them). A page costs about
        the rows it returns, however deep into the results it is: the client reads ahead
        for the next page while the caller follows the tokens. ``page_size`` is 1 to
        10,000; times lie from 1970 to about year 9899 (naive: UTC); ValueError otherwise.
        """
        return queries.query_instances(
            self._router,
            runtime_status=runtime_status,
            created_time_from=created_time_from,
            created_time_to=created_time_to,
            instance_id_prefix=instance_id_prefix,
            page_size=page_size,
            continuation_token=continuation_token,
            fetch_payloads=fetch_payloads,
            newest_first=newest_first,
            name=name,
            tags=tags,
            cursors=self._cursors,
        )

    def count_instances(
        self,
        *,
        runtime_status: Any = None,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        instance_id_prefix: str | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> dict[OrchestrationStatus, int]:
        """How many instances the hub holds in each status asked for (zeros included).

        With no filter but ``runtime_status``, each partition answers from counters it
        keeps with its records: O(1) per partition. Any other filter (as for
        ``query_instances``) makes each partition scan the instances in the creation
        time range: O(instances in range).
        """
        filters = dict(locals())
        del filters["self"]
        return queries.count_instances(self._router, **filters)

    def terminate_instances(
        self,
        *,
        output: Any = None,
        recursive: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
        **filters: Any,
    ) -> int:
        """Terminate every running (or pending, or suspended) instance matching
        ``filters`` (those of ``query_instances``), a page of 1,000 at a time, calling
        ``on_progress(done, total)`` after each; returns how many."""
        encoded = self._encode(output, "termination output")
        return bulk.terminate_matching(
            self._router, self._cursors, bulk.filters(filters), encoded, recursive, on_progress
        )

    def purge_instances(
        self, *, on_progress: Callable[[int, int], None] | None = None, **filters: Any
    ) -> PurgeResult:
        """Purge every finished instance matching ``filters`` (those of
        ``query_instances``), a page of 1,000 at a time, calling ``on_progress(done,
        total)`` after each."""
        return bulk.purge_matching(self._router, self._cursors, bulk.filters(filters), on_progress)

    def get_all_instances(self, **filters: Any) -> list[OrchestrationState]:
        """Every instance matching ``query_instances`` filters, following all pages."""
        return queries.all_pages(self.query_instances, filters)

    def partition_stats(self) -> list[dict[str, Any]]:
        """Counters and load of every partition.

        Among them ``parked`` (rows set aside in the partition, see ``get_parked_items``)
        and the counters ``poison_items`` (items found poison since the partition started)
        and ``rebuilds`` (times its core was rebuilt after a batch failed).
        """
        return self._router.call_all("stats", {})

    def get_parked_items(self, limit: int = 100) -> list[ParkedItem]:
        """What the partitions set aside because applying it failed (poison), at most
        ``limit`` (1 to 10,000; ValueError otherwise), by partition then by key.

        A partition applies the work of a batch that raised one item at a time; an item
        that fails alone twice is dealt with so that the partition goes on: a client
        request is answered with ``PartitionFailureError``, orchestration work fails its
        instance, a message or scheduled signal is parked. Each such item (and a stored
        row the partition could not read) is kept as a ``ParkedItem`` until the store is
        cleared; nothing replays it. ``partition_stats()`` counts them per partition
        (``parked``), including any past ``limit``.
        """
        return queries.parked_items(self._router, limit)

    def get_blocking_report(self, instance_id: str) -> BlockingReport | None:
        """The latest report of an orchestrator episode of the instance that ran longer
        than ``blocking_episode_warning_s`` (blocking its partition), or None.

        Kept in the partition's memory for its last 100 reported instances; a restart of
        the partition forgets them. ``partition_stats()`` counts such episodes
        (``blocking_episodes``).
        """
        return self._router.call(instance_id, "blocking_report", {})
