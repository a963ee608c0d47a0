"""What a hub supplies to the replay executor: a payload converter, options, a namer.

The executor stays pure by taking these from its caller: the engine passes its codec, the
options from the hub's configuration and its registry's ``name_of``; a test or a replay
tool may pass its own, or no namer at all (``default_name_of``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol


class PayloadConverter(Protocol):
    """Encodes and decodes payloads; ``duraray.runtime.engine.codec`` is the implementation."""

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes | None, type_hint: Any = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class ExecutorOptions:
    """Knobs of the executor that the hub's configuration sets.

    ``maximum_timer_interval`` splits timers longer than it into a chain of shorter ones
    (each a ``TimerCreated``/``TimerFired`` pair), for backends that cap timer length.
    ``determinism_warnings`` reports the module functions of ``time``, ``random``,
    ``uuid``, ``os`` and ``secrets`` that give another value each run, called by the
    orchestrator's code on its first run (``determinism.py``); ``determinism_hook`` adds
    ``datetime.now()`` & co., seen by a profile hook that slows the code down.
    """

    maximum_timer_interval: timedelta | None = None
    determinism_warnings: bool = False
    determinism_hook: bool = False


def default_name_of(kind: str, target: Any) -> str:
    """The name of an activity or orchestration without a registry: a string is its own
    name, a function is named by its ``__name__``."""
    if isinstance(target, str):
        return target
    name = getattr(target, "__name__", None)
    if not name:
        raise TypeError(f"expected a {kind} function or name, got {target!r}")
    return str(name)
