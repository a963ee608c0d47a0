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
    # The engine, the client and the shells all call it: it sits below every one of them.
    "runtime/tracing.py": (
        "ray",
        "lmdb",
        "duraray.runtime.ray",
        "duraray.runtime.engine",
        "duraray.runtime.client",
        "duraray.runtime.http",
        "duraray.runtime.cli",
        "duraray.runtime.inprocess",
        "duraray.app",
        "duraray.testing",
    ),
    # Everything outside http/ and cli/ (the top-level modules included) stays below them.
    "": ("duraray.runtime.http", "duraray.runtime.cli"),
}

#: The one module that may import OpenTelemetry (an optional extra: guarded there).
OTEL_MODULE = "runtime/tracing.py"

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


def test_only_the_tracing_module_imports_opentelemetry() -> None:
    """OpenTelemetry is optional: one module imports it (guarded), the rest call that one."""
    found = [
        f"duraray/{path.relative_to(PACKAGE).as_posix()}:{line} imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).as_posix() != OTEL_MODULE
        for line, name in _imports(path)
        if _matches(name, "opentelemetry")
    ]
    assert [] == found


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


def _module_graph() -> dict[str, set[str]]:
    """Module -> the duraray modules it imports (anywhere in the file).

    ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg``.
    """
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        deps.add(full)
                    elif base in modules:
                        deps.add(base)
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """No two modules of duraray import each other, directly or around a loop: not at
    module level, not in a function, not behind ``TYPE_CHECKING``. Each layer is a tree
    its readers (and mypy) can take one module at a time."""
    assert [] == _cycles(_module_graph())


def test_the_cycle_finder_finds_cycles() -> None:
    """A loop of three modules is one cycle; a module importing itself is none."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [["a", "b", "c"]] == _cycles(graph)


def test_no_module_is_over_600_lines() -> None:
    """A module that outgrows 600 lines is split by what its parts do."""
    root = Path(__file__).resolve().parent.parent / "duraray"
    long = {
        str(path.relative_to(root)): n
        for path in root.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert {} == long
