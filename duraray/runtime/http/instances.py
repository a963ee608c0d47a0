"""The routes over instance filters: list, count, and the bulk operations on what matches.

``FilterRoutes`` serves ``GET /api/instances``, ``GET /api/instance-counts``, the Durable
Functions bulk purge ``DELETE /api/instances?createdTimeFrom=...`` and the bulk
operations ``POST /api/instances/terminate``, ``POST /api/instances/purge`` and
``POST /api/instances/raiseEvents`` (one event each to many instances), the first ones with
the filters ``parsing.instance_filters`` reads (status, creation time range, id prefix,
orchestration name, tags), applied by the partitions. ``api.py`` documents the routes and
registers them; this module only turns requests into ``Client`` calls and answers.

A bulk operation runs in the request, a page of 1,000 instances at a time
(``Client.terminate_instances`` / ``purge_instances``), and answers once every page is
done. Because a request with no filter at all would act on the whole hub, such a request
must say so with ``all=true``; a typo in a filter's name is then not a hub-wide purge.
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from duraray.runtime.client.aio import AsyncClient
from duraray.runtime.http import parsing as q
from duraray.runtime.http import payloads as p
from duraray.runtime.http.parsing import NO_BODY, ApiError, call

log = structlog.get_logger("duraray.http")

#: The largest ``top`` a list request may ask for.
MAX_PAGE_SIZE = 1000

#: The query parameters that filter instances (for the message of an unfiltered bulk call).
FILTER_PARAMS = (
    "runtimeStatus",
    "createdTimeFrom",
    "createdTimeTo",
    "instanceIdPrefix",
    "name",
    "tag",
)


class FilterRoutes:
    """Handlers of the filtered instance routes over one ``AsyncClient``."""

    def __init__(self, client: AsyncClient, max_body_bytes: int) -> None:
        self.client = client
        self.max_body_bytes = max_body_bytes

    async def raise_events(self, request: Request) -> Response:
        """Deliver many external events; 200 with each one's outcome, in order."""
        body = await q.read_json(request, self.max_body_bytes, "events")
        events = q.bulk_events(body)
        outcomes = await call(self.client.raise_orchestration_events, events)
        out = [p.event_outcome_json(e[0], o) for e, o in zip(events, outcomes, strict=True)]
        return JSONResponse(out)

    async def list_instances(self, request: Request) -> Response:
        """One page of instances matching the filters, oldest (or newest) first."""
        show_input = q.query_bool(request, "showInput", False)
        page = await call(
            self.client.query_instances,
            **q.instance_filters(request),
            newest_first=q.query_bool(request, "newestFirst", False),
            page_size=q.query_int(request, "top", 100, 1, MAX_PAGE_SIZE),
            continuation_token=q.continuation(request),
        )
        body = [p.status_json(state, show_input=show_input) for state in page.items]
        return JSONResponse(body, headers=q.page_headers(page.continuation_token))

    async def count_instances(self, request: Request) -> Response:
        """Instances by status (``Client.count_instances``)."""
        counts = await call(self.client.count_instances, **q.instance_filters(request))
        return JSONResponse({p.DF_STATUS[status]: n for status, n in counts.items()})

    async def purge_by(self, request: Request) -> Response:
        """Delete finished instances created in a time range (Durable Functions' bulk purge)."""
        created_from = q.query_time(request, "createdTimeFrom")
        if created_from is None:
            raise ApiError(400, "bulk purge needs createdTimeFrom (ISO 8601)")
        result = await call(
            self.client.purge_orchestrations_by,
            created_time_from=created_from,
            created_time_to=q.query_time(request, "createdTimeTo"),
            runtime_status=q.query_statuses(request),
        )
        deleted = result.deleted_instance_count
        if not deleted:
            return q.error_response(404, "no finished instance matched", instancesDeleted=0)
        return JSONResponse({"instancesDeleted": deleted})

    async def terminate_matching(self, request: Request) -> Response:
        """Terminate every unfinished instance the filters match; ``{"terminated": n}``."""
        filters = _bulk_filters(request)
        body = await q.read_json(request, self.max_body_bytes, "termination output")
        output = request.query_params.get("reason") if body is NO_BODY else body
        recursive = q.query_bool(request, "recursive", True)
        done = await call(
            self.client.terminate_instances, output=output, recursive=recursive, **filters
        )
        log.info("bulk terminate", terminated=done, **_shown(filters))
        return JSONResponse({"terminated": done})

    async def purge_matching(self, request: Request) -> Response:
        """Purge every finished instance the filters match; ``{"purged": n}``."""
        filters = _bulk_filters(request)
        await q.read_json(request, self.max_body_bytes, "request body")  # validated, not used
        result = await call(self.client.purge_instances, **filters)
        done = result.deleted_instance_count
        log.info("bulk purge", purged=done, **_shown(filters))
        return JSONResponse({"purged": done})


def _bulk_filters(request: Request) -> dict[str, Any]:
    """The filters of a bulk operation; 400 when there is none and no ``all=true``."""
    filters = q.instance_filters(request)
    everything = q.query_bool(request, "all", False)
    if not everything and all(value is None for value in filters.values()):
        raise ApiError(
            400,
            f"a bulk operation needs at least one filter ({', '.join(FILTER_PARAMS)}); "
            f"send all=true to act on every instance of the hub",
        )
    return filters


def _shown(filters: dict[str, Any]) -> dict[str, str]:
    """The filters given, as text for the log line."""
    return {name: str(value) for name, value in filters.items() if value is not None}
