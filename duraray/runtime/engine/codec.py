"""msgpack encoding of everything duraray stores or ships: user payloads and engine records.

Payloads (``encode``/``decode``/``convert``) are the values users hand to orchestrations,
activities, events and entities. They are encoded once, at the call site, and travel as
bytes; the supported types round-trip exactly (tuples stay tuples, ints beyond 64 bits,
datetimes with their offset, ...). Dataclass instances encode as plain dicts of their
fields and come back as dataclasses only when the reader names the type (``convert``).

``encode`` only writes what ``decode`` reads back and what the HTTP API and the CLI can
show as JSON; anything else raises SerializationError at the call site, naming the path
of the offending part (``value['a'][3]``):

- containers (lists, tuples, dicts, dataclasses) nest at most ``MAX_DEPTH`` (100) levels;
- ints have at most ``MAX_INT_BITS`` (4096) bits, i.e. at most 1,234 decimal digits, well
  under Python's 4,300-digit int-to-text limit;
- dict keys are None, bool, int, float, str, bytes, datetime, date, timedelta, UUID,
  Decimal, or tuples of these: a dataclass (a dict once encoded) cannot be a key.

Payloads stored before these rules (or damaged) still load: ``decode_or_mark`` returns an
``UndecodablePayload`` marker in place of a value ``decode`` refuses, so listings and status
calls show the record with the marker instead of failing.

Records (``pack_record``/``unpack_record``, ``encode_record``/``decode_record``,
``encode_event``/``decode_event``) are the engine's frozen dataclasses, history events
first. They are written positionally, as a msgpack array in field order, so they stay small
and evolve by the history module's rule: fields are only appended, with defaults. A record
written with fewer fields decodes with the missing ones defaulted; one written with more
(by a newer version) is refused.

Both sides sit on the hot path (every event of every orchestration), so per-class and
per-type-hint work is done once and cached; the per-call work is a dict lookup and a loop.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import struct
import threading
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from operator import attrgetter
from typing import Any, TypeVar

import msgpack

from duraray._errors import SerializationError
from duraray.orchestrations.history import EVENT_TYPES, PAYLOAD_FIELDS, HistoryEvent

T = TypeVar("T")
_Conv = Callable[[Any], Any]

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

#: The deepest nesting of containers (list, tuple, dict, dataclass) a payload may have:
#: ``[[1]]`` is 2 levels deep. Deeper values are refused by ``encode``.
#: The advice every too-large payload error ends with: big data travels by reference.
BY_REFERENCE = (
    "pass large data by reference instead: write it to shared storage and pass its path or "
    "URI (or a Ray object-store key), as the README's 'Large payloads' section shows"
)

MAX_DEPTH = 100

#: The widest int a payload may hold, in bits (sign apart): ``abs(n) < 2**4096``, at most
#: 1,234 decimal digits, so every stored int can be rendered as JSON text.
MAX_INT_BITS = 4096

_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH_NAIVE.replace(tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def utc_micros(dt: datetime) -> int:
    """Microseconds since the Unix epoch in UTC; a naive ``dt`` is taken to be UTC."""
    return (dt - (_EPOCH_NAIVE if dt.tzinfo is None else _EPOCH_UTC)) // _ONE_US


def from_utc_micros(micros: int) -> datetime:
    """The tz-aware UTC datetime ``micros`` microseconds after the Unix epoch."""
    return _EPOCH_UTC + timedelta(0, 0, micros)  # positional: measurably faster on decode


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


# -- Payloads -------------------------------------------------------------------------------

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

_SUPPORTED = (
    "None, bool, int, float, str, bytes, list, tuple, dict, datetime, date, timedelta, "
    "uuid.UUID, decimal.Decimal and dataclass instances"
)
_HINTS: dict[type, str] = {set: "use a list", frozenset: "use a list or a tuple"}


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


def _payload_packer() -> Any:
    return msgpack.Packer(default=_default, use_bin_type=True, strict_types=True)


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


def encode(value: Any, *, max_size: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Encode a user payload; SerializationError if a part of it is unsupported or too big.

    Refused as well: containers nested more than ``MAX_DEPTH`` levels, ints over
    ``MAX_INT_BITS`` bits and dict keys that would not decode (dataclasses): whatever
    ``encode`` returns, ``decode`` reads back and the HTTP API can render.
    """
    try:
        state = _PAYLOAD_LOCAL.state
    except AttributeError:
        state = _PAYLOAD_LOCAL.state = _PayloadState()
    suspects = state.suspects
    # The packer is taken out while in use, so a re-entrant call (user code run from inside
    # a pack, e.g. a property) gets a fresh one instead of corrupting the buffer. One that
    # raised, or grew its buffer past 1 MiB, is not put back.
    packer = state.packer or _payload_packer()
    state.packer = None
    try:
        data: bytes = packer.pack(value)
    except _Unsupported as exc:
        bad = exc.args[0]
        hint = _HINTS.get(type(bad)) or ("encode its .value" if isinstance(bad, enum.Enum) else "")
        raise SerializationError(
            f"cannot encode a value of type {type(bad).__qualname__!r} at {_locate(value, bad)}: "
            f"supported types are {_SUPPORTED}" + (f" ({hint})" if hint else "")
        ) from None
    except _TooWide as exc:
        bad = exc.args[0]
        raise SerializationError(
            f"cannot encode an int of {bad.bit_length()} bits at {_locate(value, bad)}: ints "
            f"are limited to {MAX_INT_BITS} bits (encode a wider one as a str or bytes)"
        ) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # msgpack refuses more than 1024 nesting levels with ValueError: a cycle lands here.
        if isinstance(exc, RecursionError) or "recursion" in str(exc):
            _check(value)  # names the path: the walk stops at MAX_DEPTH, cycle or not
            raise SerializationError(f"cannot encode value: {_TOO_DEEP}") from None
        raise SerializationError(f"cannot encode value: {exc}") from None
    size = len(data)
    if size < 1 << 20:
        state.packer = packer
    if max_size is not None and size > max_size:
        raise SerializationError(
            f"payload of {size} bytes exceeds the limit of {max_size} bytes; {BY_REFERENCE}"
        )
    if state.suspects != suspects or (
        size > MAX_DEPTH
        and type(value) not in _LEAVES
        and (size > _COUNT_UP_TO or len(data.translate(None, _NOT_HEADER_BYTES)) > MAX_DEPTH)
    ):
        _check(value)
    return data


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


def decode(data: bytes | None, type_hint: Any = None) -> Any:
    """Decode a payload written by ``encode``; with ``type_hint``, shape it by ``convert``."""
    if data is None:
        return None
    try:
        value = msgpack.unpackb(
            data, ext_hook=_ext_hook, list_hook=_list_hook, strict_map_key=False
        )
    except Exception as exc:  # corrupt input fails in msgpack or in any ext decoder
        raise SerializationError(
            f"cannot decode a payload of {len(data)} bytes: {_why(exc)}"
        ) from None
    return value if type_hint is None else convert(value, type_hint)


class UndecodablePayload:
    """Stands in for a stored payload that ``decode`` refuses, so the record still shows.

    Payloads stored before ``encode`` enforced its limits (a dataclass as a dict key) or
    damaged on disk load as this marker: ``str()`` is ``<undecodable payload: reason>``,
    which is how the HTTP API and the CLI show it; ``data`` holds the stored bytes and
    ``error`` the reason.
    """

    __slots__ = ("data", "error")

    def __init__(self, data: bytes, error: str) -> None:
        self.data = data
        self.error = error

    def __repr__(self) -> str:
        return f"<undecodable payload: {self.error}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UndecodablePayload):
            return NotImplemented
        return (self.data, self.error) == (other.data, other.error)

    def __hash__(self) -> int:
        return hash((self.data, self.error))


def decode_or_mark(data: bytes | None) -> Any:
    """``decode``, or an ``UndecodablePayload`` marker where ``decode`` would raise.

    For reads that show stored records (status, listings, history): one bad payload marks
    its record instead of failing the whole answer.
    """
    try:
        return decode(data)
    except SerializationError as exc:
        assert data is not None  # decode(None) is None
        return UndecodablePayload(bytes(data), str(exc))


# -- Type-hint conversion (payloads back to dataclasses) ------------------------------------


def _identity(value: Any) -> Any:
    return value


_CONVERTERS: dict[Any, _Conv] = {}


def convert(value: Any, type_hint: Any) -> Any:
    """Shape ``value`` to ``type_hint``: dicts become the hinted dataclasses, recursively.

    Anything that already matches, or that the hint does not describe, passes through
    unchanged; only a dict that cannot build its target dataclass raises SerializationError.
    """
    if type_hint is None or type_hint is Any:
        return value
    return _converter(type_hint)(value)


def _converter(hint: Any) -> _Conv:
    try:
        return _CONVERTERS[hint]
    except KeyError:
        conv = _CONVERTERS[hint] = _build_converter(hint)
        return conv
    except TypeError:  # an unhashable hint (e.g. Annotated with a list): build, don't cache
        return _build_converter(hint)


def _build_converter(hint: Any) -> _Conv:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _converter(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return _union_converter([a for a in args if a is not type(None)])
    if isinstance(hint, typing.NewType):
        return _converter(hint.__supertype__)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        # Bound lazily: the class's field converters are built on first use, so a dataclass
        # that refers to itself (a tree node) does not recurse here.
        return functools.partial(_to_dataclass, hint)
    if hint is tuple or origin is tuple:
        if args and args[-1] is not Ellipsis:
            items = [_converter(a) for a in args]
            return lambda v: (
                tuple([c(x) for c, x in zip(items, v, strict=True)])
                if isinstance(v, (list, tuple)) and len(v) == len(items)
                else v
            )
        return _sequence_converter(tuple, _converter(args[0]) if args else _identity)
    if hint is list or origin is list:
        return _sequence_converter(list, _converter(args[0]) if args else _identity)
    if origin is dict and len(args) == 2:
        key, item = _converter(args[0]), _converter(args[1])
        if key is _identity and item is _identity:
            return _identity
        return lambda v: {key(k): item(x) for k, x in v.items()} if isinstance(v, dict) else v
    return _identity  # plain classes, Any, Literal, TypeVars, unresolved strings


def _sequence_converter(target: type, item: _Conv) -> _Conv:
    # A list or tuple is shaped to the hinted container; anything else passes through.
    def conv(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or (item is _identity and type(value) is target):
            return value
        return target([item(x) for x in value]) if target is tuple else [item(x) for x in value]

    return conv


def _union_converter(members: list[Any]) -> _Conv:
    if len(members) == 1:  # Optional[T]: every converter passes None through
        return _converter(members[0])
    dataclasses_ = [m for m in members if isinstance(m, type) and dataclasses.is_dataclass(m)]
    others = [(typing.get_origin(m) or m, _converter(m)) for m in members if m not in dataclasses_]
    others = [(cls, conv) for cls, conv in others if isinstance(cls, type)]
    as_dict = next((conv for cls, conv in others if issubclass(cls, dict)), None)

    def conv(value: Any) -> Any:
        if isinstance(value, dict) and dataclasses_:
            errors = []
            for cls in dataclasses_:  # the first dataclass the dict fits wins
                try:
                    return _to_dataclass(cls, value)
                except SerializationError as exc:
                    errors.append(str(exc))
            if as_dict is None:
                raise SerializationError("; ".join(errors))
            return as_dict(value)
        return next((c(value) for cls, c in others if isinstance(value, cls)), value)

    return conv


class _DataclassPlan:
    __slots__ = ("converters", "name", "not_init", "required")

    def __init__(self, cls: type) -> None:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # unresolvable forward references: fields pass through as is
            hints = {}
        fields = dataclasses.fields(cls)
        self.name = cls.__qualname__
        self.converters = {f.name: _converter(hints.get(f.name, Any)) for f in fields if f.init}
        self.not_init = frozenset(f.name for f in fields if not f.init)
        self.required = frozenset(f.name for f in fields if f.init and _no_default(f))


def _no_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_dataclass_plan: Callable[[type], _DataclassPlan] = functools.cache(_DataclassPlan)


def _to_dataclass(cls: type, value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    plan = _dataclass_plan(cls)
    kwargs, unknown = {}, []
    for key, item in value.items():
        conv = plan.converters.get(key)
        if conv is not None:
            kwargs[key] = conv(item)
        elif key not in plan.not_init:  # an init=False field was encoded too: skip it
            unknown.append(key)
    missing = sorted(plan.required - kwargs.keys())
    if unknown or missing:
        problems = [f"missing fields {missing}"] if missing else []
        problems += [f"unknown fields {unknown}"] if unknown else []
        raise SerializationError(
            f"cannot build a {plan.name} from a dict: {' and '.join(problems)}"
        )
    return cls(**kwargs)


# -- Records --------------------------------------------------------------------------------

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
    __slots__ = ("getter", "name", "names", "packers", "required", "unpackers")

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
        getter = attrgetter(*self.names) if self.names else (lambda o: ())
        # attrgetter of one name returns the bare value, not a 1-tuple.
        self.getter: _Conv = (lambda o: (getter(o),)) if len(self.names) == 1 else getter


_record_plan: Callable[[type], _RecordPlan] = functools.cache(_RecordPlan)  # built on first use


def pack_record(obj: Any) -> list[Any]:
    """The record's fields as a list of msgpack-ready values, in dataclass field order."""
    plan = _record_plan(type(obj))
    return [v if p is None else p(v) for p, v in zip(plan.packers, plan.getter(obj), strict=False)]


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


class Converter:
    """The codec as the executors' payload converter, with a hub's payload size limit."""

    def __init__(self, max_size: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.max_size = max_size

    def encode(self, value: Any) -> bytes:
        """``encode`` with this converter's size limit."""
        return encode(value, max_size=self.max_size)

    decode = staticmethod(decode)
    convert = staticmethod(convert)
