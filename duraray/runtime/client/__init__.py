"""The client side: what user code holds to drive a hub.

- ``sync``: ``Client``, its public operations and their argument checks;
- ``results``: the state records it returns (``OrchestrationState``, ``EntityMetadata``,
  ``Page``, ``ParkedItem``, ``BlockingReport``, ...), also importable from ``sync``;
- ``transport``: the ``Transport`` protocol and ``Router``, which routes, fans out and
  batches the client's requests;
- ``queries``: pages merged from every partition, and their continuation tokens;
- ``entity_ops``: bulk entity signals and the entity storage clean-up;
- ``aio``: ``AsyncClient``, every ``Client`` method as a coroutine;
- ``mapping``: ``Client.map``, bulk orchestrations with resumable results.

May import: the engine's records, codec and routing (the wire format and the id hash),
the pure layers. Never the engine's internals (partition core, store), ``http`` or
``cli``; it reaches a hub through a transport handed to it (Ray or in-process).
"""

# ``duraray.runtime.client`` was a module holding these names; they stay importable here.
from duraray.runtime.client.sync import (
    BlockingReport,
    CleanEntityStorageResult,
    Client,
    EntityMetadata,
    OrchestrationState,
    Page,
    ParkedItem,
    PurgeResult,
    Transport,
)

__all__ = [
    "BlockingReport",
    "CleanEntityStorageResult",
    "Client",
    "EntityMetadata",
    "OrchestrationState",
    "Page",
    "ParkedItem",
    "PurgeResult",
    "Transport",
]
