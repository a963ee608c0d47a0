"""``duraray check MODULE:APP``: the static check of an App's orchestration functions.

The analysis is ``duraray.runtime.static_check``; this module imports the App,
prints the findings and sets the exit code. No hub and no Ray are involved.
"""

from __future__ import annotations

import dataclasses
import json
import os

import click

from duraray.runtime.cli._app import main
from duraray.runtime.cli._common import _remember
from duraray.runtime.cli._connect import _load_app
from duraray.runtime.cli._format import _json_mode
from duraray.runtime.static_check import Finding, check_orchestrations


@main.command()
@click.argument("app_spec", metavar="MODULE:APP", required=False)
@click.option(
    "--json",
    is_flag=True,
    expose_value=False,
    callback=_remember,
    help="Print the findings as JSON.",
)
@click.pass_context
def check(ctx: click.Context, app_spec: str | None) -> None:
    """Find non-deterministic and blocking calls in the App's orchestration functions.

    Reads each registered orchestration function's source (nothing is run) and prints
    one line per finding, e.g. "shop.py:12: orchestration 'checkout': time.time() is not
    deterministic; use ctx.current_utc_datetime". Non-deterministic: time.time(),
    time.monotonic(), datetime.now()/utcnow()/today(), date.today(), random.*,
    uuid.uuid1()/uuid4(), os.urandom(), secrets.*. Blocking: time.sleep(), requests.*,
    urllib.request.urlopen(), socket.*, subprocess.*, open(). Helpers called by an
    orchestration are not read. MODULE:APP may also be given with --app.

    \b
    Exit codes:
      0  nothing found
      1  something found
      2  usage error (the App cannot be imported)
    """
    spec = app_spec or (ctx.obj or {}).get("app")
    if not spec:
        raise click.UsageError("give the App to check: duraray check MODULE:APP", ctx)
    app = _load_app(spec)
    orchestrations = app.registry.orchestrations
    findings = check_orchestrations(orchestrations)
    problems = [f for f in findings if f.kind != "unchecked"]
    if _json_mode(ctx):
        click.echo(
            json.dumps(
                {
                    "app": spec,
                    "orchestrations": len(orchestrations),
                    "problems": len(problems),
                    "findings": [f.to_json() for f in findings],
                },
                indent=2,
            )
        )
    else:
        for finding in findings:
            click.echo(str(_relative(finding)))
        checked = len(orchestrations)
        summary = (
            f"{len(problems)} problem(s) in {checked} orchestration(s)"
            if problems
            else f"no problems found in {checked} orchestration(s)"
        )
        click.echo(summary, err=True)
    ctx.exit(1 if problems else 0)


def _relative(finding: Finding) -> Finding:
    """The finding with its file relative to the current directory, if it lies below it."""
    try:
        relative = os.path.relpath(finding.file)
    except ValueError:  # another drive
        return finding
    if relative.startswith(os.pardir) or not os.path.isabs(finding.file):
        return finding
    return dataclasses.replace(finding, file=relative)
