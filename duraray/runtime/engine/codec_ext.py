"""The msgpack layer under the codec: ext types, timestamps and reusable packers.

Payloads carry the Python types msgpack lacks (ints beyond 64 bits, tuples, datetimes,
dates, timedeltas, UUIDs, Decimals) as msgpack ext types. Their type codes and byte
layouts are written to disk, so they never change: ``_default`` (the packer's hook) turns
each supported value into its ext type or plain equivalent, and ``_ext_hook``/``_list_hook``
(the unpacker's hooks) turn them back. Dataclasses, and subclasses of the supported types,
resolve to an encoder once per class (``_find_encoder``), cached in ``_ENCODERS``.

Also here, for the modules above it: UTC microsecond timestamps (how records store times)
and per-thread reusable packers. ``codec.encode`` and ``codec.decode`` drive these hooks;
nothing outside the codec modules should need them.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import struct
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from operator import attrgetter
from typing import Any

import msgpack

from duraray._errors import SerializationError

_Conv = Callable[[Any], Any]

#: The widest int a payload may hold, in bits (sign apart): ``abs(n) < 2**4096``, at most
#: 1,234 decimal digits, so every stored int can be rendered as JSON text. Enforced by the
#: int encoder below (the only place an int that wide is seen), hence defined here.
MAX_INT_BITS = 4096

# -- Timestamps: records store times as microseconds since the epoch, in UTC ----------------

_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH_NAIVE.replace(tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def utc_micros(dt: datetime) -> int:
    """Microseconds since the Unix epoch in UTC; a naive ``dt`` is taken to be UTC."""
    return (dt - (_EPOCH_NAIVE if dt.tzinfo is None else _EPOCH_UTC)) // _ONE_US


def from_utc_micros(micros: int) -> datetime:
    """The tz-aware UTC datetime ``micros`` microseconds after the Unix epoch."""
    return _EPOCH_UTC + timedelta(0, 0, micros)  # positional: measurably faster on decode


# -- Shared by the codec modules ------------------------------------------------------------


class _PackerPool(threading.local):
    """One reusable ``msgpack.Packer`` per thread: about 3x cheaper than ``packb`` per call."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.packer: Any = None


def _pack(pool: _PackerPool, obj: Any) -> bytes:
    # The packer is taken out while in use, so a re-entrant call (user code run from inside
    # a pack, e.g. a property) gets a fresh one instead of corrupting the buffer. One that
    # raised, or grew its buffer past 1 MiB, is not put back.
    packer = pool.packer or msgpack.Packer(**pool.options)
    pool.packer = None
    data: bytes = packer.pack(obj)
    if len(data) < 1 << 20:
        pool.packer = packer
    return data


# -- Writing payloads -----------------------------------------------------------------------

# Ext type codes are written to disk: never renumber them.
_EXT_BIGINT, _EXT_TUPLE, _EXT_DATETIME, _EXT_DATE, _EXT_TIMEDELTA = 1, 2, 3, 4, 5
_EXT_UUID, _EXT_DECIMAL = 6, 7
_ExtType = msgpack.ExtType
_Q, _QQ, _I, _III = (struct.Struct(f) for f in (">q", ">qq", ">i", ">iii"))

# A tuple is written as an array whose first item is this empty ext marker: the same packer
# carries on (one nesting budget, so a cycle through tuples is still caught) and the list
# hook rebuilds the tuple. Only this codec writes ext 2 (a raw msgpack.ExtType is no
# supported payload type), so no user list starts with the marker.
_TUPLE_MARK = _ExtType(_EXT_TUPLE, b"")
_TUPLE_SENTINEL = object()


class _Unsupported(Exception):
    """Raised inside the packer's ``default`` hook; ``encode`` turns it into a message."""


class _TooWide(Exception):
    """Raised inside the packer's ``default`` hook for an int over ``MAX_INT_BITS``."""


def _enc_int(n: int) -> Any:
    # Exact ints reach here only beyond 64 bits; int subclasses (but bool) at any size.
    if -(1 << 63) <= n < (1 << 64):
        return int(n)
    bits = n.bit_length()
    if bits > MAX_INT_BITS:
        raise _TooWide(n)
    return _ExtType(_EXT_BIGINT, n.to_bytes((bits + 8) // 8, "big", signed=True))


def _enc_tuple(t: tuple[Any, ...]) -> list[Any]:
    return [_TUPLE_MARK, *t]


def _enc_datetime(dt: datetime) -> Any:
    # Wall-clock time and offset are stored apart: exact for every datetime, even near
    # datetime.min/max where converting to UTC would overflow.
    wall = (dt.replace(tzinfo=None) - _EPOCH_NAIVE) // _ONE_US
    offset = dt.utcoffset()
    if offset is None:
        return _ExtType(_EXT_DATETIME, _Q.pack(wall))
    return _ExtType(_EXT_DATETIME, _QQ.pack(wall, offset // _ONE_US))


# With strict_types the packer hands ``default`` every non-native type by exact class, and
# an int only when it overflows 64 bits. Other classes are resolved once, then cached here.
_ENCODERS: dict[type, _Conv] = {
    int: _enc_int,
    tuple: _enc_tuple,
    datetime: _enc_datetime,
    date: lambda d: _ExtType(_EXT_DATE, _I.pack(d.toordinal())),
    timedelta: lambda d: _ExtType(_EXT_TIMEDELTA, _III.pack(d.days, d.seconds, d.microseconds)),
    uuid.UUID: lambda u: _ExtType(_EXT_UUID, u.bytes),
    Decimal: lambda d: _ExtType(_EXT_DECIMAL, str(d).encode("ascii")),
}


class _PayloadState:
    """A thread's payload packer, and its count of parts that may be bad dict keys."""

    __slots__ = ("packer", "suspects")

    def __init__(self) -> None:
        self.packer: Any = None
        self.suspects = 0


# One attribute lookup on a threading.local costs several on a plain object: ``encode``
# takes the thread's state once, then reads and writes its slots.
_PAYLOAD_LOCAL = threading.local()


def _suspect(cls: type, make: _Conv) -> _Conv:
    """``make``, counted in ``suspects`` when ``cls`` is hashable: its dict or list result
    may then be a dict key, which would not decode (an unhashable class can be no key)."""
    if cls.__hash__ is None:
        return make

    def encoder(obj: Any) -> Any:
        _PAYLOAD_LOCAL.state.suspects += 1
        return make(obj)

    return encoder


# Subclasses (namedtuple, OrderedDict, ...) encode as their base type; datetime before date.
_BASE_ENCODERS: tuple[tuple[type, _Conv], ...] = (
    (int, _enc_int),
    (float, float),
    (str, str.__str__),
    (bytes, bytes),
    (bytearray, bytes),
    (dict, dict),
    (list, list),
    *list(_ENCODERS.items())[1:],
)


def _default(obj: Any) -> Any:
    encoder = _ENCODERS.get(type(obj))
    if encoder is None:
        encoder = _find_encoder(type(obj))
        if encoder is None:
            raise _Unsupported(obj)
        _ENCODERS[type(obj)] = encoder  # dict writes are atomic: safe across threads
    return encoder(obj)


def _find_encoder(cls: type) -> _Conv | None:
    if issubclass(cls, enum.Enum):  # an IntEnum is an int, but it would decode as one
        return None
    if dataclasses.is_dataclass(cls):
        names = tuple(f.name for f in dataclasses.fields(cls))
        if len(names) == 1:
            return _suspect(cls, lambda o: {names[0]: getattr(o, names[0])})
        getter = attrgetter(*names)
        return _suspect(cls, lambda o: dict(zip(names, getter(o), strict=False)))
    for base, encoder in _BASE_ENCODERS:
        if issubclass(cls, base):
            return _suspect(cls, encoder) if base is dict or base is list else encoder
    return None


def _payload_packer() -> Any:
    return msgpack.Packer(default=_default, use_bin_type=True, strict_types=True)


# -- Reading payloads -----------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _fixed_tz(offset_us: int) -> timezone:
    return timezone(timedelta(microseconds=offset_us))  # offset 0 gives timezone.utc itself


def _dec_datetime(data: bytes) -> datetime:
    if len(data) == 8:
        return _EPOCH_NAIVE + timedelta(microseconds=_Q.unpack(data)[0])
    wall, offset = _QQ.unpack(data)
    return (_EPOCH_NAIVE + timedelta(microseconds=wall)).replace(tzinfo=_fixed_tz(offset))


_DECODERS: dict[int, _Conv] = {
    _EXT_BIGINT: lambda b: int.from_bytes(b, "big", signed=True),
    _EXT_TUPLE: lambda b: _TUPLE_SENTINEL,
    _EXT_DATETIME: _dec_datetime,
    _EXT_DATE: lambda b: date.fromordinal(_I.unpack(b)[0]),
    _EXT_TIMEDELTA: lambda b: timedelta(*_III.unpack(b)),
    _EXT_UUID: lambda b: uuid.UUID(bytes=b),
    _EXT_DECIMAL: lambda b: Decimal(b.decode("ascii")),
}


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__  # some msgpack errors carry no message


def _ext_hook(code: int, data: bytes) -> Any:
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise SerializationError(f"unknown msgpack ext type {code}")
    return decoder(data)


def _list_hook(items: list[Any]) -> Any:
    return tuple(items[1:]) if items and items[0] is _TUPLE_SENTINEL else items
