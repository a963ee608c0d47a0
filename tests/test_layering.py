"""The layering of DESIGN.md, enforced: each layer imports only what sits beside or below it.

Every ``import`` in ``duraray/`` is read with ``ast`` (lazy imports inside functions and
``TYPE_CHECKING`` blocks included, since they still tie one layer to another) and checked
against the rules below. No Ray needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "duraray"

ENGINE_MODULES_FOR_CLIENTS = {"records", "codec", "routing"}

#: What the pure layers (the replay executor, the entity model) must never import.
PURE_FORBIDDEN = (
    "duraray.runtime",
    "duraray.app",
    "duraray.testing",
    "ray",
    "lmdb",
    "starlette",
    "uvicorn",
    "httpx",
    "click",
)

#: layer (a path prefix under duraray/) -> import prefixes it must never use
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "orchestrations/": PURE_FORBIDDEN,
    "entities/": PURE_FORBIDDEN,
    "runtime/engine/": (
        "ray",
        "duraray.runtime.ray",
        "duraray.runtime.client",
        "duraray.runtime.http",
        "duraray.runtime.cli",
        "duraray.runtime.inprocess",
        "duraray.app",
        "duraray.testing",
        "starlette",
        "uvicorn",
        "click",
    ),
    "runtime/ray/": (
        "duraray.runtime.client",
        "duraray.runtime.http",
        "duraray.runtime.cli",
        "duraray.runtime.inprocess",
        "duraray.app",
        "duraray.testing",
        "starlette",
        "uvicorn",
        "click",
    ),
    # The client reaches a hub on Ray through the manager (``Client.attach``), never the
    # actors or links themselves.
    "runtime/client/": (
        "ray",
        "lmdb",
        "duraray.runtime.ray.actors",
        "duraray.runtime.ray.peerlink",
        "duraray.runtime.ray.placement",
        "duraray.runtime.http",
        "duraray.runtime.cli",
        "duraray.runtime.inprocess",
        "duraray.app",
        "duraray.testing",
        "starlette",
        "uvicorn",
        "click",
    ),
    "runtime/inprocess.py": (
        "ray",
        "duraray.runtime.ray",
        "duraray.runtime.http",
        "duraray.runtime.cli",
        "starlette",
        "uvicorn",
        "click",
    ),
    # Everything outside http/ and cli/ (the top-level modules included) stays below them.
    "": ("duraray.runtime.http", "duraray.runtime.cli"),
}

EXEMPT_FROM_TOP_RULE = ("runtime/http/", "runtime/cli/")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in one file."""
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    return _imports_of(path.read_text(), package)


def _imports_of(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``source``, a module of ``package``."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` may import a module: check pkg.mod as well as pkg.
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations() -> list[str]:
    out: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "runtime/_compat.py":
            continue  # maps old module names to new ones as strings; imports nothing
        for layer, forbidden in FORBIDDEN.items():
            if not rel.startswith(layer):
                continue
            if layer == "" and rel.startswith(EXEMPT_FROM_TOP_RULE):
                continue
            for line, name in _imports(path):
                hit = next((p for p in forbidden if _matches(name, p)), None)
                if hit:
                    out.append(
                        f"duraray/{rel}:{line} imports {name} ({layer or 'package'} "
                        f"must not import {hit})"
                    )
        if rel.startswith("runtime/client/"):
            for line, name in _imports(path):
                if _matches(name, "duraray.runtime.engine"):
                    rest = name.split(".")[3:4]
                    if rest and rest[0] not in ENGINE_MODULES_FOR_CLIENTS:
                        out.append(
                            f"duraray/{rel}:{line} imports {name} (the client uses the "
                            f"engine's {sorted(ENGINE_MODULES_FOR_CLIENTS)} only)"
                        )
    return out


def test_layers_import_only_what_they_may() -> None:
    """No module imports across the layering rules of DESIGN.md (and runtime/__init__)."""
    assert [] == _violations()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import ray\n", ["ray"]),
        (
            "def f():\n    from duraray.runtime.http import api\n",
            ["duraray.runtime.http", "duraray.runtime.http.api"],
        ),
    ],
)
def test_the_checker_sees_lazy_and_plain_imports(source: str, expected: list[str]) -> None:
    """The AST walk finds imports at module level and inside functions alike."""
    assert expected == [name for _, name in _imports_of(source, "duraray.orchestrations")]


def test_the_checker_resolves_relative_imports() -> None:
    """``from ..runtime import x`` inside duraray.entities resolves to duraray.runtime.x."""
    names = [name for _, name in _imports_of("from ..runtime import x\n", "duraray.entities")]
    assert ["duraray.runtime", "duraray.runtime.x"] == names
