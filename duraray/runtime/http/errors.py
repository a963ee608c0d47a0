"""How the HTTP API answers an exception that reaches Starlette: the exception handlers
(``ApiError``, ``HTTPException``, ``StorageFullError``, ``PartitionFailureError``,
anything else) and
``CatchAllMiddleware``, which answers a bug with a 500 JSON body and keeps serving.

Client errors become ``ApiError`` earlier, in ``parsing.call``; ``create_app`` (``api.py``)
installs what is here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from duraray._errors import PartitionFailureError, StorageFullError
from duraray.runtime.http import parsing as q
from duraray.runtime.http.parsing import ApiError

__all__ = ["EXCEPTION_HANDLERS", "CatchAllMiddleware"]

log = structlog.get_logger("duraray.http")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return q.error_response(exc.status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _storage_full(request: Request, exc: Exception) -> Response:
    # 507 Insufficient Storage: the write was not applied; retry once space is freed.
    return q.error_response(507, str(exc))


async def _partition_failure(request: Request, exc: Exception) -> Response:
    # A defect met inside a partition, not a bad request: 500, though with the engine's own
    # words (which operation failed, and that nothing of it was stored) rather than the
    # bare "internal error" of a bug here. The partition and this server go on. Clipped:
    # the words end with the failing exception's own text, which may be any length.
    text = str(exc)
    if len(text) > 1000:
        text = text[:1000] + "..."
    return q.error_response(
        500,
        f"partition failure: {text} (the partition goes on serving; GET /api/parked "
        "lists what it set aside)",
    )


def _internal_error(exc: BaseException) -> JSONResponse:
    text = str(exc)
    if len(text) > 500:
        text = text[:500] + "..."
    return q.error_response(500, f"internal error: {type(exc).__name__}: {text}")


async def _server_error(request: Request, exc: Exception) -> Response:
    # Only reached if CatchAllMiddleware itself fails: Starlette answers this, then re-raises
    # for uvicorn to log (which closes the connection).
    log.error("unhandled error in HTTP API", path=request.url.path, error=repr(exc)[:1000])
    return _internal_error(exc)


class CatchAllMiddleware:
    """An exception a route or middleware lets escape: a 500 JSON answer, logged here.

    A bug, not a bad request: the answer is ``{"error": "internal error: <type>: <text>"}``,
    the log line carries the traceback, and the exception goes no further (Starlette's own
    handler would re-raise it and uvicorn would then drop the connection), so the server
    and the client's connection go on. After the response has started nothing can be
    answered any more: the exception is re-raised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error(
                "unhandled error in HTTP API",
                method=scope.get("method"),
                path=scope.get("path"),
                error=repr(exc)[:1000],
                exc_info=exc,
            )
            if started:
                raise
            await _internal_error(exc)(scope, receive, send)


#: Starlette's ``exception_handlers``: ``Exception`` goes to its outermost middleware.
EXCEPTION_HANDLERS: Mapping[Any, ExceptionHandler] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    StorageFullError: _storage_full,
    PartitionFailureError: _partition_failure,
    Exception: _server_error,
}
