"""Validation of orchestration instance ids.

Instance ids become parts of store keys and routing hashes, so they are checked once, at
the call site, before anything is stored.
"""

from __future__ import annotations

import re

from duraray._limits import MAX_INSTANCE_ID_BYTES, utf8_size

#: The longest instance id, in UTF-8 bytes (see ``duraray._limits``).
MAX_INSTANCE_ID_LENGTH = MAX_INSTANCE_ID_BYTES

# A regular expression, not a loop over the characters: every request checks its ids
# (a bulk call thousands of them, on the client and again in the partition).
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def validate_instance_id(instance_id: object) -> str:
    """Return ``instance_id`` if it is a valid id, else raise ValueError or TypeError.

    A valid id is a non-empty string of at most 256 bytes of UTF-8 without control
    characters (NUL separates key parts in the store); bytes, not characters, because
    every store key built from the id must stay within LMDB's key limit.
    """
    if not isinstance(instance_id, str):
        raise TypeError(f"instance id must be a string, got {type(instance_id).__name__}")
    if not instance_id:
        raise ValueError("instance id must not be empty")
    if _CONTROL.search(instance_id):
        raise ValueError(f"instance id {instance_id[:64]!r} contains control characters")
    size = utf8_size(instance_id, "instance id")
    if size > MAX_INSTANCE_ID_BYTES:
        raise ValueError(
            f"instance id {instance_id[:64]!r}... is {size} bytes of UTF-8; the limit is "
            f"{MAX_INSTANCE_ID_BYTES} bytes"
        )
    return instance_id
