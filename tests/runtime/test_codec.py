"""Tests of duraray.runtime.engine.codec: payload round-trips, type-hint conversion and records."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import typing
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Optional

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duraray._errors import FailureDetails, SerializationError
from duraray.orchestrations.history import (
    EVENT_TYPES,
    PAYLOAD_FIELDS,
    ExecutionCompleted,
    ExecutionStarted,
    HistoryEvent,
    OrchestrationStatus,
    TaskCompleted,
    TaskFailed,
    TimerCreated,
)
from duraray.runtime.engine import codec
from duraray.runtime.engine.codec import (
    convert,
    decode,
    decode_event,
    decode_record,
    encode,
    encode_event,
    encode_record,
    from_utc_micros,
    pack_record,
    unpack_record,
    utc_micros,
)

# -- strategies --------------------------------------------------------------------------

_offsets = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59, seconds=59),
    max_value=timedelta(hours=23, minutes=59, seconds=59),
)
_timezones = st.just(UTC) | st.builds(timezone, _offsets)
_datetimes = st.datetimes() | st.datetimes(timezones=_timezones)
_hashable_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**512), max_value=2**512)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | _datetimes
    | st.dates()
    | st.timedeltas()
    | st.uuids()
    | st.decimals(allow_nan=False, allow_infinity=False)
)
_hashables = st.recursive(
    _hashable_leaves, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=5
)
_payloads = st.recursive(
    _hashable_leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(_hashables, inner, max_size=5)
    ),
    max_leaves=25,
)


def _shape(value: Any) -> Any:
    """A comparable form of ``value`` that also tells types apart (1 vs True, list vs tuple)."""
    if isinstance(value, dict):
        return ("dict", [(_shape(k), _shape(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_shape(v) for v in value])
    if isinstance(value, datetime):
        # fold is not carried (see codec): compare the wall time and the tzinfo exactly.
        return ("datetime", value.replace(fold=0).isoformat(), repr(value.tzinfo))
    return (type(value).__name__, repr(value))


# -- payloads: round trips ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(_payloads)
def test_every_supported_payload_round_trips_exactly(value: Any) -> None:
    """Every supported value decodes equal to what was encoded, with the same types."""
    actual = decode(encode(value))
    assert value == actual
    assert _shape(value) == _shape(actual)


def test_tuple_stays_tuple_and_list_stays_list() -> None:
    """Tuples (nested, empty, as dict keys) come back as tuples and lists as lists."""
    value = {(1, ("a",)): [(), [1, (2, [3])]], "t": (None,)}
    actual = decode(encode(value))
    assert _shape(value) == _shape(actual)


@pytest.mark.parametrize(
    "number", [2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**100, -(10**100)]
)
def test_ints_of_any_size_round_trip(number: int) -> None:
    """Ints at and beyond the 64-bit range round-trip exactly."""
    assert number == decode(encode(number))


def test_aware_datetime_keeps_its_offset_and_utc_stays_utc() -> None:
    """An aware datetime decodes with a fixed offset equal to its own; UTC is timezone.utc."""
    ist = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    utc = datetime(2024, 5, 1, 7, 0, 15, 1, tzinfo=UTC)
    actual_ist, actual_utc = decode(encode([ist, utc]))
    assert (ist, timedelta(hours=5, minutes=30)) == (actual_ist, actual_ist.utcoffset())
    assert UTC is actual_utc.tzinfo
    assert utc == actual_utc


def test_naive_datetime_stays_naive() -> None:
    """A naive datetime decodes naive, to the microsecond, also at the ends of its range."""
    values = [datetime(2024, 1, 2, 3, 4, 5, 678901), datetime.min, datetime.max]
    actual = decode(encode(values))
    assert values == actual
    expected_tz = [None, None, None]
    assert expected_tz == [dt.tzinfo for dt in actual]


def test_nan_and_infinities_round_trip() -> None:
    """NaN and both infinities are carried as floats."""
    actual = decode(encode([math.nan, math.inf, -math.inf]))
    assert (True, math.inf, -math.inf) == (math.isnan(actual[0]), actual[1], actual[2])


def test_bytearray_and_memoryview_decode_as_bytes() -> None:
    """Byte-like values encode as msgpack bin and come back as bytes."""
    expected = [b"ab", b"cd"]
    assert expected == decode(encode([bytearray(b"ab"), memoryview(b"cd")]))


def test_subclasses_of_supported_types_encode_as_their_base() -> None:
    """A namedtuple, an OrderedDict and a str subclass decode as tuple, dict and str."""
    import collections

    point = collections.namedtuple("point", "x y")
    value = [point(1, 2), collections.OrderedDict(a=1), type("S", (str,), {})("s")]
    assert _shape([(1, 2), {"a": 1}, "s"]) == _shape(decode(encode(value)))


def test_decode_none_is_none() -> None:
    """decode(None) is None (an absent payload)."""
    assert None is decode(None)


# -- payloads: dataclasses and convert ---------------------------------------------------


@dataclass
class Item:
    sku: str
    qty: int = 1


@dataclass
class Address:
    city: str
    zip_code: str | None = None


@dataclass
class Order:
    id: int
    address: Address
    items: list[Item]
    gift: Optional[Item] = None  # noqa: UP045 - Optional is what is being tested
    pair: tuple[Item, int] | None = None
    by_sku: dict[str, Item] = field(default_factory=dict)
    history: tuple[Address, ...] = ()


@dataclass
class Node:
    name: str
    children: list[Node] = field(default_factory=list)


@dataclass
class Refund:
    refund_id: str


_ORDER = Order(
    id=7,
    address=Address("Oslo"),
    items=[Item("a"), Item("b", 3)],
    gift=Item("g"),
    pair=(Item("p"), 2),
    by_sku={"a": Item("a")},
    history=(Address("Rome", "00100"),),
)


def test_dataclass_decodes_as_plain_dict_without_a_hint() -> None:
    """Without a type hint a dataclass comes back as a dict of its fields, recursively."""
    expected = {"city": "Oslo", "zip_code": None}
    assert expected == decode(encode(Address("Oslo")))
    expected_item = {"sku": "a", "qty": 1}
    assert expected_item == decode(encode(_ORDER))["items"][0]


def test_dataclass_decodes_as_dataclass_with_a_hint() -> None:
    """With a type hint nested dataclasses, lists, tuples, dicts and Optionals are rebuilt."""
    expected = _ORDER
    assert expected == decode(encode(_ORDER), Order)


def test_optional_dataclass_field_may_be_none() -> None:
    """An Optional dataclass field that holds None stays None."""
    order = Order(id=1, address=Address("x"), items=[])
    assert order == decode(encode(order), Order)


def test_self_referencing_dataclass_type_is_rebuilt() -> None:
    """A dataclass whose field refers to its own class converts recursively."""
    tree = Node("root", [Node("a", [Node("a1")]), Node("b")])
    assert tree == decode(encode(tree), Node)


def test_convert_handles_container_hints() -> None:
    """list[T], tuple[T, ...], tuple[A, B] and dict[K, V] hints shape their items."""
    raw = {"sku": "x", "qty": 2}
    assert [Item("x", 2)] == convert([raw], list[Item])
    assert (Item("x", 2), Item("x", 2)) == convert([raw, raw], tuple[Item, ...])
    assert (Item("x", 2), "y") == convert([raw, "y"], tuple[Item, str])
    assert {1: Item("x", 2)} == convert({1: raw}, dict[int, Item])


def test_convert_union_picks_the_dataclass_the_dict_fits() -> None:
    """A union of dataclasses builds the first member whose fields the dict matches."""
    assert Refund("r1") == convert({"refund_id": "r1"}, Item | Refund)
    assert Item("s") == convert({"sku": "s"}, Item | Refund | None)
    expected_dict, expected_int = {"other": 1}, 5
    assert expected_dict == convert({"other": 1}, Item | dict[str, int])
    assert expected_int == convert(5, Item | int)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (Item("a"), Item),
        ({"sku": "a"}, Any),
        ({"sku": "a"}, None),
        ("text", Item),
        ([1, 2], dict[str, int]),
        (3, list[Item]),
        ({"a": 1}, "UnresolvedForwardRef"),
        (1.5, int),
    ],
)
def test_convert_passes_matching_and_mismatching_values_through(value: Any, hint: Any) -> None:
    """Values that already match, Any/None/unknown hints and plain mismatches are unchanged."""
    assert value is convert(value, hint)


@pytest.mark.parametrize(
    ("value", "message"),
    [({"qty": 1}, "missing fields ['sku']"), ({"sku": "a", "colour": "red"}, "unknown fields")],
)
def test_convert_rejects_a_dict_that_cannot_build_the_dataclass(value: Any, message: str) -> None:
    """A dict with missing required fields or unknown keys raises SerializationError."""
    with pytest.raises(
        SerializationError, match=re.escape(f"cannot build a Item from a dict: {message}")
    ):
        convert(value, Item)


# -- payloads: errors --------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"


class Opaque:
    pass


def _generator() -> typing.Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        (frozenset(), "frozenset"),
        (Colour.RED, "Colour"),
        (enum.IntEnum("Level", "LOW")(1), "Level"),
        (Opaque(), "Opaque"),
        (lambda: 1, "function"),
        (_generator(), "generator"),
        (Opaque, "type"),
    ],
)
def test_unsupported_types_raise_serialization_error(value: Any, type_name: str) -> None:
    """Sets, enums, arbitrary objects, functions, generators and classes are refused by name."""
    with pytest.raises(SerializationError, match=f"of type '{type_name}' at value:"):
        encode(value)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"items": [1, 2, Opaque()]}, "value['items'][2]"),
        ([(0, {"k": {1, 2}})], "value[0][1]['k']"),
        ({"k": {frozenset(): 1}}, "a key of value['k']"),
        (Order(id=1, address=Address(typing.cast(str, Opaque())), items=[]), "value.address.city"),
    ],
)
def test_unsupported_value_error_names_its_path(value: Any, path: str) -> None:
    """The error says where in the value the unsupported part was found."""
    with pytest.raises(SerializationError, match=re.escape(f" at {path}: supported types are")):
        encode(value)


def test_oversized_payload_raises() -> None:
    """A payload larger than max_size raises with both sizes in the message."""
    with pytest.raises(
        SerializationError, match="payload of 1003 bytes exceeds the limit of 1000 bytes"
    ):
        encode(b"x" * 1000, max_size=1000)
    expected_size = 1003  # 3 bytes of bin16 header
    assert expected_size == len(encode(b"x" * 1000, max_size=None))


def test_default_limit_is_16_mib() -> None:
    """The default payload limit is 16 MiB."""
    expected = 16 * 1024 * 1024
    assert expected == codec.DEFAULT_MAX_PAYLOAD_BYTES
    with pytest.raises(SerializationError, match="exceeds the limit"):
        encode(b"x" * codec.DEFAULT_MAX_PAYLOAD_BYTES)


def _self_referencing() -> list[Any]:
    looped: list[Any] = []
    looped.append(looped)
    through_dict: dict[str, Any] = {}
    through_dict["me"] = [through_dict]
    inner: list[Any] = []
    through_tuple = (inner,)
    inner.append(through_tuple)
    return [looped, through_dict, through_tuple]


@pytest.mark.parametrize("value", _self_referencing(), ids=["list", "dict", "tuple"])
def test_self_referencing_value_raises_serialization_error(value: Any) -> None:
    """A value that contains itself raises SerializationError, not RecursionError."""
    with pytest.raises(SerializationError, match="nests too deeply"):
        encode(value)


@pytest.mark.parametrize(
    "data",
    [b"\xc1", b"\x93\x01", b"\x92\x01\x02\x03", b"\xd4\x63x", b"\xd5\x03\x00\x01", b"\xd4\x07\xff"],
    ids=["reserved-byte", "truncated", "trailing", "unknown-ext", "bad-datetime", "bad-decimal"],
)
def test_corrupt_payload_raises_serialization_error(data: bytes) -> None:
    """Bytes that are not a valid payload raise SerializationError."""
    with pytest.raises(SerializationError, match="cannot decode a payload"):
        decode(data)


# -- records: history events -------------------------------------------------------------

_utc_datetimes = st.datetimes(timezones=st.just(UTC))
_failures: st.SearchStrategy[FailureDetails] = st.deferred(
    lambda: st.builds(
        FailureDetails,
        message=st.text(max_size=20),
        error_type=st.text(max_size=20),
        stack_trace=st.none() | st.text(max_size=40),
        inner=st.none() | _failures,
        non_retriable=st.booleans(),
    )
)


def _field_strategy(name: str, hint: Any) -> st.SearchStrategy[Any]:
    if name in PAYLOAD_FIELDS:
        return st.none() | st.binary(max_size=20)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is not dict and len(args) == 1:  # X | None
        return st.none() | _field_strategy(name, args[0])
    simple: dict[Any, st.SearchStrategy[Any]] = {
        datetime: _utc_datetimes,
        str: st.text(max_size=20),
        int: st.integers(min_value=-(2**63), max_value=2**63 - 1),
        bool: st.booleans(),
        OrchestrationStatus: st.sampled_from(OrchestrationStatus),
        FailureDetails: _failures,
    }
    if hint in simple:
        return simple[hint]
    if hint == list[str]:
        return st.lists(st.text(max_size=5), max_size=3)
    assert dict[str, str] == hint
    return st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)


def _required(cls: type) -> list[dataclasses.Field[Any]]:
    return [
        f
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


_EVENT_CLASSES = pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))


@_EVENT_CLASSES
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_event_type_round_trips_with_all_fields_set(
    cls: type[HistoryEvent], data: st.DataObject
) -> None:
    """Every event class decodes equal to what was encoded, whatever its field values."""
    hints = typing.get_type_hints(cls)
    event = data.draw(
        st.builds(
            cls, **{f.name: _field_strategy(f.name, hints[f.name]) for f in dataclasses.fields(cls)}
        )
    )
    assert event == decode_event(encode_event(event))


@_EVENT_CLASSES
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_event_type_round_trips_with_defaults(
    cls: type[HistoryEvent], data: st.DataObject
) -> None:
    """An event built from its required fields only decodes with the same defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: data.draw(_field_strategy(f.name, hints[f.name])) for f in _required(cls)}
    event = cls(**kwargs)
    assert event == decode_event(encode_event(event))


@_EVENT_CLASSES
def test_event_written_with_fewer_trailing_fields_fills_defaults(cls: type[HistoryEvent]) -> None:
    """An event written with only its required fields (an older writer) decodes with defaults."""
    examples = {
        datetime: datetime(2024, 1, 1, tzinfo=UTC),
        str: "s",
        int: 3,
        FailureDetails: FailureDetails("m", "E"),
        OrchestrationStatus: OrchestrationStatus.COMPLETED,
        list[str]: ["@a@b"],
    }
    hints = typing.get_type_hints(cls)
    required = _required(cls)
    expected = cls(**{f.name: examples[hints[f.name]] for f in required})
    old_layout = [cls.__name__, *pack_record(expected)[: len(required)]]
    assert expected == decode_event(msgpack.packb(old_layout))


def test_truncated_execution_started_takes_the_documented_defaults() -> None:
    """An ExecutionStarted with only its first four fields gets None/empty defaults."""
    expected = ExecutionStarted(
        timestamp=datetime(2024, 1, 1, tzinfo=UTC), name="n", instance_id="i", execution_id="e"
    )
    data = msgpack.packb(["ExecutionStarted", utc_micros(expected.timestamp), "n", "i", "e"])
    assert expected == decode_event(data)


def test_event_with_extra_trailing_fields_is_refused() -> None:
    """An event carrying more fields than this version knows raises SerializationError."""
    data = msgpack.packb(["TaskCompleted", 0, 1, None, "from-the-future"])
    with pytest.raises(SerializationError, match="newer version"):
        decode_event(data)


def test_event_missing_required_fields_is_refused() -> None:
    """An event without all its required fields raises SerializationError."""
    with pytest.raises(SerializationError, match="TaskCompleted record has 1 fields"):
        decode_event(msgpack.packb(["TaskCompleted", 0]))


def test_failure_details_with_inner_round_trips() -> None:
    """A failure with a nested inner failure survives an event round-trip."""
    inner = FailureDetails("boom", "ValueError", "trace", None, True)
    event = TaskFailed(
        timestamp=datetime(2024, 1, 1, tzinfo=UTC),
        task_scheduled_id=4,
        failure=FailureDetails("wrapped", "duraray.TaskFailedError", None, inner),
    )
    assert event == decode_event(encode_event(event))


def test_event_layout_is_positional_and_tagged() -> None:
    """An event is written as [class name, fields in order], datetimes as UTC microseconds."""
    event = ExecutionCompleted(
        timestamp=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
        status=OrchestrationStatus.COMPLETED,
        result=b"\xc0",
    )
    expected = ["ExecutionCompleted", 1_000_000, "COMPLETED", b"\xc0", None]
    assert expected == msgpack.unpackb(encode_event(event))


def test_sparse_field_is_written_only_when_set() -> None:
    """TimerCreated.final_fire_at (SPARSE, appended after data was stored) is left out
    while None, so a timer recorded without it keeps its stored three-field layout; set,
    it is written and read back."""
    at = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    old = TimerCreated(timestamp=at, event_id=2, fire_at=at)
    expected_old = ["TimerCreated", 1_000_000, 2, 1_000_000]
    assert expected_old == msgpack.unpackb(encode_event(old))
    assert old == decode_event(encode_event(old))
    final = at + timedelta(seconds=1)
    new = TimerCreated(timestamp=at, event_id=2, fire_at=at, final_fire_at=final)
    expected_new = [*expected_old, 2_000_000]
    assert expected_new == msgpack.unpackb(encode_event(new))
    assert new == decode_event(encode_event(new))


def test_naive_timestamp_is_taken_as_utc() -> None:
    """A naive datetime in an event encodes as UTC and decodes tz-aware."""
    event = TaskCompleted(timestamp=datetime(2024, 3, 1, 12), task_scheduled_id=1)
    expected = datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert expected == decode_event(encode_event(event)).timestamp
    assert UTC is decode_event(encode_event(event)).timestamp.tzinfo


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb(["NoSuchEvent", 0]),
        msgpack.packb([]),
        msgpack.packb({"TaskCompleted": 1}),
        msgpack.packb([7, 0]),
        b"\xc1",
        msgpack.packb(["TaskFailed", 0, 1, "not-a-failure"]),
    ],
    ids=["unknown-tag", "empty", "map", "int-tag", "corrupt", "bad-nested"],
)
def test_undecodable_event_raises_serialization_error(data: bytes) -> None:
    """An unknown tag or a malformed event raises SerializationError."""
    with pytest.raises(SerializationError, match=r"NoSuchEvent|history event|TaskFailed|Failure"):
        decode_event(data)


def test_payload_field_must_hold_encoded_bytes() -> None:
    """Encoding an event whose payload field holds a raw value raises SerializationError."""
    event = TaskCompleted(timestamp=datetime(2024, 1, 1, tzinfo=UTC), task_scheduled_id=1, result=5)
    with pytest.raises(SerializationError, match=r"TaskCompleted\.result holds a int"):
        encode_event(event)


def test_encode_event_rejects_non_events() -> None:
    """encode_event refuses records that are not history event classes."""
    with pytest.raises(SerializationError, match="not a history event"):
        encode_event(FailureDetails("m", "E"))  # type: ignore[arg-type]


# -- records: generic --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    until: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionRecord:
    name: str
    count: int
    ratio: float
    enabled: bool
    blob: bytes
    colour: Colour
    lease: Lease
    previous: Lease | None
    labels: dict[str, str]
    sizes: list[int]
    pair: tuple[str, int]
    leases: list[Lease]
    by_owner: dict[str, Lease]
    window: tuple[datetime, datetime] | None
    batches: list[tuple[int, int]]
    status: OrchestrationStatus | None = None
    failure: FailureDetails | None = None
    note: str | None = None


@dataclass(frozen=True)
class UnsupportedRecord:
    id: uuid.UUID


def test_generic_record_round_trips() -> None:
    """A record with every supported field kind, containers of records included, round-trips."""
    record = PartitionRecord(
        name="p0",
        count=-3,
        ratio=0.25,
        enabled=True,
        blob=b"\x00\xff",
        colour=Colour.RED,
        lease=Lease("w1", datetime(2030, 1, 1, tzinfo=UTC)),
        previous=None,
        labels={"a": "b"},
        sizes=[1, 2],
        pair=("x", 1),
        leases=[Lease("a"), Lease("b", datetime(2031, 1, 1, tzinfo=UTC))],
        by_owner={"c": Lease("c")},
        window=(datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)),
        batches=[(1, 2), (3, 4)],
        status=OrchestrationStatus.SUSPENDED,
        failure=FailureDetails("m", "E", inner=FailureDetails("i", "F")),
    )
    assert record == decode_record(PartitionRecord, encode_record(record))
    assert record == unpack_record(PartitionRecord, pack_record(record))


def test_pack_record_is_positional() -> None:
    """pack_record lists the fields in order with enums by value and datetimes as micros."""
    expected = ["w", 86_400_000_000]
    assert expected == pack_record(Lease("w", datetime(1970, 1, 2, tzinfo=UTC)))


def test_record_with_unsupported_field_type_raises() -> None:
    """A record field whose type the record codec cannot carry raises SerializationError."""
    with pytest.raises(SerializationError, match=r"UnsupportedRecord\.id"):
        encode_record(UnsupportedRecord(uuid.uuid4()))


def test_corrupt_record_raises() -> None:
    """Corrupt record bytes raise SerializationError."""
    with pytest.raises(SerializationError):
        decode_record(Lease, b"\x92\xa1")


# -- utc micros --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=_timezones | st.none(),
    )
)
def test_utc_micros_round_trips(value: datetime) -> None:
    """utc_micros/from_utc_micros round-trip a datetime's instant (naive taken as UTC)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    assert aware == from_utc_micros(utc_micros(value))


def test_utc_micros_counts_from_the_epoch_and_sorts() -> None:
    """utc_micros is microseconds since 1970-01-01 UTC, so it sorts like the instants."""
    plus_one = timezone(timedelta(hours=1))
    values = [
        datetime(1969, 12, 31, 23, 59, 59, 999999),
        datetime(1970, 1, 1, 1, 0, 0, 1, tzinfo=plus_one),
        datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
    ]
    expected = [-1, 1, 1_000_000]
    assert expected == [utc_micros(v) for v in values]


def test_from_utc_micros_is_utc_aware() -> None:
    """from_utc_micros returns a timezone.utc datetime."""
    assert datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) == from_utc_micros(1)
    assert UTC is from_utc_micros(1).tzinfo


def test_date_round_trips() -> None:
    """A date (not a datetime) round-trips as a date."""
    assert _shape(date(2024, 2, 29)) == _shape(decode(encode(date(2024, 2, 29))))
