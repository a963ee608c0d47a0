"""Records: the engine's dataclasses (history events first) packed positionally.

A record is written as a msgpack array of its fields in dataclass field order, so it stays
small and evolves by the history module's rule: fields are only appended, with defaults. A
record written with fewer fields decodes with the missing ones defaulted; one written with
more (by a newer version) is refused. Trailing fields marked ``SPARSE`` (history.py) are
written only while set, so records that never set them keep their stored bytes. Each
record class gets a plan, built once from its type hints: how each field is packed
(datetimes as UTC microseconds, enums as their value, nested records as arrays, payload
fields as the bytes ``encode`` produced) and unpacked. History events are tagged with
their class name (``encode_event``/``decode_event``).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import types
import typing
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, TypeVar

import msgpack

from duraray._errors import SerializationError
from duraray.orchestrations.history import EVENT_TYPES, PAYLOAD_FIELDS, HistoryEvent
from duraray.runtime.engine.codec_convert import _identity, _no_default
from duraray.runtime.engine.codec_ext import (
    _EPOCH_UTC,
    _Conv,
    _pack,
    _PackerPool,
    _why,
    utc_micros,
)

T = TypeVar("T")

_PLAIN = (str, int, float, bool, bytes, type(None))


def _none_safe(fn: _Conv) -> _Conv:
    return lambda v: None if v is None else fn(v)


def _field_codec(owner: type, name: str, hint: Any) -> tuple[_Conv | None, _Conv | None]:
    """(pack, unpack) for one record field; None stands for "carried as is"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # X | None: every codec passes None through
            return _field_codec(owner, name, members[0])
        if all(m in _PLAIN for m in members):
            return None, None
    elif hint is Any:  # payload fields carry encode()'s bytes; other Any fields plain values
        if name in PAYLOAD_FIELDS:
            return functools.partial(_check_payload, owner, name), None
        return None, None
    elif hint in _PLAIN:
        return None, None
    elif hint is datetime:  # the commonest kind: no _none_safe layer
        return (
            lambda v: None if v is None else utc_micros(v),
            lambda v: None if v is None else _EPOCH_UTC + timedelta(0, 0, v),
        )
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _none_safe(attrgetter("value")), _none_safe(hint)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        # Plans are looked up at call time, so a record nesting itself (FailureDetails.inner)
        # needs no recursion here.
        return _none_safe(pack_record), _none_safe(functools.partial(unpack_record, hint))
    elif hint in (list, tuple, dict) or origin in (list, tuple, dict):
        return _container_codec(owner, f"{name}[]", origin or hint, args)
    raise SerializationError(
        f"record field {owner.__qualname__}.{name} has a type the record codec cannot carry: "
        f"{hint!r}"
    )


def _container_codec(
    owner: type, name: str, kind: type, args: tuple[Any, ...]
) -> tuple[_Conv | None, _Conv | None]:
    # Items may be records, datetimes, ... in turn. Dict keys are plain; a tuple needs an
    # unpacker even of plain items, as msgpack reads every array back as a list.
    item_args = args[1:] if kind is dict else [a for a in args if a is not Ellipsis]
    codecs = [_field_codec(owner, name, a) for a in item_args] or [(None, None)]

    def mapper(fns: list[_Conv | None], out: Callable[[Any], Any]) -> _Conv | None:
        if all(f is None for f in fns) and out is not tuple:
            return None
        fs = [f or _identity for f in fns]
        if kind is dict:
            return _none_safe(lambda d: {k: fs[0](v) for k, v in d.items()})
        each = fs if len(fs) > 1 else itertools.repeat(fs[0])  # tuple[A, B] or list[T]
        return _none_safe(lambda s: out([f(v) for f, v in zip(each, s, strict=False)]))

    unpacked_as = tuple if kind is tuple else list
    return mapper([p for p, _ in codecs], list), mapper([u for _, u in codecs], unpacked_as)


def _check_payload(owner: type, name: str, value: Any) -> Any:
    # Payload fields hold bytes that ``encode`` produced; anything else is an engine bug.
    if value is None or type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise SerializationError(
        f"{owner.__qualname__}.{name} holds a {type(value).__qualname__}, not encoded bytes"
    )


class _RecordPlan:
    __slots__ = ("getter", "keep", "name", "names", "packers", "required", "unpackers")

    def __init__(self, cls: type) -> None:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise SerializationError(f"{cls!r} is not a dataclass record")
        fields = dataclasses.fields(cls)
        if any(not f.init for f in fields):
            raise SerializationError(f"record {cls.__qualname__} has init=False fields")
        hints = typing.get_type_hints(cls)
        self.name = cls.__qualname__
        self.names = tuple(f.name for f in fields)
        codecs = [_field_codec(cls, f.name, hints[f.name]) for f in fields]
        self.packers = tuple(pack for pack, _ in codecs)
        self.unpackers = tuple(unpack for _, unpack in codecs)
        # Fields after the last one without a default may be absent (older writers).
        self.required = max((i + 1 for i, f in enumerate(fields) if _no_default(f)), default=0)
        # Trailing SPARSE fields (appended after data was stored) are written only up to the
        # last one set: a record without them keeps the bytes it was stored with.
        sparse = len(list(itertools.takewhile(_is_sparse, reversed(fields))))
        self.keep = len(fields) - sparse if sparse else None
        getter = attrgetter(*self.names) if self.names else (lambda o: ())
        # attrgetter of one name returns the bare value, not a 1-tuple.
        self.getter: _Conv = (lambda o: (getter(o),)) if len(self.names) == 1 else getter


_record_plan: Callable[[type], _RecordPlan] = functools.cache(_RecordPlan)  # built on first use


def _is_sparse(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get("sparse"))


def pack_record(obj: Any) -> list[Any]:
    """The record's fields as a list of msgpack-ready values, in dataclass field order
    (trailing ``SPARSE`` fields that are None left out)."""
    plan = _record_plan(type(obj))
    items = [v if p is None else p(v) for p, v in zip(plan.packers, plan.getter(obj), strict=False)]
    keep = plan.keep
    if keep is not None:
        while len(items) > keep and items[-1] is None:
            items.pop()
    return items


def unpack_record(cls: type[T], items: Sequence[Any]) -> T:
    """Rebuild a ``cls`` record from ``pack_record``'s list; missing trailing fields default."""
    plan = _record_plan(cls)
    if not isinstance(items, (list, tuple)):
        raise SerializationError(f"a {plan.name} record must be an array, not {type(items)}")
    if not plan.required <= len(items) <= len(plan.names):
        newer = " (written by a newer version?)" if len(items) > len(plan.names) else ""
        raise SerializationError(
            f"a {plan.name} record has {len(items)} fields, expected {plan.required} to "
            f"{len(plan.names)}{newer}"
        )
    unpackers = plan.unpackers
    try:
        return cls(
            **{
                n: v if u is None else u(v)
                for n, u, v in zip(plan.names, unpackers, items, strict=False)
            }
        )
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, SerializationError):
            raise
        raise SerializationError(f"cannot rebuild a {plan.name} record: {exc}") from None


_RECORD_PACKERS = _PackerPool(use_bin_type=True)


def _pack_items(items: list[Any], name: str) -> bytes:
    try:
        return _pack(_RECORD_PACKERS, items)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot encode a {name} record: {exc}") from None


def _unpack_items(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, strict_map_key=False)
    except Exception as exc:  # corrupt input: msgpack raises several unrelated types
        raise SerializationError(f"cannot decode a {what}: {_why(exc)}") from None


def encode_record(obj: Any) -> bytes:
    """Encode a frozen dataclass record positionally (no class tag)."""
    return _pack_items(pack_record(obj), type(obj).__qualname__)


def decode_record(cls: type[T], data: bytes) -> T:
    """Decode bytes written by ``encode_record`` for a ``cls`` record."""
    return unpack_record(cls, _unpack_items(data, f"{cls.__qualname__} record"))


def encode_event(event: HistoryEvent) -> bytes:
    """Encode a history event as ``[class_name, field1, field2, ...]``."""
    name = type(event).__name__
    if EVENT_TYPES.get(name) is not type(event):
        raise SerializationError(f"{type(event).__qualname__} is not a history event type")
    return _pack_items([name, *pack_record(event)], name)


def decode_event(data: bytes) -> HistoryEvent:
    """Decode a history event written by ``encode_event`` (by this or an older version)."""
    items = _unpack_items(data, "history event")
    if type(items) is not list or not items or type(items[0]) is not str:
        raise SerializationError("cannot decode a history event: not a tagged record")
    cls = EVENT_TYPES.get(items[0])
    if cls is None:
        raise SerializationError(f"cannot decode a history event: unknown type {items[0]!r}")
    return unpack_record(cls, items[1:])
