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

The code lives in modules beside this one; this module is the codec's one entry point
(import ``codec`` and use ``codec.<name>``), and everything it offered before the split
is still importable from here:

- codec_ext.py: msgpack ext types (their codes are on disk), timestamps, reusable packers;
- codec_limits.py: what ``encode`` accepts and how a refusal names the offending part;
- codec_convert.py: decoded payloads shaped to type hints (``convert``);
- codec_records.py: records and history events, packed positionally;
- here: ``encode``/``decode`` of payloads, ``UndecodablePayload`` and ``Converter``.
"""

from __future__ import annotations

import enum
from typing import Any

import msgpack

from duraray._errors import SerializationError
from duraray.runtime.engine.codec_convert import convert
from duraray.runtime.engine.codec_ext import (
    _PAYLOAD_LOCAL,
    MAX_INT_BITS,
    _ext_hook,
    _list_hook,
    _payload_packer,
    _PayloadState,
    _TooWide,
    _Unsupported,
    _why,
    from_utc_micros,
    utc_micros,
)
from duraray.runtime.engine.codec_limits import (
    _COUNT_UP_TO,
    _LEAVES,
    _NOT_HEADER_BYTES,
    _TOO_DEEP,
    BY_REFERENCE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_DEPTH,
    _check,
    _locate,
)
from duraray.runtime.engine.codec_records import (
    T,
    decode_event,
    decode_record,
    encode_event,
    encode_record,
    pack_record,
    unpack_record,
)

# ``encode`` looks ``_check`` up in this module at each call, so a test may patch
# ``codec._check``; the int width limit is read where ints are encoded, so patching it
# takes ``codec_ext.MAX_INT_BITS``.
__all__ = [
    "BY_REFERENCE",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "Converter",
    "SerializationError",
    "T",
    "UndecodablePayload",
    "convert",
    "decode",
    "decode_event",
    "decode_or_mark",
    "decode_record",
    "encode",
    "encode_event",
    "encode_record",
    "from_utc_micros",
    "pack_record",
    "unpack_record",
    "utc_micros",
]

_SUPPORTED = (
    "None, bool, int, float, str, bytes, list, tuple, dict, datetime, date, timedelta, "
    "uuid.UUID, decimal.Decimal and dataclass instances"
)
_HINTS: dict[type, str] = {set: "use a list", frozenset: "use a list or a tuple"}


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


class Converter:
    """The codec as the executors' payload converter, with a hub's payload size limit."""

    def __init__(self, max_size: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self.max_size = max_size

    def encode(self, value: Any) -> bytes:
        """``encode`` with this converter's size limit."""
        return encode(value, max_size=self.max_size)

    decode = staticmethod(decode)
    convert = staticmethod(convert)
