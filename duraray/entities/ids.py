"""Entity ids: ``EntityId(name, key)``, written ``@name@key``.

The name is case-insensitive (stored lower-case), the key case-sensitive. Neither may be
empty or contain ``@``, so the string form always parses back to the same id. The string
form is a store key, so its length is limited in UTF-8 bytes (``duraray._limits``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from duraray._limits import MAX_ENTITY_ID_BYTES, utf8_size

#: The longest ``@name@key`` string form, in UTF-8 bytes.
MAX_ENTITY_ID_LENGTH = MAX_ENTITY_ID_BYTES

# A regular expression, not a loop over the characters: ids are checked on every request.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _check_part(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"entity {what} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"entity {what} must not be empty")
    if "@" in value:
        raise ValueError(f"entity {what} {value[:64]!r} must not contain '@'")
    if _CONTROL.search(value):
        raise ValueError(f"entity {what} {value[:64]!r} contains control characters")
    return value


@dataclass(frozen=True, slots=True, order=True)
class EntityId:
    """The address of a durable entity: its (lower-cased) name and its key."""

    name: str
    key: str

    def __init__(self, name: str, key: str) -> None:
        name = _check_part("name", name).lower()
        key = _check_part("key", key)
        size = utf8_size(name, "entity name") + utf8_size(key, "entity key") + 2
        if size > MAX_ENTITY_ID_LENGTH:
            raise ValueError(
                f"entity id @{name[:64]}@{key[:64]} is {size} bytes of UTF-8, longer than "
                f"the limit of {MAX_ENTITY_ID_LENGTH} bytes"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "key", key)

    def __str__(self) -> str:
        return f"@{self.name}@{self.key}"

    @classmethod
    def parse(cls, text: str) -> EntityId:
        """Parse ``@name@key``; raises ValueError for anything else."""
        if not isinstance(text, str) or not text.startswith("@"):
            raise ValueError(f"entity id {text!r} must look like '@name@key'")
        name, sep, key = text[1:].partition("@")
        if not sep:
            raise ValueError(f"entity id {text!r} must look like '@name@key'")
        return cls(name, key)

    @classmethod
    def from_stored(cls, text: str) -> EntityId:
        """An id read back from a store, split without checks: an entity stored under an
        older, looser limit must stay reachable (and must not fail the batch that runs
        its operations)."""
        name, _, key = text[1:].partition("@")
        entity_id = object.__new__(cls)
        object.__setattr__(entity_id, "name", name)
        object.__setattr__(entity_id, "key", key)
        return entity_id

    @classmethod
    def of(cls, value: Any) -> EntityId:
        """Accept an EntityId, an ``@name@key`` string or a ``(name, key)`` pair."""
        if isinstance(value, EntityId):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, tuple) and len(value) == 2:
            return cls(value[0], value[1])
        raise TypeError(f"expected an EntityId, '@name@key' or (name, key), got {value!r}")


#: The durabletask-python name of the same type.
EntityInstanceId = EntityId
