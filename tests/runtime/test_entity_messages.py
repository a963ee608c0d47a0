"""The encoding of entity messages (``entity_host.pack_message`` / ``unpack_message``)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from duraray.entities.scheduler import LockRequest, OperationMessage, UnlockMessage
from duraray.runtime.engine.entity_host import pack_message, unpack_message

REQUEST = LockRequest(
    owner="cs-1",
    instance_id="orch-1",
    execution_id="exec-1",
    task_id=4,
    lock_set=["@acct@a", "@acct@b"],
    position=1,
)


@pytest.mark.parametrize(
    "message",
    [
        OperationMessage(
            "add",
            b"\x01",
            caller_instance="o",
            caller_execution="e",
            caller_task=2,
            lock_owner="cs",
        ),
        OperationMessage("get"),
        UnlockMessage("cs-1"),
        REQUEST,
        replace(REQUEST, passed=3),
    ],
    ids=["call", "signal", "unlock", "lock", "lock-passed"],
)
def test_round_trip(message: object) -> None:
    """Every kind of entity message decodes to what was encoded."""
    assert message == unpack_message(pack_message(message))  # type: ignore[arg-type]


def test_a_lock_request_never_passed_over_keeps_the_older_shape() -> None:
    """``passed`` at its default is left out, so requests in flight and in queues keep
    the six fields that older stores and partitions read; a passed-over one has seven."""
    assert 1 + 6 == len(pack_message(REQUEST))
    assert 1 + 7 == len(pack_message(replace(REQUEST, passed=2)))
    old_shape = ["lock", "cs-1", "orch-1", "exec-1", 4, ["@acct@a", "@acct@b"], 1]
    assert REQUEST == unpack_message(old_shape)
