"""A static check of orchestration functions: non-deterministic and blocking calls.

``check_orchestrations`` reads each function's source with ``ast`` (no code is run) and
reports the calls that make orchestration code non-deterministic (the ones the run-time
warnings watch, ``determinism.NON_DETERMINISTIC``) and the calls that block the
partition's thread (``BLOCKING``). ``duraray check MODULE:APP`` prints its findings.

Names are resolved through the imports of the function's module and of the function
itself (``import datetime as dt``, ``from time import time as now``); a name the function
binds itself (a parameter, an assignment) is not a module. What it cannot see: calls made
by helpers the orchestrator calls (only the orchestration function's own body is read,
nested functions included), calls through a variable (``clock = time.time; clock()``)
and names reached through other objects' attributes.
"""

from __future__ import annotations

import ast
import inspect
import linecache
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from duraray.orchestrations.determinism import NON_DETERMINISTIC, label

_ACTIVITY = "do it in an activity"

#: Calls that block the partition's thread, by qualified name; a name ending in ``.``
#: covers every call into that module. Kept short: the common ways code waits on the
#: world. ``open`` is the builtin.
BLOCKING: dict[str, str] = {
    "time.sleep": "use ctx.create_timer()",
    "requests.": _ACTIVITY,
    "urllib.request.urlopen": _ACTIVITY,
    "socket.": _ACTIVITY,
    "subprocess.": _ACTIVITY,
    "open": _ACTIVITY,
}

Kind = Literal["non-deterministic", "blocking", "unchecked"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found in one orchestration function."""

    file: str
    line: int
    orchestration: str
    #: "non-deterministic", "blocking", or "unchecked" (the source could not be read)
    kind: Kind
    #: the call as written in reports (``time.time()``), empty for "unchecked"
    call: str
    #: what to do instead, or why the function was not checked
    advice: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: orchestration {self.orchestration!r}"
        if self.kind == "unchecked":
            return f"{where}: not checked: {self.advice}"
        problem = (
            "is not deterministic" if self.kind == "non-deterministic" else "blocks the partition"
        )
        return f"{where}: {self.call} {problem}; {self.advice}"

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON object."""
        return {
            "file": self.file,
            "line": self.line,
            "orchestration": self.orchestration,
            "kind": self.kind,
            "call": self.call,
            "advice": self.advice,
        }


def check_orchestrations(orchestrations: Mapping[str, Callable[..., Any]]) -> list[Finding]:
    """Check every orchestration function (name -> function); findings in file/line order."""
    found = [f for name, fn in orchestrations.items() for f in check_function(name, fn)]
    return sorted(found, key=lambda f: (f.file, f.line, f.orchestration, f.call))


def check_function(name: str, fn: Callable[..., Any]) -> list[Finding]:
    """The findings in one orchestration function registered as ``name``."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    file = str(getattr(code, "co_filename", "<unknown>"))
    if code is None:
        return [Finding(file, 0, name, "unchecked", "", "not a Python function")]
    source = "".join(linecache.getlines(file, getattr(fn, "__globals__", None)))
    try:
        tree = ast.parse(source, file)
    except (SyntaxError, ValueError):
        tree = None
    node = _find_function(tree, code) if tree is not None else None
    if tree is None or node is None:
        reason = "its source is not available" if not source else "its source was not found"
        return [Finding(file, code.co_firstlineno, name, "unchecked", "", reason)]
    imports = _module_imports(tree)
    imports.update(_imports_in(node))
    local = _bound_names(node) - set(_imports_in(node))
    findings = []
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        qualified = _qualified_name(call.func, imports, local)
        if qualified is None:
            continue
        finding = _classify(qualified)
        if finding is not None:
            kind, advice = finding
            findings.append(Finding(file, call.lineno, name, kind, label(qualified), advice))
    return findings


def _classify(qualified: str) -> tuple[Kind, str] | None:
    advice = NON_DETERMINISTIC.get(qualified)
    if advice is not None:
        return "non-deterministic", advice
    for pattern, advice in BLOCKING.items():
        if qualified == pattern or (pattern.endswith(".") and qualified.startswith(pattern)):
            return "blocking", advice
    return None


_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def _find_function(tree: ast.Module, code: Any) -> _FunctionNode | None:
    """The node of the function whose code object is ``code`` (by name and first line)."""
    first = code.co_firstlineno
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name != code.co_name:
                continue
            starts = [node.lineno, *(d.lineno for d in node.decorator_list)]
            if first in starts:
                return node
        elif isinstance(node, ast.Lambda) and code.co_name == "<lambda>" and node.lineno == first:
            return node
    return None


def _module_imports(tree: ast.Module) -> dict[str, str]:
    """Local name -> qualified name of the module-level imports (inside if/try too)."""
    imports: dict[str, str] = {}
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        stmt = pending.pop(0)
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            imports.update(_names_of(stmt))
        elif not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(stmt, field, ()))
    return imports


def _imports_in(node: ast.AST) -> dict[str, str]:
    """Local name -> qualified name of the imports inside a function."""
    imports: dict[str, str] = {}
    for inner in ast.walk(node):
        if isinstance(inner, ast.Import | ast.ImportFrom):
            imports.update(_names_of(inner))
    return imports


def _names_of(stmt: ast.Import | ast.ImportFrom) -> Iterable[tuple[str, str]]:
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            if alias.asname:
                yield alias.asname, alias.name
            else:  # `import os.path` binds `os`
                head = alias.name.partition(".")[0]
                yield head, head
    elif stmt.module and not stmt.level:  # relative imports are the user's own modules
        for alias in stmt.names:
            if alias.name != "*":
                yield alias.asname or alias.name, f"{stmt.module}.{alias.name}"


def _bound_names(node: _FunctionNode) -> set[str]:
    """Names the function (or a function nested in it) binds: parameters, assignments."""
    bound: set[str] = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.arguments):
            for arg in (*inner.posonlyargs, *inner.args, *inner.kwonlyargs):
                bound.add(arg.arg)
            for extra in (inner.vararg, inner.kwarg):
                if extra is not None:
                    bound.add(extra.arg)
        elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store | ast.Del):
            bound.add(inner.id)
        elif (
            isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and inner is not node
        ):
            bound.add(inner.name)
    return bound


def _qualified_name(func: ast.expr, imports: Mapping[str, str], local: set[str]) -> str | None:
    """``time.time`` for ``t.time`` after ``import time as t``; None if not a module path."""
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id in local:
        return None
    head = imports.get(func.id)
    if head is None:
        # Only the builtin ``open`` is looked for without an import.
        return func.id if func.id == "open" and not parts else None
    return ".".join([head, *reversed(parts)])


__all__ = ["BLOCKING", "Finding", "check_function", "check_orchestrations"]
