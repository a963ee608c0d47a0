"""Bearer-token authentication of the HTTP API, and the rule for when a token is required.

A token is required whenever the server listens on anything but a loopback address
(``require_token_for``); once configured it is checked on every request except the
public paths (``/healthz`` and the dashboard's static shell, which carries no data: the
dashboard's own requests to the JSON API carry the token). Tokens are compared in
constant time. The token comes from the caller or from ``$DURARAY_HTTP_TOKEN``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

#: Environment variable holding the API's bearer token.
TOKEN_ENV = "DURARAY_HTTP_TOKEN"

#: Paths served without a token: the health probe and the dashboard's page and assets.
PUBLIC_PATHS = frozenset({"/healthz", "/"})
PUBLIC_PREFIXES = ("/static/",)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other host name may resolve to a public interface


def resolve_token(token: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """``token`` if given, else ``$DURARAY_HTTP_TOKEN``; empty counts as none."""
    if token:
        return token
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV) or None


class BearerTokenMiddleware:
    """Refuses requests without ``Authorization: Bearer <token>`` with 401 (JSON body)."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        if not token:
            raise ValueError("a bearer token must not be empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_public(scope):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        reason = "missing bearer token" if not given else "invalid bearer token"
        body = json.dumps({"error": f"{reason}: send 'Authorization: Bearer <token>'"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="duraray"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _is_public(scope: Scope) -> bool:
    if scope["method"] not in ("GET", "HEAD"):
        return False
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):  # mounted under a prefix: match the app's own paths
        path = path[len(root) :] or "/"
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
