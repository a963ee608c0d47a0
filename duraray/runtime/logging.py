"""structlog configuration shared by every duraray process.

Configured once per process: console output on a terminal, JSON lines otherwise (or as
``HubConfig.log_format`` says). Records emitted by orchestration code while it replays are
dropped, so each log line appears once however often the code is replayed. A process that
configured structlog itself keeps its configuration (the replay filter is still added).
"""

from __future__ import annotations

import logging
import sys
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


def configure_logging(log_format: str = "auto", level: int = logging.INFO) -> None:
    """Configure structlog once per process.

    ``log_format``: "console", "json", or "auto" (console on a terminal, else JSON).
    """
    global _configured
    if _configured is not None:
        return
    if structlog.is_configured():
        # The application owns logging: only make sure replayed records are dropped.
        processors = list(structlog.get_config().get("processors", []))
        if drop_replayed not in processors:
            structlog.configure(processors=[drop_replayed, *processors])
        _configured = "user"
        return
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
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
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = log_format
