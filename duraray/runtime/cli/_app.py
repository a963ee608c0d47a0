"""The ``duraray`` command group: connecting to a hub, and the hub, instance and entity commands."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal as signals  # `signal` is a command here
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import datetime
from typing import Any, NoReturn

import click

from duraray._errors import (
    DurableError,
    HubConfigurationError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    SerializationError,
)
from duraray.app import App
from duraray.entities.ids import EntityId
from duraray.orchestrations.history import OrchestrationStatus
from duraray.runtime.cli._format import (
    _SPIN_REFRESH,
    ENTITY_ID,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    INSTANCE_ID,
    ISO_DATETIME,
    JSON_VALUE,
    _block,
    _compact,
    _done,
    _emit_json,
    _entity_json,
    _event_json,
    _history_table,
    _htime,
    _json_mode,
    _progress_enabled,
    _show_state,
    _Spinner,
    _state_json,
    _table,
)
from duraray.runtime.client.sync import Client, OrchestrationState

#: Seconds a command waits to reach the Ray cluster (--connect-timeout) before exit 5.
_CONNECT_TIMEOUT = 30.0


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Store a connection or output option in ``ctx.obj`` (group- or command-level)."""
    if value is not None and value is not False and param.name is not None:
        ctx.ensure_object(dict)[param.name] = value
    return value


def _hub_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Accept --hub, --app, --address, --connect-timeout and --json after the command too."""
    options = [
        click.option(
            "--hub",
            metavar="NAME",
            expose_value=False,
            callback=_remember,
            help="The hub to act on (running on the Ray cluster).",
        ),
        click.option(
            "--app",
            metavar="MODULE:APP",
            expose_value=False,
            callback=_remember,
            help="Import this duraray.App and attach to its hub (launching it if needed).",
        ),
        click.option(
            "--address",
            metavar="ADDRESS",
            expose_value=False,
            callback=_remember,
            help='Ray address (default "auto": the running cluster).',
        ),
        click.option(
            "--connect-timeout",
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            expose_value=False,
            callback=_remember,
            help=f"Give up reaching Ray after this long (exit 5; default {_CONNECT_TIMEOUT:g}).",
        ),
        click.option(
            "--json",
            is_flag=True,
            expose_value=False,
            callback=_remember,
            help="Print machine-readable JSON.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group()
@click.version_option(package_name="duraray")
@_hub_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """duraray: durable orchestrations, activities and entities on Ray.

    Commands that act on a hub reach it with --hub NAME (a hub running on the Ray
    cluster at --address, "auto" by default) or --app MODULE:APP (the App object: its
    hub is attached to, or launched detached if it is not running). A command gives up
    on a Ray cluster it cannot reach within --connect-timeout seconds (30 by default).
    --hub, --app, --address, --connect-timeout and --json go before or after the command
    name. Output is for people by default; --json prints JSON (ISO 8601 times, payloads
    as JSON values).

    \b
    Exit codes:
      0    success
      1    the operation failed; after a wait, the instance ended FAILED or TERMINATED
      2    usage error or bad input (malformed JSON, invalid id)
      3    not found (unknown instance or entity)
      4    state conflict (e.g. an event raised on a finished instance, an id in use)
      5    hub unreachable or not running; no Ray cluster within --connect-timeout
      124  timed out waiting
    """
    ctx.ensure_object(dict)


def _say(message: str) -> None:
    click.echo(message)
    sys.stdout.flush()


_ERROR_KINDS = {
    EXIT_FAILED: "failed",
    EXIT_USAGE: "bad_input",
    EXIT_NOT_FOUND: "not_found",
    EXIT_CONFLICT: "conflict",
    EXIT_UNREACHABLE: "unreachable",
    EXIT_TIMEOUT: "timeout",
}


_DEFAULT_TOP = 100


_FOREVER = 365 * 24 * 3600.0  # "no limit" for a wait: one request that outlasts any session


class CliError(click.ClickException):
    """A failure reported as a message (or a JSON object with --json) and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # per instance, not per class
        self.as_json = False

    def show(self, file: Any = None) -> None:
        """Print the error to stderr: ``Error: ...``, or ``{"error": {...}}`` with --json."""
        if not self.as_json:
            super().show(file)
            return
        error = {
            "code": self.exit_code,
            "kind": _ERROR_KINDS.get(self.exit_code, "failed"),
            "message": self.format_message(),
        }
        click.echo(json.dumps({"error": error}), file=file, err=file is None)


def _translate(exc: Exception) -> CliError:
    """Map an exception raised by a command to its message and exit code."""
    if isinstance(exc, TimeoutError):
        code = EXIT_TIMEOUT
    elif isinstance(exc, InstanceNotFoundError):
        code = EXIT_NOT_FOUND
    elif isinstance(exc, InstanceStateError | InstanceAlreadyExistsError):
        code = EXIT_CONFLICT
    elif isinstance(exc, ConnectionError) or _is_ray_unavailable(exc):
        code = EXIT_UNREACHABLE
    elif isinstance(exc, SerializationError | ValueError):
        code = EXIT_USAGE
    else:
        code = EXIT_FAILED
    message = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    if code == EXIT_UNREACHABLE:
        message = f"hub unreachable: {message}"
    elif not isinstance(exc, DurableError | TimeoutError | ValueError):
        message = f"{type(exc).__name__}: {message}"
    return CliError(message, code)


def _is_ray_unavailable(exc: Exception) -> bool:
    """True for Ray's errors that mean an actor of the hub is gone or unreachable."""
    names = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "RaySystemError"}
    return any(
        cls.__module__.startswith("ray") and cls.__name__ in names for cls in type(exc).__mro__
    )


class _Command(click.Command):
    """A command whose errors are reported with the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            error = exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            error = _translate(exc)
            error.__cause__ = exc
        error.as_json = _json_mode(ctx)
        raise error


def _client(ctx: click.Context, *, data_dir: str | None = None) -> Client:
    """The client of the hub given by --hub or --app (or of the injected client factory).

    ``data_dir`` is for a hub that --app launches.
    """
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
    raise click.UsageError(
        "no hub given: pass --hub NAME (a hub running on the Ray cluster) or "
        "--app MODULE:APP (the hub's code)",
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
        name = signals.Signals(exc.signum).name
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

    previous = {s: signals.signal(s, interrupt) for s in (signals.SIGINT, signals.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signals.signal(signum, signals.SIG_DFL if handler is None else handler)


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


def _start_hub(
    app: App,
    *,
    address: str,
    data_dir: str | None,
    partitions: int | None,
    connect_timeout: float = _CONNECT_TIMEOUT,
) -> dict[str, Any]:
    """Launch the app's hub detached (or attach if it is up); what is running."""
    from duraray.runtime.ray.manager import PartitionManager

    _connect_ray(address, connect_timeout)
    already_running = PartitionManager.find(app.name) is not None
    options: dict[str, Any] = {} if partitions is None else {"partitions": partitions}
    app.start(address=address, data_dir=data_dir, **options)
    handle = PartitionManager.find(app.name)
    info = handle.info if handle is not None else {}
    return {
        "hub": app.name,
        "already_running": already_running,
        "data_dir": info.get("data_dir"),
        "partitions": info.get("partitions"),
        "address": address,
    }


def _stop_hub(hub: str, *, address: str, connect_timeout: float = _CONNECT_TIMEOUT) -> bool:
    """Stop a hub's actors; False if it was not running."""
    from duraray.runtime.ray.manager import PartitionManager

    _connect_ray(address, connect_timeout)
    return PartitionManager.stop(hub)


def _http_server() -> Callable[..., Any]:
    """``duraray.runtime.http.serve``, imported only when `duraray serve` runs."""
    try:
        from duraray.runtime.http import serve as http_serve
    except ImportError as exc:
        raise CliError(f"the HTTP API is not available: {exc}", EXIT_FAILED) from exc
    return http_serve


STATUS = click.Choice([s.value for s in OrchestrationStatus], case_sensitive=False)


TERMINAL_STATUS = click.Choice(
    [s.value for s in OrchestrationStatus if s.is_terminal], case_sensitive=False
)


def _require_state(
    client: Client, instance_id: str, *, payloads: bool = True
) -> OrchestrationState:
    state = client.get_orchestration_state(instance_id, fetch_payloads=payloads)
    if state is None:
        raise CliError(f"no orchestration instance with id {instance_id!r}", EXIT_NOT_FOUND)
    return state


def _wait_until_done(
    ctx: click.Context, client: Client, state: OrchestrationState, timeout: float | None
) -> OrchestrationState:
    """Wait for COMPLETED, FAILED or TERMINATED; exit 124 after ``timeout`` seconds.

    One wait request per call, however long: a wait that times out stays registered in
    its partition, so polling with short waits would pile them up. The spinner refreshes
    the status it shows with plain state reads instead.
    """
    instance_id = state.instance_id
    if state.runtime_status.is_terminal:
        return state
    limit = _FOREVER if timeout is None else timeout
    try:
        if not _progress_enabled(ctx):
            return client.wait_for_orchestration_completion(instance_id, timeout=limit)
        label = f"waiting for {instance_id}"
        with _Spinner(True, label, state.runtime_status.value) as spinner:
            waiting = _in_background(
                lambda: client.wait_for_orchestration_completion(instance_id, timeout=limit)
            )
            while not futures.wait([waiting], timeout=_SPIN_REFRESH).done:
                current = client.get_orchestration_state(instance_id, fetch_payloads=False)
                if current is not None:
                    spinner.update(current.runtime_status.value)
            return waiting.result()
    except TimeoutError:
        current = _require_state(client, instance_id, payloads=False)
        raise CliError(
            f"timed out after {limit:g} s waiting for instance {instance_id!r} to complete "
            f"(it is {current.runtime_status.value})",
            EXIT_TIMEOUT,
        ) from None


def _in_background(fn: Callable[[], OrchestrationState]) -> futures.Future[OrchestrationState]:
    """Run ``fn`` on a daemon thread (Ctrl-C must not wait for it); its future."""
    future: futures.Future[OrchestrationState] = futures.Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="duraray-wait", daemon=True).start()
    return future


def _created_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--created-from and --created-to (ISO 8601, UTC unless a zone is given)."""
    fn = click.option(
        "--created-to", type=ISO_DATETIME, default=None, help="Created at or before (ISO 8601)."
    )(fn)
    return click.option(
        "--created-from", type=ISO_DATETIME, default=None, help="Created at or after (ISO 8601)."
    )(fn)


@main.command(cls=_Command)
@click.option("--data-dir", default=None, help="Where the hub keeps its data (default ./.duraray).")
@click.option(
    "--partitions", type=click.IntRange(1, 1024), default=None, help="Partitions of a new hub."
)
@_hub_options
@click.pass_context
def start(ctx: click.Context, data_dir: str | None, partitions: int | None) -> None:
    """Launch the hub of --app MODULE:APP on Ray, detached.

    Attaches instead if the hub is already running. Prints the hub name and data dir;
    `duraray stop --hub NAME` stops it.
    """
    obj = ctx.ensure_object(dict)
    if not obj.get("app"):
        raise click.UsageError("start needs --app MODULE:APP (the hub's code)", ctx)
    app = _load_app(obj["app"])
    if obj.get("hub") and obj["hub"] != app.name:
        raise click.UsageError(f"--hub {obj['hub']!r} is not the hub of --app ({app.name!r})", ctx)
    info = _start_hub(
        app,
        address=obj.get("address") or "auto",
        data_dir=data_dir,
        partitions=partitions,
        connect_timeout=_connect_timeout(ctx),
    )
    if _json_mode(ctx):
        _emit_json(info)
        return
    if info["already_running"]:
        click.echo(f"hub {app.name!r} is already running ({info['partitions']} partitions)")
        if data_dir is not None and info["data_dir"] != os.path.abspath(data_dir):
            click.echo(
                f"warning: it uses data dir {info['data_dir']}, not {os.path.abspath(data_dir)}",
                err=True,
            )
    else:
        click.echo(f"started hub {app.name!r} ({info['partitions']} partitions)")
    click.echo(f"data dir: {info['data_dir']}")
    click.echo(f"stop it with: duraray stop --hub {app.name}")


@main.command(cls=_Command)
@_hub_options
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop a hub (--hub NAME or --app MODULE:APP).

    Its data stays on disk. Exit 5 if it was not running.
    """
    obj = ctx.ensure_object(dict)
    hub = obj.get("hub")
    if obj.get("app"):
        name = _load_app(obj["app"]).name
        if hub and hub != name:
            raise click.UsageError(f"--hub {hub!r} is not the hub of --app ({name!r})", ctx)
        hub = name
    if not hub:
        raise click.UsageError("stop needs --hub NAME or --app MODULE:APP", ctx)
    address = obj.get("address") or "auto"
    if not _stop_hub(hub, address=address, connect_timeout=_connect_timeout(ctx)):
        raise CliError(f"hub {hub!r} is not running", EXIT_UNREACHABLE)
    _done(ctx, f"stopped hub {hub!r} (its data stays on disk)", {"hub": hub, "stopped": True})


@main.command(cls=_Command)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--token",
    envvar="DURARAY_HTTP_TOKEN",
    default=None,
    help="Bearer token clients must send ($DURARAY_HTTP_TOKEN); required off loopback.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="On loopback, also accept requests whose Host is NAME (or NAME:PORT; '*': any). "
    "Repeatable.",
)
@click.option(
    "--data-dir",
    default=None,
    help="With --app: where a hub it launches keeps its data (default ./.duraray).",
)
@_hub_options
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    token: str | None,
    allowed_hosts: tuple[str, ...],
    data_dir: str | None,
) -> None:
    """Serve the HTTP management API of a hub.

    With --app and no Ray cluster given (--address, $RAY_ADDRESS) or running, the hub
    runs on a local Ray instance while this command runs, as App.run() does (data in
    --data-dir, ./.duraray by default). Listening on anything but loopback needs a bearer
    token (--token or $DURARAY_HTTP_TOKEN).
    """
    # Checked before connecting to Ray, with the HTTP server's own rule.
    from duraray.runtime.http.auth import is_loopback

    if not token and not is_loopback(host):
        raise click.UsageError(
            f"refusing to listen on {host!r} without a token: pass --token (or set "
            "DURARAY_HTTP_TOKEN), or listen on 127.0.0.1",
            ctx,
        )
    obj = ctx.ensure_object(dict)
    if data_dir is not None and not obj.get("app"):
        raise click.UsageError("--data-dir needs --app MODULE:APP (the hub's code)", ctx)
    http_serve = _http_server()
    options: dict[str, Any] = {"host": host, "port": port, "token": token or None}
    if allowed_hosts:
        options["allowed_hosts"] = tuple(allowed_hosts)
    shown = f"[{host}]" if ":" in host else host
    banner = f"on http://{shown}:{port} (Ctrl-C to stop)"
    if _no_cluster_for(ctx):
        app = _load_app(obj["app"])
        if obj.get("hub") and obj["hub"] != app.name:
            raise click.UsageError(f"--hub {obj['hub']!r} is not the hub of --app ({app.name!r})")
        _setup_logging()
        where = os.path.abspath(data_dir or app.config.data_dir)
        click.echo(
            f"no Ray cluster running: starting hub {app.name!r} on a local Ray instance "
            f"(data dir {where}; it stops with this command)",
            err=True,
        )
        with app.run(data_dir=data_dir) as embedded:
            click.echo(f"serving hub {embedded.hub!r} {banner}", err=True)
            http_serve(embedded, **options)
        return
    client = _client(ctx, data_dir=data_dir)
    click.echo(f"serving hub {client.hub!r} {banner}", err=True)
    http_serve(client, **options)


def _no_cluster_for(ctx: click.Context) -> bool:
    """True when `serve --app` runs its hub embedded: no Ray cluster given nor running."""
    obj = ctx.ensure_object(dict)
    if obj.get("client_factory") is not None or not obj.get("app"):
        return False
    if obj.get("address") or os.environ.get("RAY_ADDRESS"):
        return False  # given: reach it or exit 5
    from duraray.runtime.ray import manager

    try:
        with _held_stderr():
            manager.probe_ray_cluster("auto", _connect_timeout(ctx))
    except ConnectionError:
        return True
    return False


@main.command(cls=_Command)
@click.argument("instance_id", type=INSTANCE_ID)
@click.option("--wait", is_flag=True, help="Wait until it completes, fails or is terminated.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: give up after this many seconds (exit 124). Default: no limit.",
)
@_hub_options
@click.pass_context
def status(ctx: click.Context, instance_id: str, wait: bool, timeout: float | None) -> None:
    """Show an instance's status, input, output and failure.

    With --wait, exit 1 if it ends FAILED or TERMINATED.
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait", ctx)
    client = _client(ctx)
    state = _require_state(client, instance_id)
    if wait:
        state = _wait_until_done(ctx, client, state, timeout)
    _show_state(ctx, state, waited=wait)


@main.command(cls=_Command)
@click.argument("instance_id", type=INSTANCE_ID)
@_hub_options
@click.pass_context
def history(ctx: click.Context, instance_id: str) -> None:
    """Show the history events of an instance's current execution.

    A table (payloads shortened); --json gives every event in full.
    """
    events = _client(ctx).get_orchestration_history(instance_id)
    if _json_mode(ctx):
        _emit_json([_event_json(e) for e in events])
    else:
        click.echo(_history_table(events))


@main.command("list", cls=_Command)
@click.option(
    "--status", "statuses", multiple=True, type=STATUS, help="Only this status (repeatable)."
)
@click.option("--prefix", default=None, help="Only instance ids starting with this.")
@_created_options
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=None,
    help=f"At most N, oldest first (default {_DEFAULT_TOP}).",
)
@click.option("--all", "fetch_all", is_flag=True, help="Every matching instance.")
@_hub_options
@click.pass_context
def list_instances(
    ctx: click.Context,
    statuses: tuple[str, ...],
    prefix: str | None,
    created_from: datetime | None,
    created_to: datetime | None,
    top: int | None,
    fetch_all: bool,
) -> None:
    """List instances, oldest first (use `status ID` for payloads)."""
    if top is not None and fetch_all:
        raise click.UsageError("--top and --all exclude each other", ctx)
    client = _client(ctx)
    filters: dict[str, Any] = {
        "runtime_status": list(statuses) or None,
        "created_time_from": created_from,
        "created_time_to": created_to,
        "instance_id_prefix": prefix,
        "fetch_payloads": False,
    }
    more = False
    if fetch_all:
        states = client.get_all_instances(**filters)
    else:
        page = client.query_instances(page_size=top or _DEFAULT_TOP, **filters)
        states, more = page.items, page.continuation_token is not None
    if _json_mode(ctx):
        _emit_json([_state_json(s, payloads=False) for s in states])
        return
    if not states:
        click.echo("no instances match")
        return
    rows = [
        [
            s.instance_id,
            s.name,
            s.runtime_status.value,
            _htime(s.created_at),
            _htime(s.last_updated_at),
        ]
        for s in states
    ]
    click.echo(_table(["INSTANCE ID", "NAME", "STATUS", "CREATED", "LAST UPDATED"], rows))
    if more:
        click.echo(f"(showing the first {len(states)}; more match: use --top N or --all)", err=True)


@main.command("raise", cls=_Command)
@click.argument("instance_id", type=INSTANCE_ID)
@click.argument("event_name")
@click.option("--data", type=JSON_VALUE, default=None, help="Event data as JSON (or @file).")
@_hub_options
@click.pass_context
def raise_event(ctx: click.Context, instance_id: str, event_name: str, data: Any) -> None:
    """Raise an external event on an instance.

    Exit 4 if the instance has finished.
    """
    _client(ctx).raise_orchestration_event(instance_id, event_name, data=data)
    _done(
        ctx,
        f"raised event {event_name!r} on instance {instance_id!r}",
        {"instance_id": instance_id, "event_name": event_name, "raised": True},
    )


@main.command(cls=_Command)
@click.argument("instance_id", type=INSTANCE_ID)
@click.option("--reason", type=JSON_VALUE, default=None, help="Its output, as JSON (or @file).")
@_hub_options
@click.pass_context
def terminate(ctx: click.Context, instance_id: str, reason: Any) -> None:
    """Terminate a running instance and its sub-orchestrations.

    Terminating an instance that has already finished changes nothing (exit 0).
    """
    client = _client(ctx)
    state = _require_state(client, instance_id, payloads=False)
    status_value = state.runtime_status.value
    if state.runtime_status.is_terminal:
        _done(
            ctx,
            f"instance {instance_id!r} has already finished ({status_value}): nothing to do",
            {"instance_id": instance_id, "terminated": False, "runtime_status": status_value},
        )
        return
    client.terminate_orchestration(instance_id, output=reason)
    _done(
        ctx,
        f"terminated instance {instance_id!r}",
        {"instance_id": instance_id, "terminated": True},
    )


def _lifecycle_command(name: str, verb: str, summary: str) -> None:
    @main.command(name, cls=_Command, help=summary)
    @click.argument("instance_id", type=INSTANCE_ID)
    @click.option("--reason", default=None, help="Why (recorded in the history).")
    @_hub_options
    @click.pass_context
    def command(ctx: click.Context, instance_id: str, reason: str | None) -> None:
        client = _client(ctx)
        getattr(client, f"{name}_orchestration")(instance_id, reason=reason)
        _done(
            ctx,
            f"{verb} instance {instance_id!r}",
            {"instance_id": instance_id, "operation": name, "done": True},
        )


_lifecycle_command(
    "suspend", "suspended", "Suspend a running instance: events wait until it is resumed."
)


_lifecycle_command("resume", "resumed", "Resume a suspended instance.")


_lifecycle_command(
    "rewind", "rewound", "Rewind a FAILED instance: only its failed work runs again."
)


@main.command(cls=_Command)
@click.argument("instance_id", type=INSTANCE_ID)
@click.option("--new-id", is_flag=True, help="Run it under a new instance id.")
@_hub_options
@click.pass_context
def restart(ctx: click.Context, instance_id: str, new_id: bool) -> None:
    """Run a finished instance again with its original input."""
    used = _client(ctx).restart_orchestration(instance_id, restart_with_new_instance_id=new_id)
    _done(
        ctx,
        f"restarted instance {instance_id!r} as {used!r}",
        {"instance_id": used, "restarted_from": instance_id},
    )


@main.command(cls=_Command)
@click.argument("instance_id", type=INSTANCE_ID, required=False)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=TERMINAL_STATUS,
    help="Only this status (repeatable).",
)
@_created_options
@_hub_options
@click.pass_context
def purge(
    ctx: click.Context,
    instance_id: str | None,
    statuses: tuple[str, ...],
    created_from: datetime | None,
    created_to: datetime | None,
) -> None:
    """Delete a finished instance, or every one matching filters.

    `purge ID` deletes the instance and its sub-orchestrations (exit 4 if it is still
    running); `purge --status FAILED --created-to 2026-01-01` deletes finished instances
    that match.
    """
    filtered = bool(statuses) or created_from is not None or created_to is not None
    if instance_id is not None and filtered:
        raise click.UsageError("give an instance id or filters, not both", ctx)
    if instance_id is None and not filtered:
        raise click.UsageError(
            "give an instance id, or at least one of --status, --created-from, --created-to",
            ctx,
        )
    client = _client(ctx)
    if instance_id is None:
        result = client.purge_orchestrations_by(created_from, created_to, list(statuses) or None)
        count = result.deleted_instance_count
        _done(ctx, f"purged {count} finished instance(s)", {"deleted_instance_count": count})
        return
    state = _require_state(client, instance_id, payloads=False)
    if not state.runtime_status.is_terminal:
        raise CliError(
            f"cannot purge instance {instance_id!r}: it is {state.runtime_status.value} "
            "(terminate it first)",
            EXIT_CONFLICT,
        )
    count = client.purge_orchestration(instance_id).deleted_instance_count
    _done(
        ctx,
        f"purged instance {instance_id!r} ({count} instance(s) deleted)",
        {"instance_id": instance_id, "deleted_instance_count": count},
    )


@main.command(cls=_Command)
@click.argument("name")
@click.option("--input", "input_", type=JSON_VALUE, default=None, help="Input as JSON (or @file).")
@click.option(
    "--id", "instance_id", type=INSTANCE_ID, default=None, help="Instance id (default: random)."
)
@click.option("--wait", is_flag=True, help="Wait until it completes, fails or is terminated.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: give up after this many seconds (exit 124). Default: no limit.",
)
@_hub_options
@click.pass_context
def schedule(
    ctx: click.Context,
    name: str,
    input_: Any,
    instance_id: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Start an orchestration instance.

    Exit 4 if --id names an instance that is still running. With --wait, exit 1 if it
    ends FAILED or TERMINATED.
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait", ctx)
    client = _client(ctx)
    iid = client.schedule_new_orchestration(name, input=input_, instance_id=instance_id)
    if not wait:
        _done(
            ctx,
            f"scheduled orchestration {name!r} as instance {iid!r}",
            {"instance_id": iid, "name": name},
        )
        return
    if not _json_mode(ctx):
        click.echo(f"scheduled orchestration {name!r} as instance {iid!r}")
    state = _wait_until_done(ctx, client, _require_state(client, iid), timeout)
    _show_state(ctx, state, waited=True)


@main.command(cls=_Command)
@click.argument("entity_id", type=ENTITY_ID)
@click.argument("operation")
@click.option("--input", "input_", type=JSON_VALUE, default=None, help="Input as JSON (or @file).")
@_hub_options
@click.pass_context
def signal(ctx: click.Context, entity_id: EntityId, operation: str, input_: Any) -> None:
    """Signal OPERATION on entity ENTITY_ID (written @name@key)."""
    _client(ctx).signal_entity(entity_id, operation, input_)
    _done(
        ctx,
        f"signalled {operation!r} on entity {entity_id}",
        {"entity_id": str(entity_id), "operation": operation, "signalled": True},
    )


@main.command(cls=_Command)
@click.argument("entity_id", type=ENTITY_ID, required=False)
@click.option("--list", "list_all", is_flag=True, help="List entities instead.")
@click.option("--name", default=None, help="With --list: only entities of this name.")
@_hub_options
@click.pass_context
def entity(
    ctx: click.Context, entity_id: EntityId | None, list_all: bool, name: str | None
) -> None:
    """Show an entity's state, lock and backlog, or --list entities.

    ENTITY_ID is written @name@key.
    """
    if (entity_id is None) == (not list_all):
        raise click.UsageError("give an entity id (@name@key) or --list", ctx)
    if name is not None and not list_all:
        raise click.UsageError("--name needs --list", ctx)
    if name is not None and (not name or "@" in name):
        raise click.BadParameter(f"entity name {name!r} must be non-empty, without '@'", ctx)
    client = _client(ctx)
    if entity_id is not None:
        meta = client.get_entity(entity_id)
        if meta is None:
            raise CliError(f"no entity with id {entity_id}", EXIT_NOT_FOUND)
        if _json_mode(ctx):
            _emit_json(_entity_json(meta))
            return
        click.echo(
            _block(
                [
                    ("entity id", str(meta.id)),
                    ("last modified", _htime(meta.last_modified)),
                    ("locked by", meta.locked_by or "-"),
                    ("backlog", str(meta.backlog_queue_size)),
                    ("state", _compact(meta.state)),
                ]
            )
        )
        return
    entities = client.get_all_entities(name=name)
    if _json_mode(ctx):
        _emit_json([_entity_json(m) for m in entities])
        return
    if not entities:
        click.echo("no entities match")
        return
    rows = [
        [
            str(m.id),
            _htime(m.last_modified),
            m.locked_by or "-",
            str(m.backlog_queue_size),
            _compact(m.state, 60),
        ]
        for m in entities
    ]
    click.echo(_table(["ENTITY ID", "LAST MODIFIED", "LOCKED BY", "BACKLOG", "STATE"], rows))


if __name__ == "__main__":  # pragma: no cover
    main()
