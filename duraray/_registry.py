"""The names under which a hub knows its orchestrations, activities and entities.

Pure data: the App fills it, partitions and workers look code up in it by name.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from duraray._errors import ActivityNotRegisteredError, OrchestratorNotRegisteredError
from duraray._limits import check_name

#: Options ``@app.activity(...)`` accepts (see ``App.activity``), with the types they take.
ACTIVITY_OPTIONS: dict[str, tuple[type, ...]] = {
    "num_cpus": (int, float),
    "num_gpus": (int, float),
    "resources": (dict,),
    "memory": (int, float),
    "accelerator_type": (str,),
    "runtime_env": (dict,),
    "timeout": (int, float),
    "inline": (bool,),
    "cpu_bound": (bool,),
    "max_workers": (int,),
    "max_activities_per_worker": (int,),
    "retry_policy": (object,),
}


@dataclass(frozen=True, slots=True)
class ActivitySpec:
    """A registered activity: the function (or class) and its execution options.

    ``token`` names this registration uniquely and travels with it to every process: an
    activity class's instance there is kept under it.
    """

    name: str
    fn: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)


class Registry:
    """Orchestrations, activities and entities by name; names are unique per kind."""

    def __init__(self) -> None:
        self.orchestrations: dict[str, Callable[..., Any]] = {}
        self.activities: dict[str, ActivitySpec] = {}
        self.entities: dict[str, Any] = {}
        #: the hub's ``otel_setup`` (``HubConfig``): it travels with the code to every
        #: process that runs it, where the first activity calls it (once per process)
        self.otel_setup: str | None = None
        # Function -> registered name, so code can pass the function itself.
        self._names: dict[tuple[str, int], str] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Function ids are per process: a registry shipped to a Ray actor rebuilds its
        # function -> name index from the unpickled functions (same order, same winners).
        return {k: v for k, v in self.__dict__.items() if k != "_names"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._names = {}
        for name, fn in self.orchestrations.items():
            self._names.setdefault(("orchestration", id(fn)), name)
        for name, spec in self.activities.items():
            self._names.setdefault(("activity", id(spec.fn)), name)
        for name, target in self.entities.items():
            self._names.setdefault(("entity", id(target)), name)

    def add_orchestration(self, fn: Callable[..., Any], name: str | None = None) -> str:
        """Register an orchestrator (a generator function or a plain function)."""
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"orchestration {getattr(fn, '__name__', fn)!r} is async; orchestrations are "
                "generator functions that yield tasks (use `yield`, not `await`)"
            )
        return self._add("orchestration", self.orchestrations, fn, name, fn)

    def add_activity(self, fn: Callable[..., Any], name: str | None = None, **options: Any) -> str:
        """Register an activity with its execution options."""
        resolved = _check_name("activity", name or getattr(fn, "__name__", None))
        _check_activity_options(resolved, options)
        spec = ActivitySpec(resolved, fn, dict(options))
        return self._add("activity", self.activities, fn, resolved, spec)

    def add_entity(self, target: Any, name: str | None = None) -> str:
        """Register an entity class or function; entity names are lower-cased."""
        resolved = _check_name("entity", name or getattr(target, "__name__", None)).lower()
        return self._add("entity", self.entities, target, resolved, target)

    def _add(self, kind: str, table: dict[str, Any], fn: Any, name: str | None, value: Any) -> str:
        if not callable(fn):
            raise TypeError(f"{kind} must be callable, got {fn!r}")
        resolved = _check_name(kind, name or getattr(fn, "__name__", None))
        if resolved in table:
            raise ValueError(f"an {kind} named {resolved!r} is already registered")
        table[resolved] = value
        self._names.setdefault((kind, id(fn)), resolved)
        return resolved

    def name_of(self, kind: str, target: Any) -> str:
        """The registered name of a function (or the name itself, if given a string)."""
        if isinstance(target, str):
            if not target:
                raise ValueError(f"{kind} name must not be empty")
            return target.lower() if kind == "entity" else target
        name = self._names.get((kind, id(target)))
        if name is not None:
            return name
        fallback = getattr(target, "__name__", None)
        if not fallback:
            raise TypeError(f"expected a registered {kind} or its name, got {target!r}")
        known: dict[str, Any] = {}
        if kind == "activity":
            known = self.activities
        elif kind == "orchestration":
            known = self.orchestrations
        if known and fallback not in known:
            # A function that was never registered (the decorator forgotten): say so here,
            # rather than fail the call later as an unknown name.
            error = (
                ActivityNotRegisteredError if kind == "activity" else OrchestratorNotRegisteredError
            )
            decorator = "activity" if kind == "activity" else "orchestration"
            raise error(
                f"{fallback!r} is not a registered {kind} of this app: decorate it with "
                f"@app.{decorator} (or call app.add_{decorator}({fallback}))"
            )
        return fallback.lower() if kind == "entity" else str(fallback)


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} needs a non-empty name")
    if any(ord(ch) < 32 for ch in name) or ("@" in name and kind == "entity"):
        raise ValueError(f"invalid {kind} name {name[:64]!r}")
    # A name no call could use (calls refuse names over MAX_NAME_BYTES) is refused here.
    return check_name(name, f"{kind} name")


def _check_activity_options(name: str, options: dict[str, Any]) -> None:
    """Refuse unknown option names (a typo such as ``num_gpu`` would otherwise be ignored
    and the activity run without the GPU) and values of the wrong type."""
    for key, value in options.items():
        kinds = ACTIVITY_OPTIONS.get(key)
        if kinds is None:
            known = ", ".join(sorted(ACTIVITY_OPTIONS))
            raise TypeError(f"activity {name!r}: unknown option {key!r} (known: {known})")
        if value is None:
            continue  # None means the default, as for every option
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise TypeError(
                f"activity {name!r}: option {key!r} must be "
                + " or ".join(k.__name__ for k in kinds)
                + f", not {type(value).__name__}"
            )
        number: Any = value
        if key in ("num_cpus", "num_gpus", "memory", "timeout") and not number >= 0:
            raise ValueError(f"activity {name!r}: option {key!r} must be >= 0")
        if key in ("max_workers", "max_activities_per_worker") and number < 1:
            raise ValueError(f"activity {name!r}: option {key!r} must be >= 1")
