"""Entity ids: ``EntityId(name, key)``, its ``@name@key`` form and its validation."""

from __future__ import annotations

import copy
import pickle

import pytest

from duraray.entities.ids import MAX_ENTITY_ID_LENGTH, EntityId, EntityInstanceId


def test_name_is_lower_cased():
    """The name is stored lower-case, so ``Counter`` and ``counter`` are one entity."""
    expected = EntityId("counter", "k")
    actual = EntityId("Counter", "k")
    assert expected == actual
    assert expected.name == actual.name
    assert hash(expected) == hash(actual)
    expected_name = "counter"
    assert expected_name == actual.name


def test_key_is_case_sensitive():
    """Keys differing only in case name different entities."""
    assert EntityId("counter", "Key") != EntityId("counter", "key")
    expected = "Key"
    assert expected == EntityId("counter", "Key").key


def test_str_is_at_name_at_key():
    """``str()`` writes ``@name@key`` with the lower-cased name."""
    expected = "@counter@Alice"
    assert expected == str(EntityId("Counter", "Alice"))


@pytest.mark.parametrize(
    ("name", "key"),
    [("counter", "k"), ("Counter", "MiXeD"), ("a.b-c_d", "key with spaces"), ("x", "ünïcödé/ø")],
)
def test_parse_round_trips(name, key):
    """Parsing the string form gives back an equal id."""
    entity_id = EntityId(name, key)
    expected = entity_id
    assert expected == EntityId.parse(str(entity_id))


def test_parse_lower_cases_the_name():
    """``parse`` applies the same normalisation as the constructor."""
    expected = EntityId("counter", "K")
    assert expected == EntityId.parse("@COUNTER@K")


@pytest.mark.parametrize(
    "text",
    ["", "counter@k", "@counter", "@counter@", "@@k", "@", "@@", "@a@b@c", "counter"],
)
def test_parse_rejects_malformed_text(text):
    """Anything but ``@name@key`` with two non-empty parts is a ValueError."""
    with pytest.raises(ValueError, match="entity"):
        EntityId.parse(text)


def test_parse_rejects_non_strings():
    """``parse`` of a non-string is a ValueError, not an AttributeError."""
    with pytest.raises(ValueError, match="@name@key"):
        EntityId.parse(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "key"), [("co@unter", "k"), ("counter", "k@y"), ("@", "k")])
def test_at_sign_is_rejected_in_name_or_key(name, key):
    """An ``@`` in either part would make the string form ambiguous."""
    with pytest.raises(ValueError, match="must not contain '@'"):
        EntityId(name, key)


@pytest.mark.parametrize(("name", "key", "part"), [("", "k", "name"), ("counter", "", "key")])
def test_empty_parts_are_rejected(name, key, part):
    """Neither the name nor the key may be empty."""
    with pytest.raises(ValueError, match=f"entity {part} must not be empty"):
        EntityId(name, key)


@pytest.mark.parametrize(
    ("name", "key"), [("coun\x00ter", "k"), ("counter", "k\n"), ("counter", "\x7f"), ("a\tb", "k")]
)
def test_control_characters_are_rejected(name, key):
    """Control characters (store-key separators among them) are rejected."""
    with pytest.raises(ValueError, match="control characters"):
        EntityId(name, key)


def test_non_string_parts_are_type_errors():
    """A name or key that is not a string is a TypeError."""
    with pytest.raises(TypeError, match="entity key must be a string"):
        EntityId("counter", 7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="entity name must be a string"):
        EntityId(None, "k")  # type: ignore[arg-type]


def test_longest_id_is_accepted_and_one_more_is_rejected():
    """The string form may be at most MAX_ENTITY_ID_LENGTH characters."""
    key = "k" * (MAX_ENTITY_ID_LENGTH - len("@counter@"))
    expected = MAX_ENTITY_ID_LENGTH
    assert expected == len(str(EntityId("counter", key)))
    with pytest.raises(ValueError, match="longer than"):
        EntityId("counter", key + "k")


def test_ids_order_by_name_then_key():
    """Ids sort by (name, key), the order critical sections lock in."""
    ids = [EntityId("b", "a"), EntityId("A", "z"), EntityId("a", "b"), EntityId("a", "B")]
    expected = [EntityId("a", "B"), EntityId("a", "b"), EntityId("a", "z"), EntityId("b", "a")]
    assert expected == sorted(ids)


def test_ids_are_frozen():
    """An id cannot be changed after construction."""
    entity_id = EntityId("counter", "k")
    with pytest.raises(AttributeError):
        entity_id.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("value", [EntityId("Counter", "k"), "@Counter@k", ("Counter", "k")])
def test_of_accepts_an_id_a_string_or_a_pair(value):
    """``EntityId.of`` normalises the three accepted spellings to one id."""
    expected = EntityId("counter", "k")
    assert expected == EntityId.of(value)


def test_of_returns_an_id_unchanged():
    """``EntityId.of`` of an id is that very id."""
    entity_id = EntityId("counter", "k")
    assert EntityId.of(entity_id) is entity_id


@pytest.mark.parametrize("value", [None, 5, ["counter", "k"], ("counter",), ("a", "b", "c")])
def test_of_rejects_other_values(value):
    """Anything else is a TypeError that shows the value."""
    with pytest.raises(TypeError, match="expected an EntityId"):
        EntityId.of(value)


def test_of_validates_strings_and_pairs():
    """Strings and pairs go through the same validation as the constructor."""
    with pytest.raises(ValueError):
        EntityId.of("@counter@")
    with pytest.raises(ValueError):
        EntityId.of(("counter", "a@b"))


def test_ids_survive_pickle_and_copy():
    """Ids cross process boundaries (Ray) and copies unchanged."""
    entity_id = EntityId("Counter", "Key")
    expected = entity_id
    assert expected == pickle.loads(pickle.dumps(entity_id))
    assert expected == copy.deepcopy(entity_id)


def test_entity_instance_id_is_an_alias():
    """``EntityInstanceId`` (the durabletask-python name) is the same class."""
    assert EntityInstanceId is EntityId
    expected = EntityId("counter", "k")
    assert expected == EntityInstanceId("Counter", "k")
