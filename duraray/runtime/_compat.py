"""Old module paths of the runtime, kept importable.

Before the runtime was grouped by level its modules sat side by side
(``duraray.runtime.client_ops``, ``duraray.runtime.activity``, ...). Public names such as
``ReuseIdPolicy`` or ``ActivityContext`` were importable from there, so those paths keep
resolving: importing an old name imports the module at its new home and registers it
under both names (one module object, no copies).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: old dotted name -> new dotted name
MOVED: dict[str, str] = {
    **{
        f"duraray.runtime.{m}": f"duraray.runtime.engine.{m}"
        for m in (
            "activity",
            "client_ops",
            "codec",
            "entity_host",
            "lifecycle",
            "partition",
            "records",
            "routing",
            "store",
        )
    },
    **{
        f"duraray.runtime.{m}": f"duraray.runtime.ray.{m}"
        for m in ("actors", "manager", "peerlink")
    },
    "duraray.runtime.aio": "duraray.runtime.client.aio",
    "duraray.runtime.mapping": "duraray.runtime.client.mapping",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self._target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self._target)

    def exec_module(self, module: ModuleType) -> None:
        # The target module was executed when it was imported under its own name.
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Register the finder once per process."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
