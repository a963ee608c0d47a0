"""Who may call the HTTP API: the bearer token, and the refusal of cross-site requests.

A token is required whenever the server listens on anything but a loopback address
(``serve`` enforces it); once configured it is checked on every request except the
public paths (``/healthz`` and the dashboard's static shell, which carries no data: the
dashboard's own requests to the JSON API carry the token). The scheme is matched in any
casing (``Bearer``, ``bearer``, RFC 7235); tokens are compared in constant time. The
token comes from the caller or from ``$DURARAY_HTTP_TOKEN``.

Cross-site requests are refused with 403 (``SameOriginMiddleware``), token or not, on
every path:

- a request whose ``Origin`` header is present and is not the server's own origin (the
  scheme of the connection and the ``Host`` the request addressed, or the origin of
  ``base_url``) is refused; ``Origin: null`` counts as foreign. Browsers send ``Origin`` on
  every cross-origin request and on every POST/DELETE, so a page of another site cannot
  start, terminate or purge anything; curl and scripts send none and are not affected, and
  the dashboard (same origin) is not either;
- when the server is bound to a loopback address, a request whose ``Host`` is not a
  loopback name (``localhost``, ``127.x.x.x``, ``[::1]``), the bound address, the host of
  ``base_url`` or one of ``allowed_hosts`` is refused: this defeats DNS rebinding (a page of
  ``evil.example`` whose name is re-pointed at 127.0.0.1 is same-origin with itself, but
  its requests say ``Host: evil.example``). ``"*"`` in ``allowed_hosts`` turns this check
  off. A request without ``Host`` (HTTP/1.0) is let through. Off loopback the bearer token
  is what keeps other machines' pages out, and ``Host`` is not checked.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

#: Environment variable holding the API's bearer token.
TOKEN_ENV = "DURARAY_HTTP_TOKEN"

#: Paths served without a token: the health probe and the dashboard's page and assets.
PUBLIC_PATHS = frozenset({"/healthz", "/"})
PUBLIC_PREFIXES = ("/static/",)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


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


async def _refuse(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class BearerTokenMiddleware:
    """Refuses requests without ``Authorization: Bearer <token>`` with 401 (JSON body)."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        if not token:
            raise ValueError("a bearer token must not be empty")
        self.app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_public(scope):
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"authorization") or b""
        # credentials = auth-scheme 1*SP token68; the scheme is case-insensitive (RFC 7235).
        scheme, _, credentials = given.strip().partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.strip(b" "), self._expected
        ):
            await self.app(scope, receive, send)
            return
        reason = "missing bearer token" if not given else "invalid bearer token"
        await _refuse(
            send,
            401,
            f"{reason}: send 'Authorization: Bearer <token>'",
            [(b"www-authenticate", b'Bearer realm="duraray"')],
        )


def _is_public(scope: Scope) -> bool:
    if scope["method"] not in ("GET", "HEAD"):
        return False
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):  # mounted under a prefix: match the app's own paths
        path = path[len(root) :] or "/"
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


# -- cross-site requests ------------------------------------------------------------------


def split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (a ``Host`` header or an allowed name) -> (lowercased name, port).

    IPv6 addresses come back without brackets; a bare IPv6 address (no brackets) has no
    port. Raises ValueError when the text is not a host.
    """
    text = value.strip().lower()
    if not text or any(c.isspace() or c in "/?#@\\" for c in text):
        raise ValueError(f"not a host: {value!r}")
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host: {value!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address
        name, port_text = text, None
    else:
        name, colon, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if colon else None
    if not name:
        raise ValueError(f"not a host: {value!r}")
    if not port_text:  # "host" or "host:" (an empty port is allowed, RFC 3986)
        return name, None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"not a host: {value!r}")
    return name, int(port_text)


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an ``Origin`` header or a base URL; None if not one."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


class SameOriginMiddleware:
    """Refuses cross-site requests with 403 (JSON body); the rules are the module's.

    ``check_host``: also refuse a ``Host`` that is not a loopback name, ``bind_host``, the
    host of ``base_url`` or one of ``allowed_hosts`` (set for a loopback bind).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        check_host: bool,
        allowed_hosts: Iterable[str] = (),
        bind_host: str | None = None,
        base_url: str | None = None,
    ) -> None:
        self.app = app
        self.check_host = check_host
        self._any_host = False
        self._hosts: set[tuple[str, int | None]] = set()
        for entry in normalize_allowed_hosts(allowed_hosts):
            if entry == "*":
                self._any_host = True
            else:
                self._hosts.add(split_host(entry))
        if bind_host:
            try:
                self._hosts.add((split_host(bind_host)[0], None))
            except ValueError:
                pass  # not a name a Host header could carry
        # A base URL (behind a proxy) names the origin the browser sees, and its host.
        self._base_origin = _origin_of(base_url) if base_url else None
        if self._base_origin is not None:
            self._hosts.add((self._base_origin[1], None))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await _refuse(send, *refusal, [])

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the request must be refused, else None."""
        origin = _header(scope, b"origin")
        if not self.check_host and origin is None:
            return None
        raw_host = _header(scope, b"host")
        host: tuple[str, int | None] | None = None
        if raw_host is not None:
            shown = raw_host.decode("latin-1")
            try:
                host = split_host(shown)
            except ValueError:
                return 400, f"malformed Host header {shown!r}"
            if self.check_host and not self._host_allowed(host):
                return 403, (
                    f"Host {shown!r} refused: this server listens on a loopback address "
                    f"and answers only to loopback names (localhost, 127.0.0.1, [::1]); "
                    f"allow other names with allowed_hosts (duraray serve --allowed-host)"
                )
        if origin is not None and not self._origin_allowed(origin, scope, host):
            return 403, (
                f"cross-origin request refused: Origin {origin.decode('latin-1')!r} is not "
                f"this server's origin"
            )
        return None

    def _host_allowed(self, host: tuple[str, int | None]) -> bool:
        name, port = host
        return (
            self._any_host
            or is_loopback(name)
            or (name, None) in self._hosts
            or (name, port) in self._hosts
        )

    def _origin_allowed(
        self, origin: bytes, scope: Scope, host: tuple[str, int | None] | None
    ) -> bool:
        given = _origin_of(origin.decode("latin-1"))  # "null" and garbage: None, foreign
        if given is None:
            return False
        if given == self._base_origin:
            return True
        scheme = str(scope.get("scheme", "http")).lower()
        if host is None:
            server = scope.get("server")
            if not server or server[1] is None:
                return False
            host = (str(server[0]).strip("[]").lower(), int(server[1]))
        name, port = host
        own = (scheme, name, port if port is not None else _DEFAULT_PORTS.get(scheme, 80))
        return given == own


def normalize_allowed_hosts(allowed_hosts: Iterable[str]) -> tuple[str, ...]:
    """The ``allowed_hosts`` names, checked: host names or addresses, optionally ``:port``.

    Raises TypeError for a bare string (give a list) and ValueError for an entry that is
    not a host (a URL, say).
    """
    if isinstance(allowed_hosts, str | bytes):
        raise TypeError("allowed_hosts must be an iterable of host names, not one string")
    out: list[str] = []
    for entry in allowed_hosts:
        if not isinstance(entry, str):
            raise TypeError(f"allowed_hosts entries must be strings, not {type(entry).__name__}")
        if entry.strip() == "*":
            out.append("*")
            continue
        try:
            split_host(entry)
        except ValueError:
            raise ValueError(
                f"allowed host {entry!r} is not a host name (give e.g. 'myhost.lan' or "
                f"'myhost.lan:8000', without a scheme)"
            ) from None
        out.append(entry.strip())
    return tuple(out)
