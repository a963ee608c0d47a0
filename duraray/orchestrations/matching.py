"""Replay matching: the actions the code produces, checked against those the history recorded.

While an execution replays, every action the orchestration code produces (an activity
call, a timer, a lock request, ...) is parked in a ``ReplayLedger`` under its event id
until the history's own record of that action confirms it. A recorded action the code
no longer produces, or produces differently (another kind, name or target: a child's
instance id, an event's target instance, a timer's fire time), is non-determinism:
``ReplayLedger.match`` says what differs, and the executor fails the execution with it.
What the history never confirms is new work, emitted once the replay is over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeAlias

from duraray.orchestrations import history as h

#: The history events that record an action of the code (what replay matches), each
#: under its sequence number ``event_id``. Usable with ``isinstance``.
ActionEvent: TypeAlias = (
    h.TaskScheduled
    | h.TimerCreated
    | h.SubOrchestrationInstanceCreated
    | h.EventSent
    | h.EntityOperationCalled
    | h.EntityOperationSignaled
    | h.EntityLockRequested
    | h.EntityUnlockSent
)


def action_label(event: h.HistoryEvent) -> str:
    """How an action event reads in messages: ``call_activity('charge')``."""
    if isinstance(event, h.TaskScheduled):
        return f"call_activity({event.name!r})"
    if isinstance(event, h.TimerCreated):
        return "create_timer"
    if isinstance(event, h.SubOrchestrationInstanceCreated):
        return f"call_sub_orchestrator({event.name!r})"
    if isinstance(event, h.EventSent):
        return f"send_event({event.instance_id!r}, {event.name!r})"
    if isinstance(event, h.EntityOperationCalled):
        return f"call_entity({event.entity_id!r}, {event.operation!r})"
    if isinstance(event, h.EntityOperationSignaled):
        return f"signal_entity({event.entity_id!r}, {event.operation!r})"
    if isinstance(event, h.EntityLockRequested):
        return f"lock_entities({event.lock_set!r})"
    if isinstance(event, h.EntityUnlockSent):
        return "the end of a critical section"
    return type(event).__name__


def _utc(moment: datetime) -> str:
    return (moment.astimezone(UTC) if moment.tzinfo is not None else moment).isoformat()


def target_label(event: h.HistoryEvent) -> str:
    """An action with its target spelled out: which child, which instance, which time."""
    if isinstance(event, h.TimerCreated):
        if event.final_fire_at is None:  # only the code's side: a retry's back-off
            return f"a retry's back-off timer (fire_at={_utc(event.fire_at)})"
        return f"create_timer(fire_at={_utc(event.final_fire_at)})"
    if isinstance(event, h.SubOrchestrationInstanceCreated):
        return f"call_sub_orchestrator({event.name!r}, instance_id={event.instance_id!r})"
    return action_label(event)


def action_key(event: h.HistoryEvent) -> tuple[str, ...]:
    """What must match between a recorded action and the code's: its kind, its name and
    its target (a child's instance id, an event's target instance, a timer's fire time).

    A timer's fire time is the one the code asked for (``final_fire_at``), not the end of
    the chunk the history records (``fire_at``): a hub restarted with another
    ``maximum_timer_interval`` chunks the same timer differently. A retry's back-off timer
    has none (a retuned retry policy is no change of the orchestration's course), nor has
    a timer recorded before the field existed: ``ReplayLedger.match`` then leaves the
    time out."""
    if isinstance(event, h.TimerCreated):
        final = event.final_fire_at
        return (type(event).__name__, "" if final is None else _utc(final))
    if isinstance(event, h.TaskScheduled):
        return (type(event).__name__, event.name)
    if isinstance(event, h.SubOrchestrationInstanceCreated):
        return (type(event).__name__, event.name, event.instance_id)
    if isinstance(event, h.EventSent):
        return (type(event).__name__, event.instance_id, event.name.lower())

    if isinstance(event, h.EntityOperationCalled | h.EntityOperationSignaled):
        return (type(event).__name__, f"{event.entity_id}.{event.operation}")
    if isinstance(event, h.EntityLockRequested | h.EntityUnlockSent):
        return (type(event).__name__, ",".join(event.lock_set))
    return (type(event).__name__, "")


def event_id(event: ActionEvent) -> int:
    """The sequence number of an action (what its completion event, if any, refers to)."""
    return event.event_id


class ReplayLedger:
    """The replay's account of actions: produced by the code, recorded by the history."""

    def __init__(self) -> None:
        # Actions the code produced that the history has not confirmed yet, by event id.
        self._unmatched: dict[int, ActionEvent] = {}
        # Lock requests the replayed history recorded and did not unlock: what the entities
        # really hold when the code turns out to have changed (see ``unlock_recorded``).
        self._recorded_locks: dict[str, list[str]] = {}
        #: A completion reached while replaying: emitted (after any new actions) once the
        #: replay is over, unless the rest of the history shows that the code changed.
        self.held: h.HistoryEvent | None = None

    def produced(self, event: ActionEvent) -> None:
        """Park an action the code produced while replaying, until the history confirms it."""
        self._unmatched[event_id(event)] = event

    def match(self, recorded: ActionEvent) -> str | None:
        """Confirm a recorded action; None if the code produced it, else what differs."""
        if isinstance(recorded, h.EntityLockRequested):
            self._recorded_locks[recorded.critical_section_id] = list(recorded.lock_set)
        elif isinstance(recorded, h.EntityUnlockSent):
            self._recorded_locks.pop(recorded.critical_section_id, None)
        seq = event_id(recorded)
        produced = self._unmatched.pop(seq, None)
        if produced is None:
            return (
                f"history has {action_label(recorded)} at #{seq}, but the code no longer "
                "schedules anything there"
            )
        if (
            isinstance(recorded, h.TimerCreated)
            and recorded.final_fire_at is None
            and isinstance(produced, h.TimerCreated)
        ):
            # Nothing to compare the time with (an older history, or a retry's back-off).
            produced = replace(produced, final_fire_at=None)
        if action_key(produced) != action_key(recorded):
            label = action_label
            if action_label(produced) == action_label(recorded):
                label = target_label  # the same call, another target: name the targets
            return f"history has {label(recorded)} at #{seq}, the code now calls {label(produced)}"
        return None

    def drain(self) -> list[h.HistoryEvent]:
        """What the replay leaves as new events: the unconfirmed actions, in sequence
        order (e.g. work the code schedules after the last recorded episode), then the
        held completion."""
        events: list[h.HistoryEvent] = [self._unmatched[seq] for seq in sorted(self._unmatched)]
        self._unmatched.clear()
        if self.held is not None:
            events.append(self.held)
            self.held = None
        return events

    def discard(self) -> None:
        """Drop what changed code produced while replaying: its actions are not new work,
        and a completion it reached gives way to the non-determinism failure."""
        self._unmatched.clear()
        self.held = None

    def unlock_recorded(self, next_sequence: Callable[[], int], timestamp: datetime) -> None:
        """Queue an unlock of every lock set the history requested and did not release.

        The history, not the changed code, says which locks the entities hold: the code's
        sections may never have been requested. These unlocks are the engine's, not the
        code's, so they are emitted even when the changed code had already ended.
        """
        for section_id, lock_set in self._recorded_locks.items():
            seq = next_sequence()
            self._unmatched[seq] = h.EntityUnlockSent(
                timestamp=timestamp,
                event_id=seq,
                critical_section_id=section_id,
                lock_set=lock_set,
            )
