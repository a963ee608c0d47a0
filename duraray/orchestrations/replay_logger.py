"""A logger proxy for orchestration code that stays silent while the code is replayed."""

from __future__ import annotations

from typing import Any, Protocol


class Replaying(Protocol):
    """What the proxy asks of the orchestration context."""

    @property
    def is_replaying(self) -> bool:
        """True while the code runs again over recorded history."""
        ...


class ReplaySafeLogger:
    """A logger proxy that drops every call while the orchestration is replaying."""

    _METHODS = frozenset(
        {
            "debug",
            "info",
            "warning",
            "warn",
            "error",
            "exception",
            "critical",
            "log",
            "msg",
            "fatal",
        }
    )

    def __init__(self, logger: Any, context: Replaying) -> None:
        self._logger = logger
        self._context = context

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._logger, name)
        if name in self._METHODS:

            def call(*args: Any, **kwargs: Any) -> Any:
                if self._context.is_replaying:
                    return None
                return attr(*args, **kwargs)

            return call
        return attr

    @property
    def is_enabled(self) -> bool:
        """False while replaying."""
        return not self._context.is_replaying
