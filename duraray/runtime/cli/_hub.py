"""The hub commands: ``start`` and ``stop`` a hub on Ray, ``serve`` its HTTP API, list
what its partitions ``parked``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from duraray.app import App
from duraray.runtime.cli._common import (
    _CONNECT_TIMEOUT,
    CliError,
    _Command,
    _connection_options,
    _hub_options,
)
from duraray.runtime.cli._connect import (
    _client,
    _connect_ray,
    _connect_timeout,
    _held_stderr,
    _load_app,
    _ray_client,
    _setup_logging,
)
from duraray.runtime.cli._format import (
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    _done,
    _emit_json,
    _json_mode,
    _parked_json,
    _parked_table,
)


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


@click.command(cls=_Command)
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
        raise click.UsageError(f"start needs --app MODULE:APP (the hub's code){_NOT_HTTP}", ctx)
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


#: Why --url cannot stand in for --hub or --app (a hub's HTTP API cannot launch or stop it).
_NOT_HTTP = ": it works on Ray, not over a hub's HTTP API (--url)"


@click.command(cls=_Command)
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
        raise click.UsageError(f"stop needs --hub NAME or --app MODULE:APP{_NOT_HTTP}", ctx)
    address = obj.get("address") or "auto"
    if not _stop_hub(hub, address=address, connect_timeout=_connect_timeout(ctx)):
        raise CliError(f"hub {hub!r} is not running", EXIT_UNREACHABLE)
    _done(ctx, f"stopped hub {hub!r} (its data stays on disk)", {"hub": hub, "stopped": True})


@click.command(cls=_Command)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--token",
    envvar="DURARAY_HTTP_TOKEN",
    default=None,
    help="Bearer token clients must send ($DURARAY_HTTP_TOKEN; also taken before the "
    "command name); required off loopback.",
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
@_connection_options(token=False)
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

    obj = ctx.ensure_object(dict)
    token = token or obj.get("token")  # `duraray --token T serve`: the same API token

    if not token and not is_loopback(host):
        raise click.UsageError(
            f"refusing to listen on {host!r} without a token: pass --token (or set "
            "DURARAY_HTTP_TOKEN), or listen on 127.0.0.1",
            ctx,
        )
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
    client = _ray_client(ctx, data_dir=data_dir)
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


@click.command("parked", cls=_Command)
@click.option(
    "--top",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="At most N items.",
)
@_hub_options
@click.pass_context
def parked(ctx: click.Context, top: int) -> None:
    """List the work the hub's partitions set aside because applying it failed.

    A partition applies the work of a batch that raised one item at a time; an item that
    fails on its own twice (a defect, a value no check foresaw) is parked, so that the
    partition goes on. Listed by partition, then key; --json adds each item's traceback
    (detail).
    """
    items = _client(ctx).get_parked_items(top)
    if _json_mode(ctx):
        _emit_json([_parked_json(item) for item in items])
        return
    if not items:
        click.echo("no parked items")
        return
    click.echo(_parked_table(items))
    if len(items) >= top:
        click.echo(f"(showing the first {len(items)}; more may be parked: use --top N)", err=True)


COMMANDS = (start, stop, serve, parked)
