"""The duraray runtime: everything with I/O, grouped by level.

- ``engine/``: the partition core and its parts, records, codec, store, routing and
  activity execution. Plain Python: no Ray, no HTTP, no CLI.
- ``ray/``: the Ray shell: thin actors around the engine, the manager (launch, attach,
  routing), placement and peer links.
- ``client/``: the sync and async clients and bulk operations (``map``). It uses the
  engine's records and codec, never its internals.
- ``inprocess``: the same engine hosted in one process without Ray (tests, ``duraray.testing``).
- ``http/`` and ``cli/``: the management API with its dashboard, and the ``duraray`` command.
  Nothing below them imports them.

``tests/test_layering.py`` enforces these rules. Modules that lived directly under
``duraray.runtime`` before this layout still import under their old names (see
``_compat``), so user code written against them keeps working.
"""

from duraray.runtime import _compat

_compat.install()
