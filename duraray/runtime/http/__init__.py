"""The HTTP management API of a hub (Starlette on uvicorn) and its Prometheus metrics.

- ``create_app(client, *, token=None, require_token=False, max_body_bytes=1 MiB,
  base_url=None, bind_host=None, allowed_hosts=())``: the Starlette app (routes and JSON
  shapes: ``api.py``);
- ``serve(client, *, host="127.0.0.1", port=8000, token=None, allowed_hosts=())``: run it
  on uvicorn; a non-loopback host needs a token (argument or ``$DURARAY_HTTP_TOKEN``);
- ``wait_for_completion_or_create_check_status_response`` and
  ``create_check_status_response``: Durable Functions' helpers for user HTTP handlers.

Request rules (``auth.py``, ``parsing.py``):

- cross-site requests are refused with 403 (JSON body): a request whose ``Origin`` header
  is present and is not the server's own origin (scheme and ``Host`` as addressed, or the
  origin of ``base_url``; ``Origin: null`` is foreign), always; on a loopback bind
  (``serve``/``build_server`` pass ``bind_host=host``) also a request whose ``Host`` is not
  a loopback name (``localhost``, ``127.x.x.x``, ``[::1]``), the bound address, the host of
  ``base_url`` or one of ``allowed_hosts`` (``duraray serve --allowed-host``; ``name`` or
  ``name:port``, ``"*"`` for any), against DNS rebinding. ``create_app`` without
  ``bind_host`` (in process, mounted in another app) checks ``Origin`` only. Requests
  without ``Origin`` (curl, scripts) and the dashboard (same origin) pass;
- a request body must be declared JSON (``application/json``, UTF-8 or no charset, or
  ``application/*+json``), else 415; a POST without a body needs no ``Content-Type``; a
  declared-JSON body that does not parse (or is nested too deeply) is 400;
- ``Authorization: Bearer <token>`` with the scheme in any casing;
- malformed query parameters (dates, ``top``, ``runtimeStatus``, flags) and continuation
  tokens the server did not issue are 400; an unexpected error is a 500 JSON answer, and
  the server keeps serving.
"""

from duraray.runtime.http.api import (
    CONTINUATION_HEADER,
    DEFAULT_MAX_BODY_BYTES,
    check_status_payload,
    create_app,
    create_check_status_response,
    wait_for_completion_or_create_check_status_response,
)
from duraray.runtime.http.auth import TOKEN_ENV
from duraray.runtime.http.server import build_server, serve

__all__ = [
    "CONTINUATION_HEADER",
    "DEFAULT_MAX_BODY_BYTES",
    "TOKEN_ENV",
    "build_server",
    "check_status_payload",
    "create_app",
    "create_check_status_response",
    "serve",
    "wait_for_completion_or_create_check_status_response",
]
