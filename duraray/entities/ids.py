"""Entity ids: ``EntityId(name, key)``, written ``@name@key``.

The name is case-insensitive (stored lower-case), the key case-sensitive. Neither may be
empty or contain ``@``, so the string form always parses back to the same id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_ENTITY_ID_LENGTH = 256


def _check_part(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"entity {what} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"entity {what} must not be empty")
    if "@" in value:
        raise ValueError(f"entity {what} {value!r} must not contain '@'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError(f"entity {what} {value!r} contains control characters")
    return value


@dataclass(frozen=True, slots=True, order=True)
class EntityId:
    """The address of a durable entity: its (lower-cased) name and its key."""

    name: str
    key: str

    def __init__(self, name: str, key: str) -> None:
        name = _check_part("name", name).lower()
        key = _check_part("key", key)
        if len(name) + len(key) + 2 > MAX_ENTITY_ID_LENGTH:
            raise ValueError(f"entity id @{name}@{key} is longer than {MAX_ENTITY_ID_LENGTH}")
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
