"""The HTTP management API of a hub: Durable Functions' routes and payloads over a Client.

``create_app(client)`` returns a Starlette app; every route calls the client (through
``AsyncClient``, so the event loop never waits on a commit) and maps its errors to status
codes. This module owns routing, request validation and status codes; the handlers of the
routes over instance filters (list, counts, bulk purge, terminate and purge) are in
``instances.py``, the JSON shapes are built in ``payloads.py``, metrics in ``metrics.py``,
the token check in ``auth.py``, the answers to exceptions that escape a route in
``errors.py``. It never touches partitions or
storage. The dashboard (``dashboard.py``, if present) adds ``GET /`` and ``/static/...``
and calls the routes below from the browser, so the shapes documented here are a
contract: keys are only ever added.

Routes (``{id}`` is an instance id, percent-encoded: ``/`` travels as ``%2F``):

=======================================================  ==================================
``POST /api/orchestrations/{name}[?instance_id=]``       start; body = JSON input (empty:
                                                         None) -> 202 check-status payload,
                                                         409 if the id is running
``GET /api/instances/{id}[?showHistory&showInput]``      status (showInput defaults to
                                                         true) -> 202 while Pending,
                                                         Running, Suspended or
                                                         ContinuedAsNew; 200 once finished
                                                         (500 for Failed/Terminated with
                                                         ``returnInternalServerErrorOnFailure=true``)
``POST /api/instances/{id}/raiseEvent/{event}``          body = event data -> 202
``POST /api/instances/raiseEvents``                      body = ``[{instanceId, name,
                                                         data?}, ...]`` (at most 10,000)
                                                         -> 200 one outcome per event
``POST /api/instances/{id}/terminate[?reason=]``         body (JSON) or reason = the output;
                                                         ``recursive=false`` -> 202
``POST /api/instances/{id}/suspend|resume|rewind``       ``?reason=`` (or a JSON string
                                                         body) -> 202
``POST /api/instances/{id}/restart``                     ``?restartWithNewInstanceId=true``
                                                         -> 202 check-status payload of the
                                                         id used
``DELETE /api/instances/{id}``                           purge -> 200 ``{instancesDeleted}``;
                                                         404 unknown, 410 still running
``GET /api/instances``                                   query: ``runtimeStatus`` (comma
                                                         list), ``createdTimeFrom``,
                                                         ``createdTimeTo`` (ISO 8601),
                                                         ``instanceIdPrefix``, ``name``,
                                                         ``tag=key:value`` (repeated: all),
                                                         ``newestFirst`` (default false),
                                                         ``top`` (1-1000, default 100),
                                                         ``showInput`` (default false)
                                                         -> 200 list of status payloads
``GET /api/instance-counts``                             the same filters but ``top`` ->
                                                         200 ``{status: count}`` (every
                                                         status; no filter but
                                                         ``runtimeStatus``: from counters)
``DELETE /api/instances?createdTimeFrom=...``            bulk purge of finished instances
                                                         (+ ``createdTimeTo``,
                                                         ``runtimeStatus``) -> 200
                                                         ``{instancesDeleted}``, 404 if none
``POST /api/instances/terminate?<filters>``             terminate every unfinished instance
                                                         the list filters match (``all=true``
                                                         if none is given; ``reason`` or a
                                                         JSON body = the output,
                                                         ``recursive=false``) -> 200
                                                         ``{terminated}`` once done
``POST /api/instances/purge?<filters>``                 purge every finished instance the
                                                         list filters match (``all=true`` if
                                                         none) -> 200 ``{purged}`` once done
``POST /api/entities/{name}/{key}?op=``                  signal; body = JSON input -> 202
``GET /api/entities/{name}/{key}``                       -> 200 entity payload, 404
``GET /api/entities[?name=&keyPrefix=&top=]``            -> 200 list of entity payloads
                                                         (``includeState=false`` omits
                                                         state)
``GET /api/partitions``                                  -> 200 ``Client.partition_stats()``
``GET /api/parked[?top=&showPayload=]``                  items the partitions set aside
                                                         (poison; ``top`` 1-1000, default
                                                         100) -> 200 list of parked-item
                                                         payloads, by partition then key
``GET /metrics``                                         Prometheus text (see metrics.py)
``GET /healthz``                                         200 ``{"status": "ok", "hub"}``
=======================================================  ==================================

The two bulk routes work a page of 1,000 instances at a time and answer when all are
done; a request without any filter is a 400 unless it says ``all=true``. Their paths do
not shadow instances named ``terminate`` or ``purge``: those stay addressable by ``GET``,
``DELETE`` and their own ``/terminate``-style routes.

List routes page: the response header ``x-ms-continuation-token`` (absent on the last
page) goes back in the same request header for the next page.

Status codes: 202 accepted or still running, 200 done, 400 malformed body, query, id or
continuation token (also unserializable or oversized payloads), 401 missing or wrong
bearer token, 403 a cross-site request (foreign ``Origin``, or on a loopback bind a
``Host`` that is not allowed; see ``auth.py``), 404 unknown instance or entity, 409 start
with a running id (or a purge that raced the instance finishing: retry), 410 the
instance's state forbids the operation (raiseEvent, terminate, suspend or resume of a
finished instance, rewind of one that did not fail, restart or purge of a running one),
413 body over the size limit (or over 10,000 events to ``raiseEvents``), 415 a body not
declared JSON (``Content-Type: application/json`` or ``application/*+json``; a POST
without a body needs none), 500 an unexpected error (the server keeps serving), also a
request that failed inside its partition (``PartitionFailureError``: a defect met
applying it; nothing of it was stored, the partition goes on, and ``/api/parked`` lists
it), 507 a partition had no space to store the change (``StorageFullError``: disk or
``max_map_size`` full; nothing was applied).
Every error body is ``{"error": "<message>"}``. 202 responses of start, restart and
status carry ``Location`` (the status URL) and ``Retry-After: 1``.

JSON shapes (times are ISO 8601 UTC with ``Z``; payloads are JSON values, bytes as
base64, see ``payloads.to_json``):

- check-status payload: ``{id, statusQueryGetUri, sendEventPostUri (ends in the literal
  "{eventName}"), terminatePostUri, suspendPostUri, resumePostUri, rewindPostUri,
  restartPostUri, purgeHistoryDeleteUri}``, absolute URLs (``?reason=`` may be appended);
- status payload: ``{name, instanceId, runtimeStatus ("Pending", "Running", "Completed",
  "ContinuedAsNew", "Failed", "Terminated", "Suspended"), input (null unless shown),
  customStatus, output (a Failed instance's error message when it has no output),
  createdTime, lastUpdatedTime, completedTime (null until it finished),
  scheduledStartTime (null unless its start was delayed), failureDetails (null, or
  {errorType, errorMessage, stackTrace, isNonRetriable, innerFailure?}), version, tags,
  parentInstanceId, payloadErrors?, historyEvents?}``, and on ``GET /api/instances/{id}``
  ``blockingReport``: null, or the latest episode of the instance that ran longer than
  ``blocking_episode_warning_s`` (``{partition, reportedAt, seconds (when reported),
  finishedAfter (null while it runs), stack}``, kept in the partition's memory);
- history event: ``{"EventType": "<class name>", <field>: <value>, ...}`` with the event's
  own (snake_case) field names, e.g. ``{"EventType": "TaskCompleted", "timestamp": ...,
  "task_scheduled_id": 2, "result": 42}``; failures are ``{message, error_type,
  stack_trace, inner, non_retriable}``, plus ``payloadErrors?``;
- entity payload: ``{entityId: {name, key}, state, lastModified, lockedBy,
  backlogQueueSize, payloadErrors?}``;
- ``payloadErrors`` (only present then): ``{<payload key>: "<reason>"}`` for a stored
  payload that cannot be decoded (it reads ``"<undecodable payload: ...>"``; an input not
  shown is named all the same) or has a part JSON cannot carry (nested over 200 levels, an
  int over 14,000 bits: that part reads ``"<unrenderable: ...>"``). Only records stored
  before the codec's limits can hold such payloads; one never fails a listing or a status;
- event outcome (``raiseEvents``, one per event, in order): ``{instanceId, status
  ("delivered", "notFound", "finished" or "failed": the partition could not store it),
  error (null when delivered)}``; a malformed event (a bad id, name or data) answers 400
  naming its index (``events[3]: ...``) and none is delivered;
- ``/api/partitions``: a list, one object per partition: ``{partition, counters: {batches,
  items, episodes, commit_seconds, replays, activities_dispatched, messages_sent,
  blocking_episodes, entity_operations?, poison_items?, rebuilds?, link_frames_sent?,
  link_frames_received?, link_declined?, link_rejected?}, live_instances: {STATUS: n},
  cached_executors, timers, activities_in_flight, outbox, queue_depth, parked,
  shared_workers?}`` (``shared_workers``, Ray only: shared pool workers it found started;
  ``parked``: rows set aside in the partition, see below; ``poison_items``: items found
  poison, ``rebuilds``: rebuilds of its core after a failed batch, ``blocking_episodes``:
  episodes longer than ``blocking_episode_warning_s``, all since the partition started);
- parked-item payload: ``{partition, kind ("message", "signal", "instance", "row" or
  "request"), target (the instance or entity it was for), parkedAt, error (one line),
  detail (the traceback, shortened)}``, plus ``payload`` with ``showPayload=true`` (the
  engine's encoding of a parked message, base64; null for other kinds). Payloads are left
  out by default: a message can be as large as ``max_payload_bytes``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, cast

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from duraray.orchestrations.history import OrchestrationStatus
from duraray.runtime.client.aio import AsyncClient
from duraray.runtime.client.sync import BlockingReport, Client, OrchestrationState
from duraray.runtime.http import parsing as q
from duraray.runtime.http import payloads as p
from duraray.runtime.http.auth import (
    BearerTokenMiddleware,
    SameOriginMiddleware,
    is_loopback,
    normalize_allowed_hosts,
)
from duraray.runtime.http.errors import EXCEPTION_HANDLERS, CatchAllMiddleware
from duraray.runtime.http.instances import MAX_PAGE_SIZE, FilterRoutes
from duraray.runtime.http.metrics import hub_registry
from duraray.runtime.http.parsing import CONTINUATION_HEADER, NO_BODY, ApiError, call

__all__ = [
    "CONTINUATION_HEADER",
    "DEFAULT_MAX_BODY_BYTES",
    "ApiError",
    "HttpApi",
    "check_status_payload",
    "create_app",
    "create_check_status_response",
    "wait_for_completion_or_create_check_status_response",
]

log = structlog.get_logger("duraray.http")

DEFAULT_MAX_BODY_BYTES = 1_048_576
RETRY_AFTER_SECONDS = 1


def as_async(client: Client | AsyncClient) -> AsyncClient:
    """An ``AsyncClient`` over ``client`` (itself if it already is one)."""
    return client if isinstance(client, AsyncClient) else AsyncClient(client)


# -- check-status responses (also for user code: SEMANTICS #72) ---------------------------


def check_status_payload(
    request: Request, instance_id: str, *, base_url: str | None = None
) -> dict[str, str]:
    """The management payload of an instance, with URLs absolute to ``base_url`` or the request."""
    return p.management_urls(base_url or str(request.base_url), instance_id)


def _accepted_headers(status_url: str) -> dict[str, str]:
    return {"Location": status_url, "Retry-After": str(RETRY_AFTER_SECONDS)}


def create_check_status_response(
    request: Request, instance_id: str, *, base_url: str | None = None
) -> JSONResponse:
    """202 with the management payload, ``Location`` = status URL and ``Retry-After``."""
    payload = check_status_payload(request, instance_id, base_url=base_url)
    return JSONResponse(
        payload, status_code=202, headers=_accepted_headers(payload["statusQueryGetUri"])
    )


async def wait_for_completion_or_create_check_status_response(
    client: Client | AsyncClient,
    request: Request,
    instance_id: str,
    timeout: float = 10,
    retry_interval: float = 1,
    *,
    base_url: str | None = None,
) -> Response:
    """Wait up to ``timeout`` s for the instance to finish, then answer as Durable Functions does.

    200 with the output when it completed; 500 with the status payload when it failed;
    200 with the status payload when it was terminated; else (still running after
    ``timeout``) the 202 check-status response. An unknown id answers 404. The engine
    notifies completion, so nothing polls: ``retry_interval`` is kept for the Durable
    Functions signature and only checked (positive, at most ``timeout``).
    """
    if not retry_interval > 0:
        raise ValueError("retry_interval must be positive")
    if timeout < retry_interval:
        raise ValueError(
            f"total timeout {timeout} s should be at least the retry interval {retry_interval} s"
        )
    aclient: Any = as_async(client)  # its coroutines are attached at import time
    try:
        state = await call(aclient.get_orchestration_state, instance_id)
        if state is None:
            return q.error_response(404, f"no orchestration instance with id {instance_id!r}")
        if not state.runtime_status.is_terminal:
            try:
                state = await aclient.wait_for_orchestration_completion(
                    instance_id, timeout=timeout
                )
            except TimeoutError:
                return create_check_status_response(request, instance_id, base_url=base_url)
    except ApiError as exc:
        return q.error_response(exc.status, exc.message)
    if state.runtime_status is OrchestrationStatus.COMPLETED:
        return JSONResponse(p.to_json(state.output), status_code=200)
    status_code = 500 if state.runtime_status is OrchestrationStatus.FAILED else 200
    return JSONResponse(p.status_json(state), status_code=status_code)


# -- the routes -----------------------------------------------------------------------------


class HttpApi:
    """The route handlers over one client; ``routes()`` lists them for Starlette."""

    def __init__(
        self, client: Client | AsyncClient, *, max_body_bytes: int, base_url: str | None
    ) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        # Any: AsyncClient's coroutines are attached at import time, so mypy cannot see them.
        self.client: Any = as_async(client)
        self.hub = self.client.hub
        self.max_body_bytes = max_body_bytes
        self.base_url = base_url
        self.registry = hub_registry(self.hub, self.client.client.partition_stats)
        self.filtered = FilterRoutes(self.client, max_body_bytes)

    def routes(self) -> list[BaseRoute]:
        """The API's routes, in matching order."""
        filtered = self.filtered
        return [
            Route("/api/orchestrations/{name}", self.start, methods=["POST"]),
            Route("/api/instances", filtered.list_instances, methods=["GET"]),
            Route("/api/instances", filtered.purge_by, methods=["DELETE"]),
            Route("/api/instance-counts", filtered.count_instances, methods=["GET"]),
            # Before the instance routes: Starlette takes the first route whose path and
            # method both match.
            Route("/api/instances/terminate", filtered.terminate_matching, methods=["POST"]),
            Route("/api/instances/purge", filtered.purge_matching, methods=["POST"]),
            Route("/api/instances/raiseEvents", filtered.raise_events, methods=["POST"]),
            # One route for /api/instances/{id}[/action]: the id is one path segment of the
            # raw (still percent-encoded) path, so an id holding "/" (sent as %2F) can never
            # be read as an action, nor an action as part of an id.
            Route(
                "/api/instances/{rest:path}",
                self.instance_route,
                methods=["GET", "POST", "DELETE"],
            ),
            Route("/api/entities", self.list_entities, methods=["GET"]),
            Route("/api/entities/{name}/{key}", self.signal_entity, methods=["POST"]),
            Route("/api/entities/{name}/{key}", self.get_entity, methods=["GET"]),
            Route("/api/partitions", self.partitions, methods=["GET"]),
            Route("/api/parked", self.parked, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]

    async def instance_route(self, request: Request) -> Response:
        """Dispatch ``/api/instances/{id}[/action]`` by the raw path's segments."""
        action, request.scope["path_params"] = q.instance_action(request)
        handlers = {
            "status": self.status,
            "purge": self.purge,
            "raiseEvent": self.raise_event,
            "terminate": self.terminate,
            "suspend": self.suspend,
            "resume": self.resume,
            "rewind": self.rewind,
            "restart": self.restart,
        }
        return await handlers[action](request)

    async def _json(self, request: Request, what: str) -> Any:
        return await q.read_json(request, self.max_body_bytes, what)

    async def _value(self, request: Request, what: str) -> Any:
        value = await q.read_json(request, self.max_body_bytes, what)
        return None if value is NO_BODY else value

    async def _reason(self, request: Request) -> str | None:
        return await q.read_reason(request, self.max_body_bytes)

    def _base(self, request: Request) -> str:
        return self.base_url or str(request.base_url)

    # -- orchestrations ----------------------------------------------------------------

    async def start(self, request: Request) -> Response:
        """Start an orchestration; 202 with the check-status payload."""
        name = request.path_params["name"]
        instance_id = request.query_params.get("instance_id") or request.query_params.get(
            "instanceId"
        )
        value = await self._value(request, "orchestration input")
        started = await call(
            self.client.schedule_new_orchestration, name, input=value, instance_id=instance_id
        )
        return create_check_status_response(request, started, base_url=self.base_url)

    async def status(self, request: Request) -> Response:
        """An instance's status: 202 while it runs, 200 once finished, 404 unknown."""
        instance_id = request.path_params["instance_id"]
        show_history = q.query_bool(request, "showHistory", False)
        show_input = q.query_bool(request, "showInput", True)
        fail_500 = q.query_bool(request, "returnInternalServerErrorOnFailure", False)
        # Both at once (no added latency); the state's error, if any, is the answer.
        outcomes = await asyncio.gather(
            call(self.client.get_orchestration_state, instance_id),
            call(self.client.get_blocking_report, instance_id),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        state = cast(OrchestrationState | None, outcomes[0])
        blocking = cast(BlockingReport | None, outcomes[1])
        if state is None:
            raise ApiError(404, f"no orchestration instance with id {instance_id!r}")
        history = None
        if show_history:
            history = await call(self.client.get_orchestration_history, instance_id)
        payload = p.status_json(state, show_input=show_input, history=history)
        payload["blockingReport"] = p.blocking_json(blocking)
        status = state.runtime_status
        if not status.is_terminal:
            url = p.management_urls(self._base(request), instance_id)["statusQueryGetUri"]
            return JSONResponse(payload, status_code=202, headers=_accepted_headers(url))
        failed = status in (OrchestrationStatus.FAILED, OrchestrationStatus.TERMINATED)
        return JSONResponse(payload, status_code=500 if failed and fail_500 else 200)

    async def raise_event(self, request: Request) -> Response:
        """Deliver an external event; the body is its data."""
        instance_id = request.path_params["instance_id"]
        data = await self._value(request, "event data")
        await call(
            self.client.raise_orchestration_event,
            instance_id,
            request.path_params["event"],
            data=data,
        )
        return Response(status_code=202)

    async def terminate(self, request: Request) -> Response:
        """Terminate a running instance; 410 when it already finished."""
        instance_id = request.path_params["instance_id"]
        body = await self._json(request, "termination output")
        output = request.query_params.get("reason") if body is NO_BODY else body
        recursive = q.query_bool(request, "recursive", True)
        await self._require_unfinished(instance_id, "terminate")
        await call(
            self.client.terminate_orchestration, instance_id, output=output, recursive=recursive
        )
        return Response(status_code=202)

    async def _require_unfinished(self, instance_id: str, verb: str) -> None:
        # The client treats terminating a finished instance as a no-op; over HTTP it is 410.
        state = await call(self.client.get_orchestration_state, instance_id, fetch_payloads=False)
        if state is None:
            raise ApiError(404, f"no orchestration instance with id {instance_id!r}")
        if state.runtime_status.is_terminal:
            raise ApiError(
                410,
                f"cannot {verb} instance {instance_id!r}: it is {state.runtime_status.value}",
            )

    async def suspend(self, request: Request) -> Response:
        """Suspend a running instance."""
        reason = await self._reason(request)
        await call(
            self.client.suspend_orchestration, request.path_params["instance_id"], reason=reason
        )
        return Response(status_code=202)

    async def resume(self, request: Request) -> Response:
        """Resume a suspended instance."""
        reason = await self._reason(request)
        await call(
            self.client.resume_orchestration, request.path_params["instance_id"], reason=reason
        )
        return Response(status_code=202)

    async def rewind(self, request: Request) -> Response:
        """Rewind a failed instance."""
        reason = await self._reason(request)
        await call(
            self.client.rewind_orchestration, request.path_params["instance_id"], reason=reason
        )
        return Response(status_code=202)

    async def restart(self, request: Request) -> Response:
        """Run a finished instance again; 202 with the check-status payload of the id used."""
        new_id = q.query_bool(request, "restartWithNewInstanceId", False)
        await self._json(request, "request body")  # validated, not used
        started = await call(
            self.client.restart_orchestration,
            request.path_params["instance_id"],
            restart_with_new_instance_id=new_id,
        )
        return create_check_status_response(request, started, base_url=self.base_url)

    async def purge(self, request: Request) -> Response:
        """Delete a finished instance and its history."""
        instance_id = request.path_params["instance_id"]
        result = await call(self.client.purge_orchestration, instance_id)
        if result.deleted_instance_count:
            return JSONResponse({"instancesDeleted": result.deleted_instance_count})
        state = await call(self.client.get_orchestration_state, instance_id, fetch_payloads=False)
        if state is None:
            raise ApiError(404, f"no orchestration instance with id {instance_id!r}")
        if not state.runtime_status.is_terminal:
            raise ApiError(
                410,
                f"cannot purge instance {instance_id!r}: it is {state.runtime_status.value}; "
                f"only finished instances can be purged",
            )
        # It finished between the purge and this check: nothing was deleted; a retry will.
        raise ApiError(409, f"instance {instance_id!r} finished while being purged; retry")

    # -- entities ----------------------------------------------------------------------

    async def signal_entity(self, request: Request) -> Response:
        """Send a one-way operation (``?op=``) to an entity; the body is its input."""
        entity = q.entity_id(request.path_params["name"], request.path_params["key"])
        operation = request.query_params.get("op")
        if not operation:
            raise ApiError(400, "query parameter op (the operation name) is required")
        value = await self._value(request, "operation input")
        await call(self.client.signal_entity, entity, operation, value)
        return Response(status_code=202)

    async def get_entity(self, request: Request) -> Response:
        """An entity's state and metadata; 404 if it does not exist."""
        entity = q.entity_id(request.path_params["name"], request.path_params["key"])
        metadata = await call(self.client.get_entity, entity)
        if metadata is None:
            raise ApiError(404, f"no entity {entity}")
        return JSONResponse(p.entity_json(metadata))

    async def list_entities(self, request: Request) -> Response:
        """One page of entities, by id."""
        page = await call(
            self.client.query_entities,
            name=request.query_params.get("name") or None,
            key_prefix=request.query_params.get("keyPrefix") or None,
            include_state=q.query_bool(request, "includeState", True),
            page_size=q.query_int(request, "top", 100, 1, MAX_PAGE_SIZE),
            continuation_token=q.continuation(request),
        )
        body = [p.entity_json(entity) for entity in page.items]
        return JSONResponse(body, headers=q.page_headers(page.continuation_token))

    # -- operations --------------------------------------------------------------------

    async def partitions(self, request: Request) -> Response:
        """Counters and load of every partition."""
        return JSONResponse(p.to_json(await self.client.partition_stats()))

    async def parked(self, request: Request) -> Response:
        """What the partitions set aside because applying it failed (poison items)."""
        show_payload = q.query_bool(request, "showPayload", False)
        items = await call(
            self.client.get_parked_items, q.query_int(request, "top", 100, 1, MAX_PAGE_SIZE)
        )
        return JSONResponse([p.parked_json(item, show_payload=show_payload) for item in items])

    async def metrics(self, request: Request) -> Response:
        """Prometheus exposition of the partitions' counters and load."""
        text = await asyncio.to_thread(generate_latest, self.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        """Liveness: the server answers (it does not ask the partitions)."""
        return JSONResponse({"status": "ok", "hub": self.hub})


# -- the app ---------------------------------------------------------------------------------


def _dashboard_routes() -> list[BaseRoute]:
    try:
        from duraray.runtime.http.dashboard import dashboard_routes
    except ImportError as exc:
        if getattr(exc, "name", None) != "duraray.runtime.http.dashboard":
            # The module exists but cannot load: serve the API anyway, and say why.
            log.warning("dashboard unavailable", error=repr(exc))
        return []
    return list(dashboard_routes())


def create_app(
    client: Client | AsyncClient,
    *,
    token: str | None = None,
    require_token: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    base_url: str | None = None,
    bind_host: str | None = None,
    allowed_hosts: Iterable[str] = (),
) -> Starlette:
    """The HTTP API (and dashboard, if installed) of the hub ``client`` talks to.

    ``token``: when given, every request but ``/healthz`` and the dashboard's static page
    must send ``Authorization: Bearer <token>``; ``require_token=True`` makes a missing
    token an error here (``serve`` sets it for non-loopback addresses). ``base_url``
    overrides the request's base URL in the management URLs (behind a proxy); its origin
    is accepted as the server's own. ``max_body_bytes``: larger request bodies are refused
    with 413.

    Cross-site requests are refused with 403 (rules: ``auth.py``): a request whose
    ``Origin`` is present and not this server's own origin, always; a request whose
    ``Host`` is not a loopback name, ``bind_host``, the host of ``base_url`` or one of
    ``allowed_hosts`` (names, optionally ``name:port``; ``"*"``: any), only when
    ``bind_host`` (the address the server listens on, which ``build_server`` passes) is a
    loopback address. Without ``bind_host`` (an app mounted elsewhere, or in process)
    ``Host`` is not checked.
    """
    if require_token and not token:
        raise ValueError("require_token=True needs a token (or set DURARAY_HTTP_TOKEN for serve)")
    allowed = normalize_allowed_hosts(allowed_hosts)  # checked now, not at the first request
    api = HttpApi(client, max_body_bytes=max_body_bytes, base_url=base_url)
    middleware = [
        Middleware(CatchAllMiddleware),
        Middleware(
            SameOriginMiddleware,
            check_host=bind_host is not None and is_loopback(bind_host),
            allowed_hosts=allowed,
            bind_host=bind_host,
            base_url=base_url,
        ),
    ]
    if token:
        middleware.append(Middleware(BearerTokenMiddleware, token=token))
    app = Starlette(
        routes=[*api.routes(), *_dashboard_routes()],
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.api = api
    return app
