"""Reaching a hub: its HTTP API (--url, ``_http.HttpHubClient``) or the client of --hub
or --app, and the bounded, interruptible connect to the Ray cluster under it (exit 5 with
the fix when it cannot be reached). Also the command's log setup, which keeps log lines
off stdout."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, NoReturn

import click

from duraray._errors import HubConfigurationError
from duraray.app import App
from duraray.runtime.cli._common import _CONNECT_TIMEOUT, TOKEN_ENVS, URL_ENV, CliError
from duraray.runtime.cli._format import EXIT_UNREACHABLE, _json_mode
from duraray.runtime.cli._http import HttpHubClient
from duraray.runtime.client.sync import Client

#: What the commands act on: a Client of a hub on Ray, or the hub's HTTP API (--url).
HubClient = Client | HttpHubClient


def _client(ctx: click.Context) -> HubClient:
    """The hub given by --url (its HTTP API), --hub or --app (or the injected client).

    --url (else ``$DURARAY_URL``, unless --hub or --app is given) goes over HTTP, without
    Ray; --url together with --hub or --app is a usage error.
    """
    url = _http_url(ctx)
    if url is None:
        return _ray_client(ctx)
    obj = ctx.ensure_object(dict)
    # $DURARAY_HTTP_TOKEN is the local server's own (what `duraray serve` reads): sent
    # only to a hub on this machine, never to another host.
    envs = TOKEN_ENVS if _loopback(url) else TOKEN_ENVS[:1]
    token = obj.get("token") or next((os.environ[n] for n in envs if os.environ.get(n)), None)
    return HttpHubClient(url, token=token, timeout=_connect_timeout(ctx))


def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _http_url(ctx: click.Context) -> str | None:
    """The HTTP API to use: --url, or ``$DURARAY_URL`` when no hub is named otherwise."""
    obj = ctx.ensure_object(dict)
    if obj.get("client_factory") is not None:
        return None
    named = obj.get("hub") or obj.get("app")
    url: str | None = obj.get("url")
    if url and named:
        raise click.UsageError("give --url or --hub/--app, not both", ctx)
    if url is None and not named:
        url = os.environ.get(URL_ENV) or None
    return url


def _ray_client(ctx: click.Context, *, data_dir: str | None = None) -> Client:
    """The client of the hub given by --hub or --app (or of the injected client factory),
    for a command that needs Ray; ``data_dir`` is for a hub that --app launches."""
    obj = ctx.ensure_object(dict)
    factory = obj.get("client_factory")
    if factory is not None:
        client: Client = factory()
        return client
    hub, spec = obj.get("hub"), obj.get("app")
    address = obj.get("address") or "auto"
    if spec:
        app = _load_app(spec)
        if hub and hub != app.name:
            raise click.UsageError(f"--hub {hub!r} is not the hub of --app {spec} ({app.name!r})")
        _connect_ray(address, _connect_timeout(ctx))
        options: dict[str, Any] = {} if data_dir is None else {"data_dir": data_dir}
        started: Client = app.start(address=address, **options)
        return started
    if hub:
        _connect_ray(address, _connect_timeout(ctx))
        try:
            return Client.attach(hub, address=address)
        except HubConfigurationError as exc:
            raise CliError(
                f"hub {hub!r} is not running on the Ray cluster at {address!r}: "
                "start it with `duraray start --app MODULE:APP`",
                EXIT_UNREACHABLE,
            ) from exc
    if _http_url(ctx) is not None:
        raise click.UsageError(
            f"{ctx.info_name} needs --hub NAME or --app MODULE:APP: it works on Ray, "
            "not over a hub's HTTP API (--url, $DURARAY_URL)",
            ctx,
        )
    raise click.UsageError(
        "no hub given: pass --url URL (a hub's HTTP API), --hub NAME (a hub running on "
        "the Ray cluster) or --app MODULE:APP (the hub's code)",
        ctx,
    )


def _load_app(spec: str) -> App:
    """Import ``module:attribute`` (attribute defaults to ``app``) and check it is an App."""
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise click.UsageError(f"--app {spec!r} must look like MODULE:APP")
    cwd = os.getcwd()
    if cwd not in sys.path:  # like `python -m`: modules next to the caller are importable
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"--app {spec}: cannot import {module_name!r}: {exc}")
    for part in (attribute or "app").split("."):
        if not hasattr(target, part):
            raise click.UsageError(f"--app {spec}: {module_name!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not isinstance(target, App):
        raise click.UsageError(f"--app {spec} is a {type(target).__name__}, not a duraray.App")
    return target


def _connect_timeout(ctx: click.Context) -> float:
    """Seconds to reach the Ray cluster: --connect-timeout, or 30."""
    return float(ctx.ensure_object(dict).get("connect_timeout") or _CONNECT_TIMEOUT)


def _connect_ray(address: str, timeout: float) -> None:
    """Join the Ray cluster at ``address`` within ``timeout`` seconds; exit 5 if none.

    Ray's own connect retries for minutes, logging every attempt, and does not stop for
    SIGTERM. So nothing is tried unless something listens at the address (checked with a
    plain TCP connect), the connect runs on a daemon thread with Ray's output (fd 2) held
    back, and it is abandoned, the process exiting at once, when the time is up, on
    SIGINT or SIGTERM, or as soon as Ray reports that the cluster wants an authentication
    token. Workers' output stays off this terminal.
    """
    from duraray.runtime.ray import manager

    _setup_logging()
    outcome: futures.Future[bool] = futures.Future()

    def connect() -> None:
        try:
            connected = manager.ensure_ray(address, connect_timeout=timeout, log_to_driver=False)
            outcome.set_result(connected)
        except BaseException as exc:
            outcome.set_exception(exc)

    deadline = time.monotonic() + timeout
    abandoned: CliError | None = None
    try:
        with _held_stderr() as held, _signals_interrupt():
            threading.Thread(target=connect, name="duraray-connect", daemon=True).start()
            while not futures.wait([outcome], timeout=0.1).done:
                if _AUTH_FAILURE in held():
                    abandoned = _auth_error(address)
                elif time.monotonic() >= deadline:
                    abandoned = CliError(
                        f"cannot reach a Ray cluster at {address!r} within {timeout:g} s",
                        EXIT_UNREACHABLE,
                    )
                if abandoned is not None:
                    break
    except _Interrupted as exc:
        name = signal.Signals(exc.signum).name
        abandoned = CliError(
            f"{name}: stopped connecting to the Ray cluster at {address!r}", 128 + exc.signum
        )
    if abandoned is not None:
        _exit_now(abandoned)
    error = outcome.exception()
    if error is None:
        return
    if _is_auth_failure(error):
        raise _auth_error(address) from error
    if isinstance(error, ConnectionError):
        detail = (str(error).strip().splitlines() or [""])[0]
        raise CliError(
            f"cannot reach a Ray cluster at {address!r}: {detail}; start one with "
            "`ray start --head` or pass --address",
            EXIT_UNREACHABLE,
        ) from error
    raise error


#: What Ray logs, and puts in its errors, when the cluster rejects a missing or wrong token.
_AUTH_FAILURE = "InvalidAuthToken"


def _is_auth_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is Ray's token-authentication error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ == "AuthenticationError" for cls in type(current).__mro__):
            return True
        if _AUTH_FAILURE in str(current) or "AuthenticationError" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _auth_error(address: str) -> CliError:
    """Exit 5, with the fix: Ray's token authentication (on by default in recent Ray)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        fix = (
            "this process has no token or not the cluster's: put the head node's "
            "~/.ray/auth_token in ~/.ray/auth_token or $RAY_AUTH_TOKEN"
        )
    else:
        fix = (
            "set RAY_AUTH_MODE=token (with the cluster's token in ~/.ray/auth_token or "
            "$RAY_AUTH_TOKEN), or run the cluster and every driver with RAY_AUTH_MODE=disabled"
        )
    return CliError(
        f"the Ray cluster at {address!r} rejected this process's authentication token: {fix}",
        EXIT_UNREACHABLE,
    )


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived while connecting to Ray."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise ``_Interrupted`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def _held_stderr() -> Iterator[Callable[[], str]]:
    """Send what is written to fd 2 (Ray's log lines) to a temporary file while the block
    runs; yields a function that reads what was held."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield lambda: ""
        return
    with tempfile.TemporaryFile() as held:
        fd = held.fileno()
        sys.stderr.flush()
        os.dup2(fd, 2)
        try:
            yield lambda: os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()  # Ray's Python log lines written so far stay held
            os.dup2(saved, 2)
            os.close(saved)


def _exit_now(error: CliError) -> NoReturn:
    """Report ``error`` and end the process at once.

    A Ray connect is still running on its thread, in Ray's C++ client: the interpreter's
    cleanup (Ray's atexit shutdown among it) is skipped rather than risk waiting on it.
    """
    context = click.get_current_context(silent=True)
    error.as_json = context is not None and _json_mode(context)
    error.show()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(error.exit_code)


def _setup_logging() -> None:
    """duraray's own log lines go to stderr, warnings and up: stdout is for results."""
    import logging

    import structlog

    from duraray.runtime.logging import configure_logging

    configure_logging(os.environ.get("DURARAY_LOG_FORMAT", "console"), level=logging.WARNING)
    structlog.configure(logger_factory=lambda *args: structlog.PrintLogger(sys.stderr))
