"""The partition engine: plain Python, no Ray, no HTTP, no CLI.

Owns ``PartitionCore`` and its parts (client operations, instance lifecycle, entity
host), the records that cross its boundary (``records``), the payload codec, the store
interface with its LMDB and memory implementations, the id-to-partition hash
(``routing``) and activity execution (``activity``).

May import: the pure layers (``duraray.orchestrations``, ``duraray.entities``), the
package's errors, registry and config, ``lmdb``, ``msgpack``, ``structlog``. Never
``ray``, ``duraray.runtime.ray``, ``duraray.runtime.client``, ``http`` or ``cli``: the
engine is hosted by the Ray shell and by the in-process runtime alike.
"""
