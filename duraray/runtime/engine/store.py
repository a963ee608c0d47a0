"""Byte-level key-value storage for one partition: named databases, ordered scans, atomic batches.

This module owns *how* a partition's state is kept: a fixed set of named databases
(``DATABASES``), each an ordered map from ``bytes`` keys to ``bytes`` values, read with
point lookups and ordered range scans and changed only through a ``WriteBatch`` committed
as one all-or-nothing transaction. Two implementations share one contract:

* ``MemoryStore`` keeps everything in dicts (unit tests, the in-process runtime);
* ``LmdbStore`` keeps one LMDB environment per partition directory, owned exclusively by
  one process (the partition is the environment's only writer).

It must not know what the bytes mean: no events, orchestrations, key layouts or
serialization live here. The partition logic builds keys and records on top of it.

The code lives in modules beside this one; this module is the storage layer's one entry
point, and everything it offered before the split is still importable from here:

- store_contract.py: ``DATABASES``, ``WriteBatch`` and the ``PartitionStore`` contract;
- store_memory.py: ``MemoryStore``;
- store_lmdb.py: ``LmdbStore``.
"""

from __future__ import annotations

from duraray._errors import HubConfigurationError, StorageFullError
from duraray.runtime.engine.store_contract import (
    DATABASES,
    MAX_KEY_SIZE,
    Op,
    PartitionStore,
    StoreClosedError,
    StoreFullError,
    WriteBatch,
)
from duraray.runtime.engine.store_lmdb import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, LmdbStore
from duraray.runtime.engine.store_memory import MemoryStore

__all__ = [
    "DATABASES",
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MAP_SIZE",
    "MAX_KEY_SIZE",
    "HubConfigurationError",
    "LmdbStore",
    "MemoryStore",
    "Op",
    "PartitionStore",
    "StorageFullError",
    "StoreClosedError",
    "StoreFullError",
    "WriteBatch",
]
