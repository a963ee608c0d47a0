"""A hub reached through its HTTP API (``duraray --url``): ``HttpHubClient``, the part of
``Client`` the commands call, over the routes of ``duraray/runtime/http/api.py``.

Standard library only (``urllib.request``, ``json``): a command over HTTP imports neither
Ray nor the server's Starlette, so it answers in a fraction of a second. Each method sends
the request ``api.py`` documents, builds the client's own records (``OrchestrationState``,
``Page``, ``EntityMetadata``, ``PurgeResult``, ``ParkedItem``, history events) from the
JSON answer, and raises what ``Client`` raises, so the commands' error handling and exit
codes hold: 400 and 413 ``ValueError``, 404 ``InstanceNotFoundError`` (None where the
client returns None), 409 ``InstanceAlreadyExistsError``, 410 ``InstanceStateError``
(but terminating a finished instance does nothing, as in the client), 507
``StorageFullError``; a server that does not answer is a ``ConnectionError`` (exit 5), and
401 (no or a wrong ``--token``), 403 and an answer that is not the API's are reported as
such (exit 5). The records are built from the JSON in ``_http_json``.

Payloads come back as JSON values (bytes as base64, datetimes as ISO text, tuples as
lists), which is also how the commands print them.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from duraray._errors import (
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    StorageFullError,
)
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.orchestrations.history import OrchestrationStatus
from duraray.runtime.cli import _http_json as j
from duraray.runtime.cli._common import CliError
from duraray.runtime.cli._format import EXIT_FAILED, EXIT_UNREACHABLE
from duraray.runtime.client.results import EntityMetadata, OrchestrationState, Page, PurgeResult
from duraray.runtime.engine.records import ParkedItem

__all__ = ["HttpHubClient"]

#: The response and request header that carries a list's next-page token.
CONTINUATION_HEADER = "x-ms-continuation-token"

#: The most items the API returns per list request (``top``).
MAX_PAGE = 1000

#: Waiting for an instance polls its status this often at first, then less (seconds).
_POLL_FIRST, _POLL_MAX = 0.05, 1.0

#: The earliest creation time a filter may name (the client's own lower bound): a bulk
#: purge over HTTP must give ``createdTimeFrom``.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_NO_BODY: Any = object()


class HttpHubClient:
    """The hub whose HTTP API answers at ``url``, as the subset of ``Client`` the
    commands use (same signatures, same return types, same exceptions).

    ``token`` is sent as ``Authorization: Bearer``. ``timeout``: seconds to connect and
    for each answer (a bulk purge, which may run long, waits as long as it takes).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(
                f"--url {url!r} must be the http:// or https:// address of a hub's HTTP "
                "API, e.g. http://127.0.0.1:8000"
            )
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.url = base.rstrip("/")
        self._token = token or None
        self._timeout = timeout
        # No redirects: urllib would send the Authorization header on to another host.
        self._opener = urllib.request.build_opener(_NoRedirects())

    # -- orchestrations --------------------------------------------------------------------

    def schedule_new_orchestration(
        self, orchestrator: str, *, input: Any = None, instance_id: str | None = None
    ) -> str:
        """Start an instance of the orchestration named ``orchestrator``; its id."""
        query = {} if instance_id is None else {"instance_id": instance_id}
        path = f"/api/orchestrations/{_segment(orchestrator, 'orchestration name')}"
        body = self._call("POST", path, query=query, body=input)
        return str(_field(body, "id"))

    def get_orchestration_state(
        self, instance_id: str, *, fetch_payloads: bool = True
    ) -> OrchestrationState | None:
        """The instance's current state, or None if there is no such instance."""
        query = {"showInput": _flag(fetch_payloads)}
        try:
            body = self._call("GET", _instance(instance_id), query=query)
        except InstanceNotFoundError:
            return None
        return _parse(j.orchestration_state, body)

    def get_orchestration_history(self, instance_id: str) -> list[h.HistoryEvent]:
        """The current execution's history events; unknown id: InstanceNotFoundError."""
        query = {"showHistory": "true", "showInput": "false"}
        body = self._call("GET", _instance(instance_id), query=query)
        return _parse(lambda b: [j.history_event(e) for e in b["historyEvents"]], body)

    def wait_for_orchestration_completion(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """Wait until the instance is COMPLETED, FAILED or TERMINATED (the API has no wait:
        its status is polled, every 50 ms at first, then up to every second);
        ``TimeoutError`` after ``timeout`` s, InstanceNotFoundError for an unknown id."""
        deadline = time.monotonic() + timeout
        interval = _POLL_FIRST
        while True:
            state = self.get_orchestration_state(instance_id, fetch_payloads=False)
            if state is None:
                raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
            if state.runtime_status.is_terminal:
                final = self.get_orchestration_state(instance_id)
                return state if final is None else final
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"instance {instance_id!r} did not complete within {timeout} s")
            time.sleep(min(interval, left))
            interval = min(interval * 2, _POLL_MAX)

    def raise_orchestration_event(
        self, instance_id: str, event_name: str, *, data: Any = None
    ) -> None:
        """Deliver an external event; unknown id: InstanceNotFoundError, finished:
        InstanceStateError."""
        path = f"{_instance(instance_id)}/raiseEvent/{_segment(event_name, 'event name')}"
        self._call("POST", path, body=data)

    def terminate_orchestration(
        self, instance_id: str, *, output: Any = None, recursive: bool = True
    ) -> None:
        """Terminate a running instance; one that already finished is left as it is."""
        query = {} if recursive else {"recursive": "false"}
        body = _NO_BODY if output is None else output
        try:
            self._call("POST", f"{_instance(instance_id)}/terminate", query=query, body=body)
        except InstanceStateError:
            pass  # the API's 410 for a finished instance, which the Python client ignores

    def suspend_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Suspend a running instance."""
        self._lifecycle(instance_id, "suspend", reason)

    def resume_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Resume a suspended instance."""
        self._lifecycle(instance_id, "resume", reason)

    def rewind_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Rewind a FAILED instance."""
        self._lifecycle(instance_id, "rewind", reason)

    def _lifecycle(self, instance_id: str, verb: str, reason: str | None) -> None:
        # A JSON string body rather than ?reason=: a reason may be up to 64 KiB.
        body = _NO_BODY if reason is None else reason
        self._call("POST", f"{_instance(instance_id)}/{verb}", body=body)

    def restart_orchestration(
        self, instance_id: str, *, restart_with_new_instance_id: bool = False
    ) -> str:
        """Run a finished instance again with its original input; the id used."""
        query = {"restartWithNewInstanceId": _flag(restart_with_new_instance_id)}
        body = self._call("POST", f"{_instance(instance_id)}/restart", query=query)
        return str(_field(body, "id"))

    def purge_orchestration(self, instance_id: str) -> PurgeResult:
        """Delete a finished instance and its sub-orchestrations; as the Python client,
        0 deleted for an unknown or running instance."""
        for _ in range(3):  # 409: it finished while being purged, and a retry deletes it
            try:
                body = self._call("DELETE", _instance(instance_id))
            except (InstanceNotFoundError, InstanceStateError):
                return PurgeResult(0)
            except InstanceAlreadyExistsError:
                continue
            return PurgeResult(int(_field(body, "instancesDeleted")))
        return PurgeResult(0)

    def purge_orchestrations_by(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Any = None,
    ) -> PurgeResult:
        """Delete finished instances created in the range, optionally only some statuses."""
        query = _filters(
            runtime_status=runtime_status,
            created_time_from=created_time_from or _EPOCH,
            created_time_to=created_time_to,
        )
        try:
            body = self._call("DELETE", "/api/instances", query=query, unbounded=True)
        except InstanceNotFoundError:  # the API's "no finished instance matched"
            return PurgeResult(0)
        return PurgeResult(int(_field(body, "instancesDeleted")))

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
        """One page of instances matching the filters (a page over 1,000, the API's
        most, is read in several requests)."""
        query = _filters(
            runtime_status=runtime_status,
            created_time_from=created_time_from,
            created_time_to=created_time_to,
            instance_id_prefix=instance_id_prefix,
            name=name,
            tags=tags,
        )
        query.update(showInput=_flag(fetch_payloads), newestFirst=_flag(newest_first))
        return self._pages("/api/instances", query, page_size, continuation_token, j.states)

    def get_all_instances(self, **filters: Any) -> list[OrchestrationState]:
        """Every instance matching ``query_instances`` filters, following all pages."""
        return _all_pages(self.query_instances, filters)

    # -- entities ------------------------------------------------------------------------

    def signal_entity(self, entity_id: Any, operation: str, input: Any = None) -> None:
        """Send a one-way operation to an entity."""
        query = {"op": operation}
        self._call("POST", _entity(entity_id), query=query, body=input)

    def get_entity(self, entity_id: Any, *, include_state: bool = True) -> EntityMetadata | None:
        """The entity's metadata and state, or None if it does not exist."""
        try:
            body = self._call("GET", _entity(entity_id))
        except InstanceNotFoundError:
            return None
        meta = _parse(j.entity_metadata, body)
        return meta if include_state else dataclasses.replace(meta, state=None)

    def query_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str | None = None,
        include_state: bool = True,
        page_size: int = 100,
        continuation_token: str | None = None,
    ) -> Page[EntityMetadata]:
        """One page of entities, by id."""
        query = {"includeState": _flag(include_state)}
        if name:
            query["name"] = name
        if key_prefix:
            query["keyPrefix"] = key_prefix
        return self._pages("/api/entities", query, page_size, continuation_token, j.entities)

    def get_all_entities(self, **filters: Any) -> list[EntityMetadata]:
        """Every entity matching ``query_entities`` filters, following all pages."""
        return _all_pages(self.query_entities, filters)

    # -- operations --------------------------------------------------------------------

    def get_parked_items(self, limit: int = 100) -> list[ParkedItem]:
        """What the partitions set aside, at most ``limit`` (1 to 1,000 over HTTP)."""
        body = self._call("GET", "/api/parked", query={"top": str(limit)})
        return _parse(lambda b: [j.parked_item(item) for item in b], body)

    # -- plumbing ------------------------------------------------------------------------

    def _pages(
        self,
        path: str,
        query: dict[str, Any],
        page_size: int,
        token: str | None,
        parse: Callable[[Any], list[Any]],
    ) -> Page[Any]:
        if not 1 <= page_size <= 10_000:
            raise ValueError(f"page_size must be 1 to 10000, got {page_size}")
        items: list[Any] = []
        while True:
            top = min(page_size - len(items), MAX_PAGE)
            headers = {} if token is None else {CONTINUATION_HEADER: token}
            page_query = {**query, "top": str(top)}
            body, answer = self._send("GET", path, page_query, _NO_BODY, headers, self._timeout)
            items.extend(_parse(parse, body))
            token = answer.get(CONTINUATION_HEADER) or None
            if token is None or len(items) >= page_size:
                return Page(items, token)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = _NO_BODY,
        unbounded: bool = False,
    ) -> Any:
        timeout = None if unbounded else self._timeout
        return self._send(method, path, query or {}, body, {}, timeout)[0]

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any],
        body: Any,
        headers: dict[str, str],
        timeout: float | None,
    ) -> tuple[Any, Mapping[str, str]]:
        """One request; (the decoded JSON answer or None, the response headers, by lower-case
        name). ``timeout``: seconds to connect and for each read (None: no limit)."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True, quote_via=urllib.parse.quote)
        headers = {"Accept": "application/json", **headers}
        data = None
        if body is not _NO_BODY:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            data = b""
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=timeout) as response:
                raw = response.read()
                answer = {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._error(exc.code, exc.read(), method, path) from None
        except TimeoutError:
            within = "" if timeout is None else f" within {timeout:g} s"
            raise ConnectionError(f"no answer from {self.url}{within}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionError(f"cannot reach the HTTP API at {self.url}: {reason}") from None
        if not raw:
            return None, answer
        try:
            return json.loads(raw), answer
        except ValueError:
            raise self._not_the_api(f"{method} {path} answered something other than JSON")

    def _error(self, status: int, raw: bytes, method: str, path: str) -> Exception:
        """The exception ``Client`` raises for what the API answered with ``status``."""
        try:
            message = json.loads(raw)["error"]
            if not isinstance(message, str):
                raise TypeError(message)
        except (ValueError, TypeError, KeyError):
            return self._not_the_api(f"{method} {path} answered {status} without an API error")
        if status in (401, 403):
            fix = (
                "pass the server's bearer token with --token (or $DURARAY_TOKEN)"
                if status == 401
                else "the server refuses requests addressed to this host name: use the "
                "address it listens on, or start it with --allowed-host"
            )
            return CliError(
                f"the HTTP API at {self.url} refused access: {message}; {fix}", EXIT_UNREACHABLE
            )
        if message in ("Not Found", "Method Not Allowed"):  # no such route: not the API
            return self._not_the_api(f"{method} {path} answered {status} {message}")
        if status in (400, 413, 415):
            return ValueError(message)
        if status == 404:
            return InstanceNotFoundError(message)
        if status == 409:
            return InstanceAlreadyExistsError(message)
        if status == 410:
            return InstanceStateError(message)
        if status == 507:
            return StorageFullError(message)
        if status in (502, 503, 504):
            return ConnectionError(f"{self.url} answered {status}: {message}")
        return CliError(f"the HTTP API at {self.url} answered {status}: {message}", EXIT_FAILED)

    def _not_the_api(self, detail: str) -> CliError:
        return CliError(
            f"{self.url} does not answer as a duraray HTTP API ({detail}): check --url",
            EXIT_UNREACHABLE,
        )


# -- requests ------------------------------------------------------------------------------


def _segment(text: str, what: str) -> str:
    """``text`` percent-encoded as one path segment; "/" cannot be routed there."""
    if "/" in text:
        raise ValueError(
            f"{what} {text!r} contains '/', which the HTTP API cannot address: use --hub"
        )
    return urllib.parse.quote(text, safe="")


def _instance(instance_id: str) -> str:
    # The instance routes take the id as a path, so "/" in an id travels as %2F.
    return f"/api/instances/{urllib.parse.quote(instance_id, safe='')}"


def _entity(entity_id: Any) -> str:
    entity = entity_id if isinstance(entity_id, EntityId) else EntityId.parse(str(entity_id))
    name = _segment(entity.name, "entity name")
    return f"/api/entities/{name}/{_segment(entity.key, 'entity key')}"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _filters(
    *,
    runtime_status: Any = None,
    created_time_from: datetime | None = None,
    created_time_to: datetime | None = None,
    instance_id_prefix: str | None = None,
    name: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The query parameters of the instance filters ``Client.query_instances`` takes."""
    query: dict[str, Any] = {}
    if runtime_status is not None:
        statuses = (
            [runtime_status]
            if isinstance(runtime_status, str | OrchestrationStatus)
            else list(runtime_status)
        )
        names = [s.value if isinstance(s, OrchestrationStatus) else str(s) for s in statuses]
        if names:
            query["runtimeStatus"] = ",".join(names)
    for key, value in (("createdTimeFrom", created_time_from), ("createdTimeTo", created_time_to)):
        if value is not None:
            query[key] = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if instance_id_prefix:
        query["instanceIdPrefix"] = instance_id_prefix
    if name:
        query["name"] = name
    if tags:
        query["tag"] = [f"{key}:{value}" for key, value in tags.items()]
    return query


def _all_pages(query: Any, filters: dict[str, Any]) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        page = query(**filters, page_size=MAX_PAGE, continuation_token=token)
        items.extend(page.items)
        token = page.continuation_token
        if token is None:
            return items


# -- answers -------------------------------------------------------------------------------


def _parse(build: Any, body: Any) -> Any:
    """``build(body)``, or the error of an answer in a shape the API never gives."""
    try:
        return build(body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CliError(
            f"the HTTP API answered in an unexpected shape ({type(exc).__name__}: {exc}): "
            "is --url a duraray hub of this version?",
            EXIT_UNREACHABLE,
        ) from None


def _field(body: Any, name: str) -> Any:
    return _parse(lambda b: b[name], body)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Answer a redirect as the error it is here: the API never redirects, and following
    one would carry the bearer token to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
