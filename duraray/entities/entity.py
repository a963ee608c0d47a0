"""How entity code is written: ``DurableEntity`` classes and function entities.

Both see the same operations: read and write the entity's state, signal other entities
and start orchestrations. Effects are recorded, not performed: the batch executor keeps
them only if the operation succeeds.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from duraray import _limits
from duraray.entities.ids import EntityId
from duraray.orchestrations.ids import validate_instance_id

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SignalAction:
    """An operation signalled to another entity (optionally at a later time)."""

    entity_id: str
    operation: str
    input: bytes | None = None
    signal_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class StartAction:
    """An orchestration to start once the operation commits."""

    name: str
    instance_id: str
    input: bytes | None = None


_MISSING: Any = object()


class EntityContext:
    """What an entity operation can see and do; function entities receive it."""

    def __init__(
        self,
        entity_id: EntityId,
        operation: str,
        input: bytes | None,
        state: bytes | None,
        *,
        converter: Any,
        name_of: Any,
        new_instance_id: Any,
        now: datetime | None = None,
    ) -> None:
        self._entity_id = entity_id
        self._operation = operation
        self._input = input
        self._committed = state
        self._working: Any = _MISSING
        self._dirty = False
        self._converter = converter
        self._name_of = name_of
        self._new_instance_id = new_instance_id
        self._now = now
        self.signals: list[SignalAction] = []
        self.starts: list[StartAction] = []

    @property
    def entity_id(self) -> EntityId:
        """The id of the entity running the operation."""
        return self._entity_id

    @property
    def operation(self) -> str:
        """The name of the operation being run."""
        return self._operation

    def get_input(self, type: Any = None) -> Any:
        """The operation's input, converted to ``type`` when given."""
        return self._converter.decode(self._input, type)

    def has_state(self) -> bool:
        """True if the entity has state (it exists)."""
        if self._working is not _MISSING:
            return self._working is not None
        return self._committed is not None

    @overload
    def get_state(self, type: builtins.type[T], default: T) -> T: ...
    @overload
    def get_state(self, type: builtins.type[T], default: None = None) -> T | None: ...
    @overload
    def get_state(self, type: None = None, default: Any = None) -> Any: ...

    def get_state(self, type: Any = None, default: Any = None) -> Any:
        """The entity's state (converted to ``type``), or ``default`` if it has none."""
        if self._working is _MISSING:
            self._working = self._converter.decode(self._committed, type)
        if self._working is None:
            return default
        if type is not None:
            return self._converter.convert(self._working, type)
        return self._working

    def set_state(self, value: Any) -> None:
        """Replace the state; ``None`` deletes the entity."""
        self._working = value
        self._dirty = True

    def delete_state(self) -> None:
        """Delete the entity's state (the entity stops existing)."""
        self.set_state(None)

    def signal_entity(
        self,
        entity_id: Any,
        operation: str,
        input: Any = None,
        *,
        signal_time: datetime | timedelta | None = None,
    ) -> None:
        """Signal an operation on an entity, if and when this operation succeeds.

        Bad values (an operation name over 256 bytes, a time before 1970) raise
        ValueError here, failing this operation only.
        """
        target = EntityId.of(entity_id)
        _limits.check_name(operation, "entity operation")
        when = None
        if signal_time is not None:
            when = _limits.resolve_time(signal_time, self._now, "signal_time")
        self.signals.append(
            SignalAction(str(target), operation, self._converter.encode(input), when)
        )

    def schedule_new_orchestration(
        self, orchestrator: Any, *, input: Any = None, instance_id: str | None = None
    ) -> str:
        """Start an orchestration if and when this operation succeeds; returns its id."""
        name = _limits.check_name(
            self._name_of("orchestration", orchestrator), "orchestration name"
        )
        if instance_id is None:
            instance_id = self._new_instance_id()
        else:
            validate_instance_id(instance_id)
        self.starts.append(StartAction(name, instance_id, self._converter.encode(input)))
        return instance_id

    # -- used by the batch executor -------------------------------------------------------

    def _final_state(self) -> tuple[bool, bytes | None]:
        """(changed, encoded state) once the operation succeeded."""
        if not self._dirty:
            return False, self._committed
        return True, None if self._working is None else self._converter.encode(self._working)


class DurableEntity:
    """Base class of class-based entities: each public method is an operation.

    A method receives the operation's input if it takes a parameter. ``delete`` is an
    operation of every entity unless the class defines its own.
    """

    _ctx: EntityContext

    def _bind(self, ctx: EntityContext) -> None:
        self._ctx = ctx

    @property
    def entity_id(self) -> EntityId:
        """The id of this entity."""
        return self._ctx.entity_id

    @property
    def operation(self) -> str:
        """The name of the operation being run."""
        return self._ctx.operation

    @overload
    def get_state(self, type: builtins.type[T], default: T) -> T: ...
    @overload
    def get_state(self, type: builtins.type[T], default: None = None) -> T | None: ...
    @overload
    def get_state(self, type: None = None, default: Any = None) -> Any: ...

    def get_state(self, type: Any = None, default: Any = None) -> Any:
        """The entity's state (converted to ``type``), or ``default`` if it has none."""
        return self._ctx.get_state(type, default)

    def set_state(self, value: Any) -> None:
        """Replace the state; ``None`` deletes the entity."""
        self._ctx.set_state(value)

    def signal_entity(
        self,
        entity_id: Any,
        operation: str,
        input: Any = None,
        *,
        signal_time: datetime | timedelta | None = None,
    ) -> None:
        """Signal an operation on an entity, if and when this operation succeeds."""
        self._ctx.signal_entity(entity_id, operation, input, signal_time=signal_time)

    def schedule_new_orchestration(
        self, orchestrator: Any, *, input: Any = None, instance_id: str | None = None
    ) -> str:
        """Start an orchestration if and when this operation succeeds; returns its id."""
        return self._ctx.schedule_new_orchestration(
            orchestrator, input=input, instance_id=instance_id
        )


#: Names of DurableEntity's own API: never operations.
RESERVED = frozenset(name for name in dir(DurableEntity) if not name.startswith("__"))
