"""External events of one execution: handed to the code's waits, or buffered until one.

Event names match case-insensitively. An event that arrives while a
``wait_for_external_event`` of its name is pending completes the oldest such wait; one
that arrives first is buffered, and the next wait for its name takes the oldest buffered
event of that name. Buffered events keep their arrival order across names, which is the
order ``continue_as_new(save_events=True)`` carries them over in. Event data that cannot
be decoded completes a wait with None rather than failing the orchestration.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from duraray._errors import SerializationError
from duraray.orchestrations.options import PayloadConverter
from duraray.orchestrations.task import CancellableTask


class EventInbox:
    """The pending waits and the buffered events of one execution, by event name."""

    def __init__(self, converter: PayloadConverter) -> None:
        self._converter = converter
        self._waiters: dict[str, deque[CancellableTask[Any]]] = {}
        # Buffered (arrival number, encoded data), by lower-cased name.
        self._buffered: dict[str, deque[tuple[int, Any]]] = {}
        # The name as first received, for ``buffered``.
        self._names: dict[str, str] = {}
        self._arrivals = 0

    def _decode(self, data: bytes | None) -> Any:
        try:
            return self._converter.decode(data)
        except SerializationError:
            return None

    def deliver(self, name: str, data: bytes | None) -> bool:
        """Complete the oldest pending wait for ``name`` with ``data`` (True), or buffer
        the event (False). Waits that are already complete are skipped."""
        key = name.lower()
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.is_complete:
                waiter._complete(self._decode(data))
                return True
        self._arrivals += 1
        self._buffered.setdefault(key, deque()).append((self._arrivals, data))
        self._names.setdefault(key, name)
        return False

    def wait(self, name: str, task: CancellableTask[Any]) -> None:
        """Complete ``task`` with the oldest buffered event named ``name``, or make it
        wait for the next one (until cancelled)."""
        key = name.lower()
        queue = self._buffered.get(key)
        if queue:
            _, data = queue.popleft()
            task._complete(self._decode(data))
            return
        self._waiters.setdefault(key, deque()).append(task)

        def _forget(t: CancellableTask[Any]) -> None:
            waiters = self._waiters.get(key)
            if waiters and t in waiters:
                waiters.remove(t)

        task._on_cancel = _forget

    def stop_waiting(self) -> None:
        """Drop every pending wait: the execution ended, later events are only buffered."""
        self._waiters.clear()

    def buffered(self) -> list[tuple[str, Any]]:
        """Events received but not consumed: (name, encoded data), in arrival order."""
        rows = [
            (arrival, self._names.get(key, key), data)
            for key, queue in self._buffered.items()
            for arrival, data in queue
        ]
        rows.sort(key=lambda row: row[0])
        return [(name, data) for _, name, data in rows]
