"""The client's bulk external events: many ``(instance_id, event_name, data)`` at once.

``event_ops`` checks every item before anything is sent (a bad one raises naming its
index, so a call either sends all its events or none) and turns them into the batch
operations that deliver them; ``outcomes`` turns the partitions' answers into the
per-item list ``Client.raise_orchestration_events`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from duraray import _limits
from duraray._errors import DurableError
from duraray.orchestrations.ids import validate_instance_id
from duraray.runtime.engine.records import Reply

#: What one item of ``raise_orchestration_events`` is.
ITEM_SHAPE = "an (instance_id, event_name) or (instance_id, event_name, data) tuple"


def event_ops(
    events: Iterable[Any], encode: Callable[[Any, str], bytes]
) -> list[tuple[str, str, dict[str, Any]]]:
    """The ``raise_event`` operations of ``events``, routed by instance id, in the order
    given (``Router.batch_each`` applies one key's operations in that order, so events to
    one instance arrive as listed). ``encode`` is the client's payload encoder."""
    if isinstance(events, str | bytes | dict):
        raise TypeError(f"events must be an iterable of {ITEM_SHAPE}s, got {type(events).__name__}")
    ops = []
    for index, item in enumerate(events):
        try:
            instance_id, name, data = _unpack(item)
            validate_instance_id(instance_id)
            _limits.check_name(name, "event name")
            encoded = encode(data, "event data")
        except (ValueError, TypeError) as exc:
            raise _at(index, exc) from None
        ops.append(
            (
                instance_id,
                "raise_event",
                {"instance_id": instance_id, "name": name, "data": encoded},
            )
        )
    return ops


def _unpack(item: Any) -> tuple[Any, Any, Any]:
    # Tuples and lists only: a string or a dict of the right length would unpack into
    # nonsense (characters, keys) that might still pass the checks.
    if not isinstance(item, tuple | list):
        raise TypeError(f"expected {ITEM_SHAPE}, got {type(item).__name__}")
    if len(item) not in (2, 3):
        raise TypeError(f"expected {ITEM_SHAPE}, got {len(item)} items")
    return (item[0], item[1], item[2] if len(item) == 3 else None)


def _at(index: int, exc: ValueError | TypeError) -> Exception:
    """``exc`` with the item's index in front of its message, of the same type where that
    type takes a message alone (``SerializationError`` does), else its built-in base."""
    message = f"events[{index}]: {exc}"
    try:
        return type(exc)(message)
    except Exception:
        return (TypeError if isinstance(exc, TypeError) else ValueError)(message)


def outcomes(results: list[Any]) -> list[DurableError | None]:
    """Per item: None if delivered, else the error the single call would have raised."""
    out: list[DurableError | None] = []
    for result in results:
        if not isinstance(result, Reply):
            out.append(None)
        elif isinstance(result.error, DurableError):
            out.append(result.error)
        else:
            # Only a partition that disagrees with this client's checks answers so (a
            # newer client, an older hub): the item was not delivered; say why.
            out.append(DurableError(f"{type(result.error).__name__}: {result.error}"))
    return out
