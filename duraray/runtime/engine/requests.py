"""Client requests as a partition sees them: their arguments, and their stored replies.

The rules every request passes before its handler runs (``check_args``: types and the
value limits of ``duraray._limits``, so no argument can fail a batch halfway), which
requests change state (``MUTATING_OPS``: their replies are stored for request-id dedup)
and how those replies are stored and read back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from duraray import _limits
from duraray._errors import (
    DurableError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
)
from duraray.entities.ids import EntityId
from duraray.orchestrations.ids import validate_instance_id
from duraray.runtime.engine import codec
from duraray.runtime.engine.records import ClientRequest, InstanceRecord, Reply

#: Client operations that change state: their replies are stored for request-id dedup.
MUTATING_OPS = frozenset(
    {
        "start",
        "raise_event",
        "terminate",
        "suspend",
        "resume",
        "rewind",
        "purge",
        "purge_by",
        "batch",
        "signal_entity",
        "clean_entities",
        "release_entity_lock",
    }
)


#: What a handler returns when it answers later (a parked wait).
DEFERRED: Any = object()

#: Operations a ``batch`` request cannot hold.
UNBATCHABLE = frozenset({"batch", "wait", "wait_many"})

#: The types client operations accept for their arguments (None is always accepted).
_ARG_TYPES: dict[str, tuple[type, ...]] = {
    "instance_id": (str,),
    "entity_id": (str,),
    "name": (str,),
    "operation": (str,),
    "kind": (str,),
    "prefix": (str,),
    "reason": (str,),
    "input": (bytes,),
    "data": (bytes,),
    "output": (bytes,),
    "after": (bytes, str),
    "created_from": (datetime,),
    "created_to": (datetime,),
    "start_at": (datetime, timedelta),
    "signal_time": (datetime, timedelta),
    "statuses": (list, tuple),
    "timeout": (int, float),
    "limit": (int,),
    "instance_ids": (list, tuple),
    "ops": (list, tuple),
    "trace": (dict,),
}

#: The value checks of ``duraray._limits`` per argument: a value of the right type can
#: still fail a batch (a time before 1970 has no key; an id too long for one).
_ARG_CHECKS: dict[str, Any] = {
    "instance_id": validate_instance_id,
    "entity_id": EntityId.parse,
    "name": lambda v: _limits.check_name(v, "name"),
    "operation": lambda v: _limits.check_name(v, "entity operation"),
    "reason": lambda v: _limits.check_text(v, "reason"),
    "version": lambda v: _limits.check_text(v, "version"),
    "prefix": lambda v: _limits.check_text(v, "prefix"),
    "tags": _limits.check_tags,
    "created_from": lambda v: _limits.check_time(v, "created_from"),
    "created_to": lambda v: _limits.check_time(v, "created_to"),
    "start_at": lambda v: _check_when(v, "start_at"),
    "signal_time": lambda v: _check_when(v, "signal_time"),
    "timeout": _limits.check_timeout,
    "limit": lambda v: _limits.check_page_size(v, "limit"),
    "after": lambda v: _check_after(v),
    "instance_ids": lambda v: [validate_instance_id(i) for i in v],
    "trace": lambda v: _check_trace(v),
}

#: The most bytes of a trace carrier (W3C allows a 512-character ``tracestate``).
MAX_TRACE_BYTES = 2048


def _check_trace(value: dict[str, Any]) -> None:
    # A carrier the client library made; anything else is refused before it is stored.
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError("argument 'trace' must map strings to strings")
    if sum(len(k) + len(v) for k, v in value.items()) > MAX_TRACE_BYTES:
        raise ValueError(f"argument 'trace' is longer than {MAX_TRACE_BYTES} characters")


def _check_when(value: Any, what: str) -> Any:
    if isinstance(value, timedelta):
        return _limits.check_duration(value, what)
    return _limits.check_time(value, what)


def _check_after(value: bytes | str) -> None:
    size = len(value) if isinstance(value, bytes) else _limits.utf8_size(value, "token")
    if size >= _limits.MAX_STORE_KEY_BYTES:
        raise ValueError("malformed continuation token: longer than any key")


def check_args(args: dict[str, Any]) -> None:
    """Refuse malformed arguments before a handler runs: a handler that failed halfway
    with an unexpected error would fail the whole batch (and crash a Ray partition
    actor, again on every retry of the same request)."""
    for name, value in args.items():
        expected = _ARG_TYPES.get(name)
        if expected is not None and value is not None and not isinstance(value, expected):
            raise TypeError(
                f"argument {name!r} must be {' or '.join(t.__name__ for t in expected)}, "
                f"got {type(value).__name__}"
            )
    statuses = args.get("statuses")
    if statuses is not None and not all(isinstance(item, str) for item in statuses):
        raise TypeError("argument 'statuses' must be a list of status names")
    for name, value in args.items():
        check = _ARG_CHECKS.get(name)
        if check is not None and value is not None:
            check(value)


def is_mutating(req: ClientRequest) -> bool:
    """True if the request changes state (a batch: if any of its operations does)."""
    if req.op == "batch":
        return any(op in MUTATING_OPS for op, _ in req.args.get("ops", ()))
    return req.op in MUTATING_OPS


def encode_reply(result: Any) -> bytes:
    """A reply as stored for request-id dedup (errors by class name and message)."""
    if isinstance(result, list) and any(isinstance(item, Reply) for item in result):
        return codec.encode({"batch": [codec.decode(encode_reply(item)) for item in result]})
    if isinstance(result, Reply):
        return codec.encode({"error": type(result.error).__name__, "message": str(result.error)})
    if isinstance(result, InstanceRecord):
        return codec.encode({"ok": None})
    return codec.encode({"ok": result})


_REPLY_ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        InstanceAlreadyExistsError,
        InstanceNotFoundError,
        InstanceStateError,
        ValueError,
        TypeError,
        DurableError,
    )
}


def decode_reply(data: bytes) -> Any:
    """The inverse of ``encode_reply``."""
    stored = codec.decode(data)
    if "batch" in stored:
        return [decode_reply(codec.encode(item)) for item in stored["batch"]]
    if "error" in stored:
        cls = _REPLY_ERRORS.get(stored["error"], DurableError)
        return Reply(cls(stored["message"]))
    value = stored["ok"]
    return tuple(value) if isinstance(value, list) else value
