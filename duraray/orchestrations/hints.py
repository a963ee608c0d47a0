"""What a function's signature says about its input and output, cached per function.

Used where user code is called (orchestrators, activities) and where results are decoded
(a task's result converted to the callee's annotated return type).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints


@functools.lru_cache(maxsize=1024)
def input_type_hint(fn: Callable[..., Any]) -> Any:
    """The annotated type of a function's input parameter (the second one), or None."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if len(params) < 2:
        return None
    try:
        hints = get_type_hints(fn)
    except Exception:
        return None
    return hints.get(params[1].name)


@functools.lru_cache(maxsize=1024)
def return_type_hint(fn: Callable[..., Any]) -> Any:
    """The annotated return type of a function, or None."""
    try:
        return get_type_hints(fn).get("return")
    except Exception:
        return None


@functools.lru_cache(maxsize=1024)
def accepts_input(fn: Callable[..., Any]) -> bool:
    """True when ``fn(ctx, input)`` can be called; False for ``fn(ctx)``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)
