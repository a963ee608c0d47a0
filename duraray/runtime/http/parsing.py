"""Request parsing and error mapping of the HTTP API: bodies, query parameters, client errors.

Everything a route needs to turn a request into client arguments, and a client error into
a status code, as small functions that raise ``ApiError`` (answered as
``{"error": message}``); the routes themselves live in ``api.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse

from duraray._errors import (
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    SerializationError,
)
from duraray.entities.ids import EntityId
from duraray.orchestrations.history import OrchestrationStatus
from duraray.runtime.http import payloads as p

CONTINUATION_HEADER = "x-ms-continuation-token"

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    """The JSON error body every route uses."""
    return JSONResponse({"error": message, **extra}, status_code=status)


async def call(method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Run a client coroutine, turning its errors into HTTP errors."""
    try:
        return await method(*args, **kwargs)
    except InstanceNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    except InstanceStateError as exc:
        raise ApiError(410, str(exc)) from None
    except InstanceAlreadyExistsError as exc:
        raise ApiError(409, str(exc)) from None
    except SerializationError as exc:
        raise ApiError(400, str(exc)) from None
    except (ValueError, TypeError) as exc:  # the client's argument checks (ids, tokens)
        raise ApiError(400, str(exc)) from None


# -- bodies ----------------------------------------------------------------------------------


class _NoBody:
    """The body was empty (as opposed to a JSON ``null``)."""

    def __repr__(self) -> str:
        return "NO_BODY"


NO_BODY: Any = _NoBody()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 past ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length {declared!r}") from None
        if size > limit:
            raise ApiError(413, f"request body of {size} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():  # chunked bodies declare no length
        received += len(chunk)
        if received > limit:
            raise ApiError(413, f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON, but no float holds it
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, in UTF-8 if a charset is given."""
    if content_type is None:
        return False
    media, *params = content_type.split(";")
    kind, slash, subtype = media.strip().lower().partition("/")
    if kind != "application" or not slash or not (subtype == "json" or subtype.endswith("+json")):
        return False
    for param in params:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False  # JSON is UTF-8 (RFC 8259)
    return True


async def read_json(request: Request, limit: int, what: str) -> Any:
    """The body as JSON (NaN, Infinity and numbers past float range refused), or ``NO_BODY``.

    A body (any byte) must be declared JSON (``is_json_media_type``): 415 otherwise; an
    empty body needs no ``Content-Type``. A declared-JSON body that does not parse is 400.
    """
    body = await read_body(request, limit)
    if not body:
        return NO_BODY
    content_type = request.headers.get("content-type")
    if not is_json_media_type(content_type):
        shown = (
            "no Content-Type" if content_type is None else f"Content-Type {content_type[:100]!r}"
        )
        raise ApiError(
            415,
            f"{what} must be JSON: send 'Content-Type: application/json' (got {shown})",
        )
    if not body.strip():
        return NO_BODY
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits alike
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"{what} is nested too deeply") from None


#: At most this many events in one ``raiseEvents`` request (413 beyond).
MAX_BULK_EVENTS = 10_000
_EVENT_KEYS = ("instanceId", "name", "data")
_EVENT_SHAPE = '{"instanceId": "...", "name": "...", "data": ...}'


def bulk_events(body: Any) -> list[tuple[str, str, Any]]:
    """The ``(instance_id, name, data)`` events of a ``raiseEvents`` body, a JSON list of
    objects ``{"instanceId", "name", "data"?}``; 400 naming the first malformed item."""
    if body is NO_BODY or not isinstance(body, list):
        raise ApiError(400, f"the body must be a JSON list of events {_EVENT_SHAPE}")
    if len(body) > MAX_BULK_EVENTS:
        raise ApiError(413, f"{len(body)} events in one request; the limit is {MAX_BULK_EVENTS}")
    events = []
    for index, item in enumerate(body):
        if not isinstance(item, dict):
            raise ApiError(400, f"events[{index}] must be an object {_EVENT_SHAPE}")
        unknown = sorted(set(item) - set(_EVENT_KEYS))
        if unknown:
            shown = ", ".join(repr(key[:100]) for key in unknown[:5])
            raise ApiError(
                400, f"events[{index}] has unknown keys {shown}; expected {_EVENT_SHAPE}"
            )
        for key in _EVENT_KEYS[:2]:
            if not isinstance(item.get(key), str):
                raise ApiError(400, f"events[{index}].{key} must be a string")
        events.append((item["instanceId"], item["name"], item.get("data")))
    return events


async def read_reason(request: Request, limit: int) -> str | None:
    """``?reason=``, else an optional JSON string body; any other body is a 400."""
    body = await read_json(request, limit, "request body")
    reason = request.query_params.get("reason")
    if body is NO_BODY or body is None:
        return reason
    if not isinstance(body, str):
        raise ApiError(400, "the request body, if any, must be a JSON string (the reason)")
    return reason if reason is not None else body


# -- query parameters and path parts -------------------------------------------------------------


def query_bool(request: Request, name: str, default: bool) -> bool:
    """A true/false query parameter (also 1/0, yes/no, on/off)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ApiError(400, f"query parameter {name}={raw!r} must be true or false")


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name}={raw!r} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name}={value} must be between {low} and {high}")
    return value


def query_time(request: Request, name: str) -> datetime | None:
    """An ISO 8601 date-time query parameter, in UTC; without an offset it is UTC."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(
            400, f"query parameter {name}={raw!r} must be an ISO 8601 date-time"
        ) from None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise ApiError(400, f"query parameter {name}={raw!r} is out of range") from None


def query_statuses(request: Request) -> list[OrchestrationStatus] | None:
    """``runtimeStatus``: comma-separated and/or repeated, in any casing; None if absent."""
    names = [
        part
        for raw in request.query_params.getlist("runtimeStatus")
        for part in raw.split(",")
        if part.strip()
    ]
    if not names:
        return None
    try:
        return [p.parse_status(name) for name in names]
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


_INSTANCES = "/api/instances/"
#: (method, path after the id) -> the instance route's action.
_ACTIONS = {
    ("GET", ()): "status",
    ("DELETE", ()): "purge",
    ("POST", ("terminate",)): "terminate",
    ("POST", ("suspend",)): "suspend",
    ("POST", ("resume",)): "resume",
    ("POST", ("rewind",)): "rewind",
    ("POST", ("restart",)): "restart",
}


def instance_action(request: Request) -> tuple[str, dict[str, str]]:
    """The action of ``/api/instances/{id}[/action]`` and its path parameters, read from
    the raw (still percent-encoded) path: the id is exactly one segment (a "/" in it is
    sent as %2F), so no id can be read as an action nor an action as part of an id.
    404 for an unknown path, 405 for a known path with another method."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    segments = raw.decode("latin-1").removeprefix(_INSTANCES).split("/")
    params = {"instance_id": unquote(segments[0])}
    rest = tuple(segments[1:])
    if len(rest) == 2 and rest[0] == "raiseEvent":
        if request.method != "POST":
            raise ApiError(405, f"{request.method} is not allowed on {request.url.path}")
        params["event"] = unquote(rest[1])
        return "raiseEvent", params
    action = _ACTIONS.get((request.method, rest))
    if action is not None:
        return action, params
    if any(path == rest for _, path in _ACTIONS):
        raise ApiError(405, f"{request.method} is not allowed on {request.url.path}")
    raise ApiError(404, f"no route {request.method} {request.url.path}")


def instance_filters(request: Request) -> dict[str, Any]:
    """The instance filters of a list or count request, as ``Client.query_instances``
    takes them: ``runtimeStatus``, ``createdTimeFrom``/``To``, ``instanceIdPrefix``,
    ``name`` and ``tag=key:value`` (repeated; an instance must carry every one)."""
    tags: dict[str, str] = {}
    for raw in request.query_params.getlist("tag"):
        key, sep, value = raw.partition(":")
        if not sep or not key:
            raise ApiError(400, f"query parameter tag={raw!r} must be key:value")
        tags[key] = value
    return {
        "runtime_status": query_statuses(request),
        "created_time_from": query_time(request, "createdTimeFrom"),
        "created_time_to": query_time(request, "createdTimeTo"),
        "instance_id_prefix": request.query_params.get("instanceIdPrefix") or None,
        "name": request.query_params.get("name") or None,
        "tags": tags or None,
    }


def continuation(request: Request) -> str | None:
    """The continuation token the request carries, if any."""
    return request.headers.get(CONTINUATION_HEADER) or None


def page_headers(token: str | None) -> dict[str, str]:
    """The response header that hands out the next page's token (none on the last page)."""
    return {CONTINUATION_HEADER: token} if token else {}


def entity_id(name: str, key: str) -> EntityId:
    """The entity addressed by ``/api/entities/{name}/{key}``; 400 if invalid."""
    try:
        return EntityId(name, key)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, str(exc)) from None
