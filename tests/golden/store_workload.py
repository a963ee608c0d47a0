"""The workload of the committed store fixture (``store_v3/``), shared by its writer and its test.

``make_store_fixture.py`` runs this registry on a two-partition hub and leaves it at rest
with instances, entities, timers and stored client replies in every state listed in
``store_v3/README.md``; ``test_stored_data.py`` opens that store with the current code and
the same registry and drives it to the end. Both must agree on every name, id and time
here: an orchestration that changed would make the stored histories replay differently,
which is a different failure from the one the fixture is there to catch (stored bytes
that no longer read back).

Ids are fixed and spread over both partitions on purpose: the parent and its child, and
the locking orchestration and the entity it locks, live on different partitions, so the
fixture holds cross-partition state too (sequence numbers, acknowledged outboxes).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from partition_driver import T0, make_registry

from duraray.entities.ids import EntityId
from duraray.runtime.engine import codec
from duraray.runtime.engine.routing import partition_for

PARTITIONS = 2

#: orchestration instances, by the state the fixture leaves them in
COMPLETED = "completed"  # p0: ran an activity, with tags
FAILED = "failed"  # p0: its activity raised
AWAITING_EVENT = "awaiting-event"  # p0: waits for "approve"
AWAITING_TIMER = "awaiting-timer"  # p1: a durable timer due at TIMER_DUE
PARENT = "parent"  # p1: waits for CHILD
CHILD = "parent-child"  # p0: waits for "approve"
SUSPENDED = "suspended"  # p0: suspended, with an "approve" event buffered in its inbox
LOCKER = "locker"  # p1: holds the lock of SAFE inside a critical section, waits for "go"
DELAYED = "delayed"  # p1: a start scheduled for DELAYED_START

#: entities (``counter``): TALLY has state and a scheduled signal; SAFE is locked by
#: LOCKER and has a client signal queued behind the lock
TALLY = str(EntityId("counter", "tally"))  # p1
SAFE = str(EntityId("counter", "safe"))  # p0

DELAYED_START = T0 + timedelta(minutes=2)
SIGNAL_DUE = T0 + timedelta(minutes=5)
TIMER_DUE = T0 + timedelta(minutes=10)

TAGS = {"team": "golden"}
SIGNAL_LATER = 10  # the scheduled signal's amount: TALLY grows by it exactly once

#: the starts, in order: (orchestration, instance id, input, extra start arguments); the
#: driver gives each the request id ``start-<instance id>``
STARTS: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("greet", COMPLETED, "world", {"tags": TAGS}),
    ("doomed", FAILED, "on purpose", {}),
    ("await_approval", AWAITING_EVENT, "alice", {}),
    ("sleeper", AWAITING_TIMER, 10, {}),
    ("parent", PARENT, "bob", {}),
    ("await_approval", SUSPENDED, "carol", {}),
    ("locker", LOCKER, 5, {}),
    ("greet", DELAYED, "later", {"start_at": DELAYED_START}),
]

#: the client requests sent once the starts have run, in order: (request id, operation,
#: arguments). SUSPENDED is suspended before its event arrives, so the event waits in its
#: inbox; LOCKER holds SAFE's lock by then, so "safe-queued" waits in SAFE's queue.
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("suspend-1", "suspend", {"instance_id": SUSPENDED, "reason": "golden"}),
    (
        "approve-suspended",
        "raise_event",
        {"instance_id": SUSPENDED, "name": "approve", "data": codec.encode("yes")},
    ),
    (
        "tally-1",
        "signal_entity",
        {"entity_id": TALLY, "operation": "add", "input": codec.encode(1)},
    ),
    (
        "tally-2",
        "signal_entity",
        {"entity_id": TALLY, "operation": "add", "input": codec.encode(2)},
    ),
    (
        "tally-later",
        "signal_entity",
        {
            "entity_id": TALLY,
            "operation": "add",
            "input": codec.encode(SIGNAL_LATER),
            "signal_time": SIGNAL_DUE,
        },
    ),
    (
        "safe-queued",
        "signal_entity",
        {"entity_id": SAFE, "operation": "add", "input": codec.encode(100)},
    ),
]

#: every stored client reply, by request id: what a retry of the request gets back (the
#: stored answer, never the request applied a second time)
STORED_REPLIES: dict[str, Any] = {
    **{f"start-{iid}": iid for _, iid, _, _ in STARTS},
    "suspend-1": True,  # suspending again now would answer False
    "approve-suspended": None,
    "tally-1": None,
    "tally-2": None,
    "tally-later": None,
    "safe-queued": None,
}


def partition_of(key: str) -> int:
    """The partition that owns an instance or entity id on the fixture's hub."""
    return partition_for(key, PARTITIONS)


def hello(ctx: Any, name: str) -> str:
    return f"hello {name}"


def explode(ctx: Any, reason: str) -> None:
    raise ValueError(f"exploded: {reason}")


def greet(ctx: Any, name: str) -> Any:
    ctx.set_custom_status({"greeting": name})
    return (yield ctx.call_activity("hello", input=name))


def doomed(ctx: Any, reason: str) -> Any:
    yield ctx.call_activity("explode", input=reason)
    return "unreachable"


def await_approval(ctx: Any, who: str) -> Any:
    answer = yield ctx.wait_for_external_event("approve")
    return (yield ctx.call_activity("hello", input=f"{who}: {answer}"))


def sleeper(ctx: Any, minutes: int) -> Any:
    ctx.set_custom_status({"sleeping": minutes})
    yield ctx.create_timer(timedelta(minutes=minutes))
    return ctx.current_utc_datetime.isoformat()


def parent(ctx: Any, who: str) -> Any:
    child = yield ctx.call_sub_orchestrator("await_approval", input=who, instance_id=CHILD)
    return ["parent", child]


def locker(ctx: Any, amount: int) -> Any:
    with (yield ctx.lock_entities([SAFE])):
        before = yield ctx.call_entity(SAFE, "add", amount)
        extra = yield ctx.wait_for_external_event("go")
        after = yield ctx.call_entity(SAFE, "add", extra)
    return [before, after]


def counter(ctx: Any, amount: Any) -> Any:
    """A running total; each applied amount is logged too, so a repeat would show."""
    state = ctx.get_state() or {"total": 0, "applied": []}
    if ctx.operation == "add":
        state["total"] += amount
        state["applied"].append(amount)
        ctx.set_state(state)
    elif ctx.operation != "get":
        raise ValueError(f"unknown operation {ctx.operation}")
    return state["total"]


def make_workload_registry() -> Any:
    registry = make_registry(
        hello=hello,
        explode=explode,
        greet=greet,
        doomed=doomed,
        await_approval=await_approval,
        sleeper=sleeper,
        parent=parent,
        locker=locker,
    )
    registry.add_entity(counter, "counter")
    return registry
