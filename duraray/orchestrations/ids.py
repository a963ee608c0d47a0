"""Validation of orchestration instance ids.

Instance ids become parts of store keys and routing hashes, so they are checked once, at
the call site, before anything is stored.
"""

from __future__ import annotations

MAX_INSTANCE_ID_LENGTH = 256


def validate_instance_id(instance_id: object) -> str:
    """Return ``instance_id`` if it is a valid id, else raise ValueError or TypeError.

    A valid id is a non-empty string of at most 256 characters without control
    characters (NUL separates key parts in the store).
    """
    if not isinstance(instance_id, str):
        raise TypeError(f"instance id must be a string, got {type(instance_id).__name__}")
    if not instance_id:
        raise ValueError("instance id must not be empty")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise ValueError(
            f"instance id is {len(instance_id)} characters long; the limit is "
            f"{MAX_INSTANCE_ID_LENGTH}"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in instance_id):
        raise ValueError(f"instance id {instance_id!r} contains control characters")
    return instance_id
