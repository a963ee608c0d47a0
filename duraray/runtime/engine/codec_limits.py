"""What ``encode`` accepts: payload size, nesting depth and dict keys, and how refusals read.

``encode`` (codec.py) packs first and calls ``_check`` only when the packed bytes say a
payload might break a rule; ``_check`` then walks the value to find the offending part and
raises SerializationError naming its path (``value['a'][3]``). ``_locate`` words the path
of an unsupported value the packer refused. The int width limit (``MAX_INT_BITS``) is
enforced by the int encoder in codec_ext.py.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from duraray._errors import SerializationError
from duraray.runtime.engine.codec_ext import _default

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

#: The advice every too-large payload error ends with: big data travels by reference.
BY_REFERENCE = (
    "pass large data by reference instead: write it to shared storage and pass its path or "
    "URI (or a Ray object-store key), as the README's 'Large payloads' section shows"
)

#: The deepest nesting of containers (list, tuple, dict, dataclass) a payload may have:
#: ``[[1]]`` is 2 levels deep. Deeper values are refused by ``encode``.
MAX_DEPTH = 100


# -- What encode accepts: nesting depth and dict keys ---------------------------------------
#
# msgpack's C packer walks the value, so ``default`` sees only the types msgpack lacks (ints
# over 64 bits are checked there, at no cost to other values). Depth and dict keys need a
# walk in Python, which ``encode`` skips when it can tell there is nothing to find:
# - depth: every list, tuple, dict or dataclass writes one container header byte (0x80 to
#   0x9f, 0xdc to 0xdf), so a payload with at most MAX_DEPTH bytes of those values cannot
#   nest deeper. Counting them is one C-speed pass (``bytes.translate``), and none is
#   needed for a payload of at most MAX_DEPTH bytes;
# - keys: only a hashable dataclass, dict subclass or list subclass encodes to something
#   that is no key once decoded (a dict, a list); encoding one counts in ``suspects``.
#   Without one, keys are scalars, ext types or tuples of them: hashable once decoded.

_NOT_HEADER_BYTES = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))
_COUNT_UP_TO = 64 * 1024  # larger payloads are walked: a few large parts are quick to walk

# Types whose values hold no container: the walk does not descend (exact types only).
_LEAVES = frozenset(
    {str, int, float, bool, type(None), bytes, bytearray, datetime, date, timedelta}
    | {uuid.UUID, Decimal}
)
_KEY_TYPES = (str, int, float, bytes, type(None), datetime, date, timedelta, uuid.UUID, Decimal)
_KEY_RULE = (
    "dict keys must be None, bool, int, float, str, bytes, datetime, date, timedelta, "
    "uuid.UUID, decimal.Decimal or tuples of these (a dataclass key would decode as a dict, "
    "which is no key)"
)
_TOO_DEEP = (
    f"it nests too deeply: more than {MAX_DEPTH} levels of lists, tuples, dicts and "
    "dataclasses (does it contain itself?)"
)


class _Refused(Exception):
    """A part the walk refuses; ``path`` fills in, innermost step first, as it unwinds."""

    def __init__(self, what: str, why: str, *, at_key: bool = False) -> None:
        super().__init__(what, why)
        self.what = what
        self.why = why
        self.path: list[str] = []
        self.skip = at_key  # the dict holding a bad key adds no step for it


def _walk(obj: Any, budget: int) -> None:
    """Raise _Refused if ``obj`` nests more than ``budget`` levels or has a bad dict key."""
    cls = type(obj)
    if cls is list or cls is tuple:
        _walk_items(obj, budget)
    elif cls is dict:
        _walk_pairs(obj, budget, "[{!r}]")
    elif cls in _LEAVES:
        return
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _walk_pairs(_default(obj), budget, ".{}")  # its fields, as encode wrote them
    elif isinstance(obj, list | tuple):
        _walk_items(obj, budget)
    elif isinstance(obj, dict):
        _walk_pairs(obj, budget, "[{!r}]")


# Below this many items a container is walked item by item; from it on, a C-speed look at
# the set of its item types first skips the (common) container of scalars only.
_SCAN_FROM = 8


def _walk_items(seq: Any, budget: int) -> None:
    if not budget:
        raise _Refused("the part", _TOO_DEEP)
    if len(seq) >= _SCAN_FROM and _LEAVES.issuperset(map(type, seq)):
        return
    budget -= 1
    item = None
    try:
        for item in seq:
            cls = type(item)
            if cls in _LEAVES:
                continue
            if cls is dict:
                _walk_pairs(item, budget, "[{!r}]")
            elif cls is list or cls is tuple:
                _walk_items(item, budget)
            else:
                _walk(item, budget)
    except _Refused as exc:
        exc.path.append(f"[{next(i for i, x in enumerate(seq) if x is item)}]")
        raise


def _walk_pairs(pairs: dict[Any, Any], budget: int, step: str) -> None:
    if not budget:
        raise _Refused("the part", _TOO_DEEP)
    if (
        len(pairs) >= _SCAN_FROM
        and _LEAVES.issuperset(map(type, pairs.values()))
        and _LEAVES.issuperset(map(type, pairs))
    ):
        return
    budget -= 1
    key = None
    try:
        for key, item in pairs.items():
            if type(key) is not str:
                _check_key(key, key, budget)
            cls = type(item)
            if cls in _LEAVES:
                continue
            if cls is dict:
                _walk_pairs(item, budget, "[{!r}]")
            elif cls is list or cls is tuple:
                _walk_items(item, budget)
            else:
                _walk(item, budget)
    except _Refused as exc:
        if exc.skip:
            exc.skip = False
        else:
            exc.path.append(step.format(key))
        raise


def _check_key(key: Any, part: Any, budget: int) -> None:
    cls = type(part)
    if cls in _LEAVES:
        return
    if cls is tuple or (isinstance(part, tuple) and not dataclasses.is_dataclass(part)):
        if not budget:
            raise _Refused("a dict key", _TOO_DEEP, at_key=True)
        for item in part:
            _check_key(key, item, budget - 1)
    elif dataclasses.is_dataclass(part) or not isinstance(part, _KEY_TYPES):
        holding = "" if part is key else f" holding a {cls.__qualname__!r}"
        what = f"a dict key of type {type(key).__qualname__!r}{holding}"
        raise _Refused(what, _KEY_RULE, at_key=True)


def _path(steps: list[str]) -> str:
    steps = steps[::-1]
    if len(steps) > 12:  # a cycle or a deep value: its ends say where
        steps = [*steps[:6], f"...({len(steps) - 10} more)...", *steps[-4:]]
    return "value" + "".join(steps)


def _check(value: Any) -> None:
    """SerializationError if ``value`` nests too deeply or has a dict key that won't decode."""
    try:
        _walk(value, MAX_DEPTH)
    except _Refused as exc:
        where = "in" if exc.what.startswith("a dict key") else "at"
        raise SerializationError(
            f"cannot encode {exc.what} {where} {_path(exc.path)}: {exc.why}"
        ) from None
    except RecursionError:  # encode called with little stack left
        raise SerializationError(f"cannot encode value: {_TOO_DEEP}") from None


# -- Where a refused part sits, for the message ---------------------------------------------


def _locate(root: Any, target: Any) -> str:
    """The access path of ``target`` inside ``root`` (only run to word an error)."""
    stack: list[tuple[Any, str]] = [(root, "value")]
    seen: set[int] = set()
    while stack:
        obj, path = stack.pop()
        if obj is target:
            return path
        children: list[tuple[Any, str]] = []
        if id(obj) in seen:
            continue
        if isinstance(obj, (list, tuple)):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(obj)]
        elif isinstance(obj, dict):
            for key, item in obj.items():
                children += [(key, f"a key of {path}"), (item, f"{path}[{key!r}]")]
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            children = [(getattr(obj, f.name), f"{path}.{f.name}") for f in dataclasses.fields(obj)]
        else:
            continue
        seen.add(id(obj))
        stack.extend(reversed(children))
    return "value"
