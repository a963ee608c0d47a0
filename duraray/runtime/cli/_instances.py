"""The instance commands: ``schedule``, ``status``, ``history``, ``list``, ``raise``,
``terminate``, ``suspend``, ``resume``, ``rewind``, ``restart`` and ``purge``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from datetime import datetime
from typing import Any

import click

from duraray.orchestrations.history import OrchestrationStatus
from duraray.runtime.cli._common import CliError, _Command, _hub_options
from duraray.runtime.cli._connect import HubClient, _client
from duraray.runtime.cli._format import (
    _SPIN_REFRESH,
    EXIT_CONFLICT,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    INSTANCE_ID,
    ISO_DATETIME,
    JSON_VALUE,
    _done,
    _emit_json,
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
from duraray.runtime.client.results import OrchestrationState

_DEFAULT_TOP = 100


_FOREVER = 365 * 24 * 3600.0  # "no limit" for a wait: one request that outlasts any session


STATUS = click.Choice([s.value for s in OrchestrationStatus], case_sensitive=False)


TERMINAL_STATUS = click.Choice(
    [s.value for s in OrchestrationStatus if s.is_terminal], case_sensitive=False
)


def _require_state(
    client: HubClient, instance_id: str, *, payloads: bool = True
) -> OrchestrationState:
    state = client.get_orchestration_state(instance_id, fetch_payloads=payloads)
    if state is None:
        raise CliError(f"no orchestration instance with id {instance_id!r}", EXIT_NOT_FOUND)
    return state


def _wait_until_done(
    ctx: click.Context, client: HubClient, state: OrchestrationState, timeout: float | None
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


@click.command(cls=_Command)
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


@click.command(cls=_Command)
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


@click.command("list", cls=_Command)
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


@click.command("raise", cls=_Command)
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


@click.command(cls=_Command)
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


def _lifecycle_command(name: str, verb: str, summary: str) -> click.Command:
    @click.command(name, cls=_Command, help=summary)
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

    return command


suspend = _lifecycle_command(
    "suspend", "suspended", "Suspend a running instance: events wait until it is resumed."
)


resume = _lifecycle_command("resume", "resumed", "Resume a suspended instance.")


rewind = _lifecycle_command(
    "rewind", "rewound", "Rewind a FAILED instance: only its failed work runs again."
)


@click.command(cls=_Command)
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


@click.command(cls=_Command)
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


@click.command(cls=_Command)
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


COMMANDS = (
    schedule,
    status,
    history,
    list_instances,
    raise_event,
    terminate,
    suspend,
    resume,
    rewind,
    restart,
    purge,
)
