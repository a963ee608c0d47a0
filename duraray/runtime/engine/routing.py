"""Stable mapping of instance and entity ids to partitions.

Every process (clients, partitions, workers) must agree on where an id lives without
talking to each other, so the hash is FNV-1a over the id's UTF-8 bytes, never Python's
salted ``hash()``.
"""

from __future__ import annotations

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a_64(data: bytes) -> int:
    """The 64-bit FNV-1a hash of ``data``."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def partition_for(key: str, partition_count: int) -> int:
    """The partition that owns ``key`` (an instance id or an entity id string)."""
    if partition_count == 1:
        return 0
    # surrogatepass: an id with a lone surrogate (a forged EntityId) still has a home, where
    # the partition refuses it with a clear error, instead of failing here.
    return fnv1a_64(key.encode("utf-8", "surrogatepass")) % partition_count
