"""The ``duraray`` command group, assembled from the hub, instance and entity commands.

``_demo``, ``_bench`` and ``_check`` add their commands to ``main`` themselves when
imported (the package does).
"""

from __future__ import annotations

import click

from duraray.runtime.cli import _entities, _hub, _instances
from duraray.runtime.cli._common import _hub_options
from duraray.runtime.cli._common import _say as _say  # re-exported: _demo imports it from here

__all__ = ["main"]


@click.group()
@click.version_option(package_name="duraray")
@_hub_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """duraray: durable orchestrations, activities and entities on Ray.

    Commands that act on a hub reach it with --url URL (the hub's HTTP API, served by
    `duraray serve`: no Ray needed, answers at once; --token or $DURARAY_TOKEN if the
    server wants one; $DURARAY_URL when no hub is named), --hub NAME (a hub running on
    the Ray cluster at --address, "auto" by default) or --app MODULE:APP (the App
    object: its hub is attached to, or launched detached if it is not running). start,
    stop and serve need --hub or --app. A command gives up on a Ray cluster or an HTTP
    API it cannot reach within --connect-timeout seconds (30 by default). These options
    and --json go before or after the command name. Output is for people by default;
    --json prints JSON (ISO 8601 times, payloads as JSON values).

    \b
    Exit codes:
      0    success
      1    the operation failed; after a wait, the instance ended FAILED or TERMINATED
      2    usage error or bad input (malformed JSON, invalid id)
      3    not found (unknown instance or entity)
      4    state conflict (e.g. an event raised on a finished instance, an id in use)
      5    hub unreachable or not running; no Ray cluster within --connect-timeout;
           the HTTP API refused the token (--token)
      124  timed out waiting
    """
    ctx.ensure_object(dict)


for _command in (*_hub.COMMANDS, *_instances.COMMANDS, *_entities.COMMANDS):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
