"""The HTTP management API of a hub (Starlette on uvicorn) and its Prometheus metrics.

- ``create_app(client, *, token=None, require_token=False, max_body_bytes=1 MiB,
  base_url=None)``: the Starlette app (routes and JSON shapes: ``api.py``);
- ``serve(client, *, host="127.0.0.1", port=8000, token=None)``: run it on uvicorn; a
  non-loopback host needs a token (argument or ``$DURARAY_HTTP_TOKEN``);
- ``wait_for_completion_or_create_check_status_response`` and
  ``create_check_status_response``: Durable Functions' helpers for user HTTP handlers.
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
