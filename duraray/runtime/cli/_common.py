"""What every ``duraray`` command shares: the connection and output options, and errors
reported with the documented exit codes (``CliError``, ``_Command``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from duraray._errors import (
    DurableError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    SerializationError,
)
from duraray.runtime.cli._format import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    _json_mode,
)

#: Seconds a command waits to reach the Ray cluster (--connect-timeout) before exit 5.
_CONNECT_TIMEOUT = 30.0


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Store a connection or output option in ``ctx.obj`` (group- or command-level)."""
    if value is not None and value is not False and param.name is not None:
        ctx.ensure_object(dict)[param.name] = value
    return value


#: Environment variables of the HTTP API's address and bearer token (the token also
#: from ``$DURARAY_HTTP_TOKEN``, the one `duraray serve` reads).
URL_ENV = "DURARAY_URL"
TOKEN_ENVS = ("DURARAY_TOKEN", "DURARAY_HTTP_TOKEN")


def _connection_options(*, token: bool = True) -> Callable[[Callable[..., Any]], Any]:
    """The options that say which hub to reach, and --json, accepted after the command
    too (``token=False``: without --token, for a command that has its own)."""
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
            "--url",
            metavar="URL",
            expose_value=False,
            callback=_remember,
            help=f"The hub's HTTP API (`duraray serve`), without Ray (${URL_ENV}).",
        ),
    ]
    if token:
        options.append(
            click.option(
                "--token",
                metavar="TOKEN",
                expose_value=False,
                callback=_remember,
                help=f"With --url: the API's bearer token (${TOKEN_ENVS[0]}).",
            )
        )
    options += [
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
            help="Give up reaching Ray (or the HTTP API) after this long "
            f"(exit 5; default {_CONNECT_TIMEOUT:g}).",
        ),
        click.option(
            "--json",
            is_flag=True,
            expose_value=False,
            callback=_remember,
            help="Print machine-readable JSON.",
        ),
    ]

    def decorate(fn: Callable[..., Any]) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


#: --hub, --app, --url, --token, --address, --connect-timeout and --json.
_hub_options = _connection_options()


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
