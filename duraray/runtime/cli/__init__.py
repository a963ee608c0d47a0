"""The ``duraray`` command.

``_app`` assembles the group from the commands of ``_hub`` (start, stop, serve, parked),
``_instances`` and ``_entities``, which share ``_common`` (the connection options and
``CliError``) and ``_connect`` (reaching a hub: its HTTP API through ``_http``, or its
Ray cluster); ``_format`` holds the parameter types, output and exit codes; ``_demo``,
``_bench`` and ``_check`` their commands, which register themselves on import.
"""

from duraray.runtime.cli import _bench, _check, _demo  # noqa: F401  (they register their commands)
from duraray.runtime.cli._app import main

__all__ = ["main"]
