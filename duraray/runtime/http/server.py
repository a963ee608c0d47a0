"""Running the HTTP API on uvicorn: ``serve(client, host=..., port=..., token=...)``.

Owns the security rules of binding: a server reachable from other machines (any host
that is not a loopback address) must have a bearer token, from the caller or from
``$DURARAY_HTTP_TOKEN``; without one ``serve`` refuses to start. A server on a loopback
address needs no token, so it answers only requests addressed to a loopback name (or one
of ``allowed_hosts``: ``duraray serve --allowed-host``), which keeps DNS-rebinding pages
out; on every address, requests a browser sends from another origin are refused (the
rules are in ``auth.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import uvicorn

from duraray.runtime.client.aio import AsyncClient
from duraray.runtime.client.sync import Client
from duraray.runtime.http.api import DEFAULT_MAX_BODY_BYTES, create_app
from duraray.runtime.http.auth import TOKEN_ENV, is_loopback, resolve_token


def build_server(
    client: Client | AsyncClient,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    base_url: str | None = None,
    log_level: str = "info",
    allowed_hosts: Iterable[str] = (),
) -> uvicorn.Server:
    """A uvicorn server for the API, not yet started (``serve`` runs it).

    Raises ValueError when ``host`` is not a loopback address and no token is given
    (nor set in ``$DURARAY_HTTP_TOKEN``). On a loopback ``host`` only requests whose
    ``Host`` is a loopback name, ``host`` itself, the host of ``base_url`` or one of
    ``allowed_hosts`` are answered (403 otherwise); see ``create_app``.
    """
    token = resolve_token(token)
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise ValueError(
            f"refusing to serve the HTTP API on {host!r} without a bearer token: a "
            f"non-loopback address is reachable from other machines; pass token=... "
            f"(duraray serve --token) or set {TOKEN_ENV}"
        )
    app = create_app(
        client,
        token=token,
        require_token=not loopback,
        max_body_bytes=max_body_bytes,
        base_url=base_url,
        bind_host=host,
        allowed_hosts=allowed_hosts,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    return uvicorn.Server(config)


def serve(
    client: Client | AsyncClient,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    base_url: str | None = None,
    log_level: str = "info",
    allowed_hosts: Iterable[str] = (),
) -> None:
    """Serve the HTTP API until interrupted (Ctrl-C); see ``build_server`` for the rules."""
    build_server(
        client,
        host=host,
        port=port,
        token=token,
        max_body_bytes=max_body_bytes,
        base_url=base_url,
        log_level=log_level,
        allowed_hosts=allowed_hosts,
    ).run()
