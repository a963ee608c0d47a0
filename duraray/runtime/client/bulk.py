"""Terminate or purge every instance a filter matches, a page at a time, with progress.

The matching instances are paged through (ids only, by creation time) and each page is
terminated or purged in one batch request per partition, so a million instances cost
a thousand bounded batches rather than one huge one, and the caller hears how far it got
after each page. Instances that start or finish meanwhile may or may not be included,
as with any query that pages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from duraray.runtime.client import queries
from duraray.runtime.client.results import OrchestrationStatus, PurgeResult
from duraray.runtime.client.transport import Router

#: Instances terminated or purged per page (one batch request per partition each).
BULK_PAGE = 1000

Progress = Callable[[int, int], None]

_FILTERS = (
    "runtime_status",
    "created_time_from",
    "created_time_to",
    "instance_id_prefix",
    "name",
    "tags",
)


def filters(given: dict[str, Any]) -> dict[str, Any]:
    """The instance filters of a bulk operation, every one present (None: any)."""
    unknown = sorted(set(given) - set(_FILTERS))
    if unknown:
        raise TypeError(f"unknown filter(s) {', '.join(unknown)}; filters are {_FILTERS}")
    return {name: given.get(name) for name in _FILTERS}


_RUNNING = [s for s in OrchestrationStatus if not s.is_terminal]
_FINISHED = [s for s in OrchestrationStatus if s.is_terminal]


def terminate_matching(
    router: Router,
    cursors: queries.OpenCursors,
    filters: dict[str, Any],
    output: bytes | None,
    recursive: bool,
    on_progress: Progress | None,
) -> int:
    """Terminate the non-terminal instances matching ``filters``; how many."""
    ops = lambda iid: ("terminate", {"output": output, "recursive": recursive})  # noqa: E731
    return _each_page(router, cursors, filters, _RUNNING, ops, on_progress)


def purge_matching(
    router: Router,
    cursors: queries.OpenCursors,
    filters: dict[str, Any],
    on_progress: Progress | None,
) -> PurgeResult:
    """Purge the finished instances matching ``filters``."""
    done = _each_page(router, cursors, filters, _FINISHED, lambda iid: ("purge", {}), on_progress)
    return PurgeResult(done)


def _each_page(
    router: Router,
    cursors: queries.OpenCursors,
    filters: dict[str, Any],
    allowed: list[OrchestrationStatus],
    op: Callable[[str], tuple[str, dict[str, Any]]],
    on_progress: Progress | None,
) -> int:
    asked = queries.statuses(filters.pop("runtime_status", None))
    wanted = [s for s in allowed if asked is None or s.value in asked]
    if not wanted:
        return 0
    filters = {**filters, "runtime_status": wanted}
    total = sum(queries.count_instances(router, **filters).values())
    done = 0
    token = None
    while True:
        page = queries.query_instances(
            router,
            **filters,
            page_size=BULK_PAGE,
            continuation_token=token,
            fetch_payloads=False,
            cursors=cursors,
        )
        if page.items:
            batch = []
            for state in page.items:
                name, args = op(state.instance_id)
                batch.append((state.instance_id, name, {"instance_id": state.instance_id, **args}))
            router.batch(batch)
            done += len(page.items)
            if on_progress is not None:
                on_progress(done, max(total, done))
        token = page.continuation_token
        if token is None:
            return done
