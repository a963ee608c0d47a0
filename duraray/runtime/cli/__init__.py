"""The ``duraray`` command.

``_app`` holds the group and the hub, instance and entity commands; ``_format`` the
parameter types, output and exit codes; ``_demo`` and ``_bench`` their commands, which
register themselves on import.
"""

from duraray.runtime.cli import _bench, _demo  # noqa: F401  (they register their commands)
from duraray.runtime.cli._app import main

__all__ = ["main"]
