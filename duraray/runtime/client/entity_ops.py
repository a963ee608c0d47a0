"""The client's bulk entity operations: many signals at once, and the storage clean-up.

Both reach several partitions: signals are packed into batch requests per partition, and
the clean-up asks every partition for its orphaned locks before releasing each one on
the entity's own partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from duraray import _limits
from duraray.entities.ids import EntityId
from duraray.runtime.client.results import CleanEntityStorageResult, OrchestrationState
from duraray.runtime.client.transport import Router


def signal_ops(
    signals: Iterable[tuple[Any, str, Any]], encode: Callable[[Any, str], bytes]
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(entity_id, operation, input)`` signals as the batch operations that send them.

    Each routed by its entity id, in the order given: ``Router.batch`` applies one
    key's operations in that order, so signals to one entity are applied as listed.
    """
    ops = []
    for entity, operation, value in signals:
        _limits.check_name(operation, "entity operation")
        entity_id = str(EntityId.of(entity))
        ops.append(
            (
                entity_id,
                "signal_entity",
                {
                    "entity_id": entity_id,
                    "operation": operation,
                    "input": encode(value, "entity operation input"),
                },
            )
        )
    return ops


def clean_storage(
    router: Router,
    *,
    remove_empty: bool,
    release_orphaned_locks: bool,
    state_of: Callable[..., OrchestrationState | None],
) -> CleanEntityStorageResult:
    """``Client.clean_entity_storage``; ``state_of`` is the client's
    ``get_orchestration_state``, asked whether a lock's holder still runs."""
    results = router.call_all("clean_entities", {"remove_empty": remove_empty}, mutating=True)
    removed = sum(count for count, _ in results)
    released = 0
    if release_orphaned_locks:
        for _, locks in results:
            for entity_id, holder, owner in locks:
                state = state_of(holder, fetch_payloads=False)
                if state is not None and not state.runtime_status.is_terminal:
                    continue
                if router.call_entity(
                    entity_id, "release_entity_lock", {"owner": owner}, mutating=True
                ):
                    released += 1
    return CleanEntityStorageResult(removed, released)
