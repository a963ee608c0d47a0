"""Testing support: an in-process hub, a controllable clock and a history replayer.

- ``run_in_process(app)`` runs the real engine in this process (memory store by default);
- ``ManualClock`` is a clock that moves only when told, or skips to the next timer when
  the hub is idle (``auto_advance=True``), so a one-hour timer fires at once;
- ``Replayer`` replays stored histories against the current code and raises
  ``NonDeterminismError`` when the code no longer matches them (golden histories);
- ``save_history`` / ``load_history`` keep histories in files for those tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from duraray._errors import NonDeterminismError
from duraray._registry import Registry
from duraray.app import App
from duraray.orchestrations import history as h
from duraray.orchestrations.executor import OrchestrationExecutor
from duraray.runtime.client.sync import Client
from duraray.runtime.engine import codec
from duraray.runtime.inprocess import MEMORY, InProcessHub, ManualClock

__all__ = [
    "ManualClock",
    "Replayer",
    "load_history",
    "run_in_process",
    "save_history",
]


@contextlib.contextmanager
def run_in_process(
    app: App, *, clock: Any = None, data_dir: str = MEMORY, **options: Any
) -> Iterator[Client]:
    """Run ``app`` in this process for a ``with`` block; yields a ``Client``.

    The hub object is available as ``client.hub_runtime`` (e.g. ``wait_idle()``).
    """
    config = app.config.with_options(data_dir=str(data_dir), **options)
    hub = InProcessHub(app.name, app.registry, config, clock=clock)
    client = Client(
        hub, hub=app.name, registry=app.registry, max_payload_bytes=config.max_payload_bytes
    )
    client.hub_runtime = hub  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        hub.close()


def _encode_payloads(event: h.HistoryEvent) -> h.HistoryEvent:
    # Any: which payload fields an event has is known only at run time, so the fields'
    # own types cannot be checked here (``HistoryEvent`` itself has none of them).
    changes: dict[str, Any] = {
        f: codec.encode(getattr(event, f)) for f in h.PAYLOAD_FIELDS if hasattr(event, f)
    }
    return dataclasses.replace(event, **changes) if changes else event


class Replayer:
    """Replays recorded histories against the code registered in an app."""

    def __init__(self, app: App | Registry) -> None:
        self._registry = app.registry if isinstance(app, App) else app

    def replay(self, history: list[h.HistoryEvent]) -> None:
        """Replay ``history`` (as ``Client.get_orchestration_history`` returns it).

        Raises ``NonDeterminismError`` naming the recorded and the attempted action when
        the current code schedules something else than the history records.
        """
        started = next((e for e in history if isinstance(e, h.ExecutionStarted)), None)
        if started is None:
            raise ValueError("the history has no ExecutionStarted event")
        fn = self._registry.orchestrations.get(started.name)
        if fn is None:
            raise KeyError(f"orchestration {started.name!r} is not registered")
        events = [
            _encode_payloads(e)
            for e in history
            if not isinstance(e, h.ExecutionCompleted | h.ContinueAsNew | h.ExecutionTerminated)
        ]
        executor = OrchestrationExecutor(
            fn,
            instance_id=started.instance_id,
            converter=codec.Converter(),
            name_of=self._registry.name_of,
        )
        executor.process(events, replaying=True)
        completion = executor.completion
        if (
            isinstance(completion, h.ExecutionCompleted)
            and completion.failure is not None
            and completion.failure.is_caused_by(NonDeterminismError)
        ):
            raise NonDeterminismError(completion.failure.message)
        executor.close()


def save_history(path: str | Path, history: list[h.HistoryEvent]) -> None:
    """Write a history (as the client returns it) to a file, for golden-history tests."""
    blob = msgpack.packb([codec.encode_event(_encode_payloads(e)) for e in history])
    Path(path).write_bytes(blob)


def load_history(path: str | Path) -> list[h.HistoryEvent]:
    """Read a history written by ``save_history``; payloads come back decoded."""
    rows = msgpack.unpackb(Path(path).read_bytes())
    out = []
    for row in rows:
        event = codec.decode_event(row)
        changes = {
            f: codec.decode(getattr(event, f)) for f in h.PAYLOAD_FIELDS if hasattr(event, f)
        }
        out.append(dataclasses.replace(event, **changes) if changes else event)
    return out
