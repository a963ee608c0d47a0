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

from duraray._errors import InstanceNotFoundError, InstanceStateError
from duraray.runtime.client import queries
from duraray.runtime.client.results import OrchestrationStatus, PurgeResult
from duraray.runtime.client.transport import Router
from duraray.runtime.engine.records import Reply

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
    """Terminate the non-terminal instances matching ``filters``; how many were."""

    def terminate(ids: list[str]) -> int:
        args = {"output": output, "recursive": recursive}
        results = _apply(router, [(i, "terminate", args) for i in ids])
        return sum(1 for result in results if result)

    return _each_page(router, cursors, filters, _RUNNING, terminate, on_progress)


def purge_matching(
    router: Router,
    cursors: queries.OpenCursors,
    filters: dict[str, Any],
    on_progress: Progress | None,
) -> PurgeResult:
    """Purge the finished instances matching ``filters``, and their sub-orchestrations
    (as ``purge_orchestration`` does); how many instances were deleted."""

    def purge(ids: list[str]) -> int:
        deleted = 0
        while ids:
            results = _apply(router, [(i, "purge", {}) for i in ids])
            answered = [result for result in results if result]
            deleted += sum(count for count, _ in answered)
            ids = [child for count, children in answered if count for child in children]
        return deleted

    return PurgeResult(_each_page(router, cursors, filters, _FINISHED, purge, on_progress))


def _apply(router: Router, ops: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
    """Each operation's result (None where its instance is gone or already finished:
    it changed meanwhile, and is left as it is); raises the first other error, once
    every operation was sent."""
    results = router.batch_each([(iid, op, {"instance_id": iid, **args}) for iid, op, args in ops])
    out: list[Any] = []
    error: BaseException | None = None
    for result in results:
        if isinstance(result, Reply):
            if not isinstance(result.error, InstanceNotFoundError | InstanceStateError):
                error = error or result.error
            out.append(None)
        else:
            out.append(result)
    if error is not None:
        raise error
    return out


def _each_page(
    router: Router,
    cursors: queries.OpenCursors,
    filters: dict[str, Any],
    allowed: list[OrchestrationStatus],
    act: Callable[[list[str]], int],
    on_progress: Progress | None,
) -> int:
    asked = queries.statuses(filters.pop("runtime_status", None))
    wanted = [s for s in allowed if asked is None or s.value in asked]
    if not wanted:
        return 0
    filters = {**filters, "runtime_status": wanted}
    # The total is for the progress report only (a scan, when filtered by more than status).
    total = sum(queries.count_instances(router, **filters).values()) if on_progress else 0
    done = seen = 0
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
            done += act([state.instance_id for state in page.items])
            seen += len(page.items)
            if on_progress is not None:
                on_progress(seen, max(total, seen))
        token = page.continuation_token
        if token is None:
            return done
