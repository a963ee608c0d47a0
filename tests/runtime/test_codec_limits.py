"""The payload codec encodes only what it decodes and the HTTP API renders (issue 11).

- ``encode`` refuses, at the call site, dict keys that would not decode (a dataclass),
  containers nested over ``MAX_DEPTH`` levels and ints over ``MAX_INT_BITS`` bits, naming
  the path to the part;
- a property test: whatever ``encode`` accepts, ``decode`` returns equal and the HTTP and
  CLI renderings turn into JSON text; it refuses exactly what the rules say;
- records stored before those rules (written here with the check switched off) still load:
  status calls, listings and history mark the bad payload instead of failing.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import duraray as dr
from duraray._errors import SerializationError
from duraray.entities.scheduler import EntityRecord
from duraray.orchestrations.history import EventRaised
from duraray.runtime.cli import _app as cli
from duraray.runtime.cli._format import _jsonable
from duraray.runtime.client import sync
from duraray.runtime.engine import codec, codec_ext
from duraray.runtime.engine.codec import (
    MAX_DEPTH,
    MAX_INT_BITS,
    UndecodablePayload,
    decode,
    decode_or_mark,
    encode,
)
from duraray.runtime.http.payloads import entity_json, event_json, render, status_json, to_json
from duraray.testing import ManualClock, run_in_process


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class Box:
    item: Any


class HashableList(list[Any]):
    def __hash__(self) -> int:  # type: ignore[override]
        return len(self)


class HashableDict(dict[Any, Any]):
    def __hash__(self) -> int:  # type: ignore[override]
        return len(self)


def nested(depth: int, leaf: Any = 1, kind: str = "list") -> Any:
    """``leaf`` inside ``depth`` containers of ``kind`` (list, tuple, dict or dataclass)."""
    value = leaf
    for _ in range(depth):
        value = {
            "list": lambda v: [v],
            "tuple": lambda v: (v,),
            "dict": lambda v: {"k": v},
            "dataclass": Box,
        }[kind](value)
    return value


def refusal(value: Any) -> str:
    with pytest.raises(SerializationError) as info:
        encode(value)
    return str(info.value)


# -- dict keys -------------------------------------------------------------------------------


def test_a_dataclass_key_is_refused_at_encode() -> None:
    """Defect: {Point(1, 2): 1} was stored, then failed every read of the hub."""
    message = refusal({Point(1, 2): 1})
    assert "dict key of type 'Point' in value:" in message
    assert "dict keys must be None, bool, int, float, str" in message


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": [0, {Point(1, 2): 1}]}, "in value['a'][1]"),
        ({"a": {(1, Point(1, 2)): 1}}, "of type 'tuple' holding a 'Point' in value['a']"),
        ([Box({Point(0, 0): 1})], "in value[0].item"),
        ({HashableList([1]): 1}, "of type 'HashableList'"),
        ({HashableDict(a=1): 1}, "of type 'HashableDict'"),
    ],
    ids=["nested", "in-tuple-key", "in-dataclass", "list-subclass", "dict-subclass"],
)
def test_a_key_that_would_not_decode_is_refused_with_its_path(value: Any, where: str) -> None:
    """Wherever the bad key sits, the message names the dict that holds it."""
    assert where in refusal(value)


@pytest.mark.parametrize(
    "key",
    [
        None,
        True,
        -(2**100),
        1.5,
        "s",
        b"b",
        (1, ("a", None)),
        timedelta(1),
        uuid.UUID(int=7),
        Decimal("1.5"),
    ],
)
def test_keys_that_decode_are_accepted(key: Any) -> None:
    """Scalars, ext types and tuples of them stay valid keys."""
    value = {key: [Point(1, 2)], "x": Point(3, 4)}  # dataclasses as values are fine
    assert decode(encode(value)) == {key: [{"x": 1, "y": 2}], "x": {"x": 3, "y": 4}}


def test_a_refused_input_is_not_stored() -> None:
    """The client refuses the input before anything reaches a partition."""
    app = dr.App("limits-refused")

    @app.orchestration
    def echo(ctx: dr.OrchestrationContext, value: Any = None) -> Any:
        return value

    with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
        with pytest.raises(SerializationError, match=r"orchestration input: .*'Point'"):
            client.schedule_new_orchestration(echo, input={Point(1, 2): 1}, instance_id="a")
        with pytest.raises(SerializationError, match="nests too deeply"):
            client.schedule_new_orchestration(echo, input=nested(600), instance_id="b")
        with pytest.raises(SerializationError, match="int of 20001 bits"):
            client.schedule_new_orchestration(echo, input=2**20000, instance_id="c")
        assert [] == client.query_instances().items


# -- depth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "tuple", "dict", "dataclass"])
def test_max_depth_is_accepted_and_one_more_is_refused(kind: str) -> None:
    """MAX_DEPTH levels of any container round-trip; one more level is refused."""
    assert 100 == MAX_DEPTH
    ok = nested(MAX_DEPTH, kind=kind)
    decoded = decode(encode(ok))
    if kind != "dataclass":
        assert ok == decoded
    message = refusal(nested(MAX_DEPTH + 1, kind=kind))
    assert "nests too deeply: more than 100 levels" in message


def test_600_levels_are_refused_with_the_path() -> None:
    """Defect: 600 nested lists were stored, then the status page answered 500."""
    message = refusal({"a": [0, nested(600)]})
    assert "at value['a'][1][0][0][0][0]...(" in message


def test_depth_counts_across_kinds_and_through_a_cycle() -> None:
    """Lists, tuples, dicts and dataclasses add up; a cycle is cut at the limit."""
    mixed = nested(40, nested(40, nested(21, kind="dataclass"), kind="dict"), kind="tuple")
    assert "nests too deeply" in refusal(mixed)
    encode(nested(40, nested(40, nested(20, kind="dataclass"), kind="dict"), kind="tuple"))
    looped: list[Any] = []
    looped.append(looped)
    assert "nests too deeply" in refusal({"loop": looped})


def test_a_deep_tuple_key_is_refused() -> None:
    """A key counts its levels too: it is rendered as JSON text."""
    assert "a dict key in value['a']" in refusal({"a": {nested(150, kind="tuple"): 1}})


@pytest.mark.parametrize(
    "wrap",
    [
        lambda deep: [deep, "x" * 70_000],  # over the counting threshold: walked
        lambda deep: [deep, b"\x90" * 5_000],  # header-like bytes: counted, then walked
        lambda deep: [deep, *range(2000)],
    ],
    ids=["large", "header-bytes", "many-items"],
)
def test_the_fast_paths_never_hide_a_deep_part(wrap: Any) -> None:
    """Whatever skips the walk, a part over the limit is still found."""
    assert "nests too deeply" in refusal(wrap(nested(MAX_DEPTH)))
    encode(wrap(nested(MAX_DEPTH - 1)))


# -- ints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [2**MAX_INT_BITS - 1, -(2**MAX_INT_BITS) + 1, 2**64, -(2**63)])
def test_ints_up_to_the_limit_round_trip(number: int) -> None:
    """Ints of up to MAX_INT_BITS bits round-trip (and print as JSON numbers)."""
    assert number == decode(encode(number))
    assert number == json.loads(json.dumps(to_json(number)))


def test_wider_ints_are_refused_with_the_path() -> None:
    """Defect: 2**20000 was stored, then JSON rendering of it answered 500."""
    assert 4096 == MAX_INT_BITS
    assert "cannot encode an int of 20001 bits at value['a'][1]" in refusal({"a": [0, 2**20000]})
    assert "int of 4097 bits" in refusal(2**MAX_INT_BITS)
    assert "int of 4097 bits" in refusal(-(2**MAX_INT_BITS) - 1)

    class Big(int):
        pass

    assert "int of 5001 bits at value[0]" in refusal([Big(2**5000)])


# -- encode and decode agree -----------------------------------------------------------------

_offsets = st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23))
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.integers(min_value=MAX_INT_BITS - 2, max_value=MAX_INT_BITS + 2).map(lambda b: 2**b)
    | st.integers(min_value=MAX_INT_BITS - 2, max_value=MAX_INT_BITS + 2).map(lambda b: -(2**b))
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.none() | st.just(UTC) | st.builds(timezone, _offsets))
    | st.dates()
    | st.timedeltas()
    | st.uuids()
    | st.decimals(allow_nan=False)
)
_keys = st.recursive(
    _scalars | st.builds(Point, st.integers(0, 3), st.integers(0, 3)),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=4,
)
_trees = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(_keys, inner, max_size=4)
        | st.builds(Box, inner)
        | st.builds(Point, inner, inner)
    ),
    max_leaves=20,
)
_kinds = st.sampled_from(["list", "tuple", "dict", "dataclass"])
_values = _trees | st.builds(
    lambda tree, depth, kind: nested(depth, tree, kind),
    _trees,
    st.integers(min_value=MAX_DEPTH - 5, max_value=MAX_DEPTH + 3),
    _kinds,
)


def _plain(value: Any) -> Any:
    """What ``decode`` gives back for ``value``: dataclasses become dicts of their fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _allowed(value: Any, level: int = 0) -> bool:
    """The rules, written plainly: what ``encode`` must accept."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value.bit_length() <= MAX_INT_BITS
    fields: list[Any]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [getattr(value, f.name) for f in dataclasses.fields(value)]
    elif isinstance(value, list | tuple):
        fields = list(value)
    elif isinstance(value, dict):
        fields = list(value.values())
        if not all(_key_allowed(k, level + 1) for k in value):
            return False
    else:
        return True
    return level < MAX_DEPTH and all(_allowed(f, level + 1) for f in fields)


def _key_allowed(key: Any, level: int) -> bool:
    if dataclasses.is_dataclass(key):
        return False
    if isinstance(key, tuple):
        return level < MAX_DEPTH and all(_key_allowed(k, level + 1) for k in key)
    return not isinstance(key, int) or isinstance(key, bool) or key.bit_length() <= MAX_INT_BITS


@settings(max_examples=300, deadline=None)
@given(_values)
def test_encode_accepts_exactly_what_decodes_and_renders(value: Any) -> None:
    """Accepted values decode equal and render as JSON text; refused ones break a rule."""
    try:
        data = encode(value, max_size=None)
    except SerializationError:
        assert not _allowed(value)
        return
    assert _allowed(value)
    decoded = decode(data)
    assert _plain(value) == decoded
    json.dumps(to_json(decoded), allow_nan=False)
    json.dumps(_jsonable(decoded), indent=2, allow_nan=False)
    assert render(decoded)[1] is None


# -- records stored before the rules load with a marker ---------------------------------------

app = dr.App("limits-degrade")


@app.orchestration
def hold(ctx: dr.OrchestrationContext, value: Any = None) -> Any:
    return (yield ctx.wait_for_external_event("go"))


@pytest.fixture
def client() -> Iterator[dr.Client]:
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as c:
        yield c


def store_unchecked(client: dr.Client, instance_id: str, value: Any) -> None:
    """Start ``hold`` with ``value`` as written by a codec without the new checks."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "_check", lambda value: None)
        mp.setattr(codec_ext, "MAX_INT_BITS", 10**9)  # read where ints are encoded
        client.schedule_new_orchestration(hold, input=value, instance_id=instance_id)
    client.wait_for_orchestration_start(instance_id, timeout=10)


def test_stored_undecodable_input_marks_its_record_only(client: dr.Client) -> None:
    """Defect: one stored {Point(1, 2): 1} made status and listings fail for the hub."""
    client.schedule_new_orchestration(hold, input="fine", instance_id="good")
    store_unchecked(client, "bad", {Point(1, 2): 1})

    state = client.get_orchestration_state("bad")
    assert state is not None
    assert isinstance(state.input, UndecodablePayload)
    assert "unhashable type: 'dict'" in state.payload_errors["input"]
    assert str(state.input).startswith("<undecodable payload: cannot decode")
    assert state.serialized_input == json.dumps(str(state.input))

    listed = {s.instance_id: s for s in client.query_instances().items}
    assert {"good", "bad"} == set(listed)
    assert "fine" == listed["good"].input and {} == listed["good"].payload_errors
    assert ["input"] == list(listed["bad"].payload_errors)

    events = client.get_orchestration_history("bad")
    started = next(e for e in events if type(e).__name__ == "ExecutionStarted")
    assert isinstance(started.input, UndecodablePayload)  # type: ignore[attr-defined]

    body = status_json(state, show_input=False)
    assert body["input"] is None
    assert "unhashable" in body["payloadErrors"]["input"]
    shown = status_json(state, history=events)
    assert shown["input"] == str(state.input)
    assert any("payloadErrors" in e for e in shown["historyEvents"])


def test_stored_deep_and_huge_inputs_render_with_markers(client: dr.Client) -> None:
    """Values stored before the limits decode in Python and render as markers."""
    store_unchecked(client, "deep", nested(600))
    store_unchecked(client, "huge", {"n": 2**20000})
    deep = client.get_orchestration_state("deep")
    huge = client.get_orchestration_state("huge")
    assert deep is not None and huge is not None
    assert nested(600) == deep.input  # Python reads them back
    body = status_json(deep)
    text = json.dumps(body, allow_nan=False)
    assert "<unrenderable: nests deeper than 200 levels>" in text
    assert "nests deeper" in body["payloadErrors"]["input"]
    body = status_json(huge)
    assert {"n": "<unrenderable: an int of 20001 bits>"} == body["input"]
    assert "an int of 20001 bits" == body["payloadErrors"]["input"]
    json.dumps(_jsonable(huge.input))
    json.dumps(_jsonable(deep.input), indent=2)


def test_an_entity_whose_state_cannot_be_decoded_still_shows() -> None:
    """An entity state stored before the rules marks the entity instead of failing."""
    bad_key_map = b"\x81\x81\x01\x02\x03"  # {{1: 2}: 3}: a dict as a key
    record = EntityRecord("@store@bad", state=bad_key_map, last_modified=codec.from_utc_micros(0))
    meta = sync._entity_metadata(record)
    assert isinstance(meta.state, UndecodablePayload)
    assert bad_key_map == meta.state.data
    assert "unhashable" in meta.payload_errors["state"]
    body = entity_json(meta)
    assert body["state"].startswith("<undecodable payload:")
    assert "state" in body["payloadErrors"]
    json.dumps(body, allow_nan=False)


def test_event_json_marks_an_undecodable_field() -> None:
    """A history event's payload field that cannot be decoded becomes the marker."""
    event = EventRaised(
        timestamp=codec.from_utc_micros(0), name="go", input=decode_or_mark(b"\xc1")
    )
    body = event_json(event)
    assert body["input"].startswith("<undecodable payload:")
    assert "input" in body["payloadErrors"]


def test_cli_status_and_list_show_a_bad_record(client: dr.Client) -> None:
    """`duraray status` prints the marker; `duraray list` lists every record."""
    client.schedule_new_orchestration(hold, input="fine", instance_id="good")
    store_unchecked(client, "bad", {Point(1, 2): 1})
    store_unchecked(client, "deep", nested(600))
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(
            cli.main, list(args), obj={"client_factory": lambda: client}, catch_exceptions=False
        )
        assert 0 == result.exit_code, result.output
        return result.stdout

    assert "<undecodable payload:" in run("status", "bad")
    assert "<undecodable payload:" in json.loads(run("--json", "status", "bad"))["input"]
    assert "<unrenderable: nests deeper than 200 levels>" in run("--json", "status", "deep")
    listed = json.loads(run("--json", "list"))
    assert {"good", "bad", "deep"} == {s["instance_id"] for s in listed}
