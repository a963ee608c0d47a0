"""structlog configuration shared by every duraray process.

Records emitted by orchestration code while it replays are dropped, so each log line
appears once however often the code is replayed.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

from duraray.orchestrations.context import replaying_var

_configured: str | None = None


def drop_replayed(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor that drops records logged by replaying orchestration code."""
    if replaying_var.get():
        raise structlog.DropEvent
    return event


def configure_logging(log_format: str = "console", level: int = logging.INFO) -> None:
    """Configure structlog once per process: JSON or console output, replay-safe."""
    global _configured
    if _configured == log_format:
        return
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            drop_replayed,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    _configured = log_format
