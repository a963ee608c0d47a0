"""The error tree of duraray, and the failure record that travels with failed work.

Every error duraray raises to user code derives from one root::

    DurableError
    ├── TaskFailedError                 an activity, sub-orchestration or entity call failed
    │   └── EntityOperationFailedError  an entity operation called by an orchestration raised
    ├── NonDeterminismError             replayed code no longer matches its recorded history
    ├── TaskCancelledError              a cancelled task was awaited
    ├── OrchestrationFailedError        `OrchestrationState.raise_if_failed()` on a failed instance
    ├── LockingRuleError                a critical-section rule was broken at the call site
    ├── InstanceNotFoundError           (also a LookupError) no such instance
    ├── InstanceAlreadyExistsError      an instance with that id is running
    ├── InstanceStateError              the instance's state forbids the operation
    ├── OrchestratorNotRegisteredError  recorded as an instance's failure type
    ├── ActivityNotRegisteredError      recorded as an activity's failure type
    ├── HubConfigurationError           a data dir or hub setting conflicts with the store
    ├── StorageFullError                a partition could not commit: its disk or its
    │                                   max_map_size is full (HTTP 507); nothing was written
    └── SerializationError              (also a TypeError) a payload msgpack cannot carry

Control flow that user code must never swallow (eviction of a live generator, the end of
an orchestration after ``continue_as_new``) uses ``BaseException`` subclasses that live
next to the code that raises them, so ``except Exception`` in an orchestrator cannot catch
them.

This module imports nothing from the rest of the package: every layer may use it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FailureDetails:
    """Why a piece of work failed: the message, the error type and the stack trace.

    ``inner`` carries the failure that caused this one (e.g. the activity failure behind a
    sub-orchestration failure), so nested messages survive serialization.
    """

    message: str
    error_type: str
    stack_trace: str | None = None
    inner: FailureDetails | None = None
    non_retriable: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException) -> FailureDetails:
        """Describe ``exc`` (its type name, message and formatted traceback)."""
        inner = None
        if isinstance(exc, TaskFailedError) and exc.details is not None:
            inner = exc.details
        return cls(
            message=str(exc),
            error_type=error_type_name(type(exc)),
            stack_trace="".join(traceback.format_exception(exc)),
            inner=inner,
            non_retriable=bool(getattr(exc, "non_retriable", False)),
        )

    def is_caused_by(self, error_type: type[BaseException] | str) -> bool:
        """True when this failure (or one it wraps) has the given error type."""
        name = error_type if isinstance(error_type, str) else error_type_name(error_type)
        details: FailureDetails | None = self
        while details is not None:
            if details.error_type == name or details.error_type.rsplit(".", 1)[-1] == name:
                return True
            details = details.inner
        return False


def error_type_name(tp: type[BaseException]) -> str:
    """The name recorded for an exception type: builtins bare, everything else qualified."""
    module = tp.__module__
    if module == "builtins":
        return tp.__qualname__
    return f"{module}.{tp.__qualname__}"


class DurableError(Exception):
    """The root of every error duraray raises to user code."""

    __module__ = "duraray"


class TaskFailedError(DurableError):
    """A task awaited by an orchestration failed; ``details`` says why."""

    __module__ = "duraray"

    def __init__(self, message: str, details: FailureDetails | None = None) -> None:
        super().__init__(message)
        self.details = details


class NonDeterminismError(DurableError):
    """Replaying an orchestration produced an action that differs from its history."""

    __module__ = "duraray"
    non_retriable = True


class TaskCancelledError(DurableError):
    """A task that was cancelled was awaited or asked for its result."""

    __module__ = "duraray"


class OrchestrationFailedError(DurableError):
    """An orchestration instance ended in the FAILED state."""

    __module__ = "duraray"

    def __init__(self, message: str, details: FailureDetails | None = None) -> None:
        super().__init__(message)
        self.details = details


class EntityOperationFailedError(TaskFailedError):
    """An entity operation called by an orchestration raised; ``details`` says why.

    A TaskFailedError, so ``except TaskFailedError`` catches failed entity calls too.
    """

    __module__ = "duraray"


class LockingRuleError(DurableError):
    """A critical-section rule was broken (nested lock, call outside the lock set, ...)."""

    __module__ = "duraray"


class InstanceNotFoundError(DurableError, LookupError):
    """No orchestration instance has the given id."""

    __module__ = "duraray"


class InstanceAlreadyExistsError(DurableError):
    """An instance with the requested id exists and the reuse policy forbids replacing it."""

    __module__ = "duraray"


class InstanceStateError(DurableError):
    """The instance exists but its runtime status forbids the operation (HTTP 410)."""

    __module__ = "duraray"


class OrchestratorNotRegisteredError(DurableError):
    """No orchestrator of that name is registered with the hub."""

    __module__ = "duraray"
    non_retriable = True


class ActivityNotRegisteredError(DurableError):
    """No activity of that name is registered with the hub."""

    __module__ = "duraray"
    non_retriable = True


class HubConfigurationError(DurableError):
    """The hub's configuration conflicts with what its data dir records."""

    __module__ = "duraray"


class StorageFullError(DurableError):
    """A partition could not commit for lack of space: its disk is full (ENOSPC, or the
    I/O error LMDB reports for a short write) or its store reached ``max_map_size``.

    Nothing of the failed batch was written: the request was not applied and may be
    retried once space is freed (or ``max_map_size`` raised). The partition keeps
    serving reads meanwhile, and resumes writing by itself when a commit fits again.
    """

    __module__ = "duraray"


class PartitionFailureError(DurableError):
    """Applying the request raised inside the partition (a defect, or a value no check
    foresaw). Nothing of the request was stored; the partition went on serving the rest.
    The partition's parked items (``Client.get_parked_items``) and its log say more.
    """

    __module__ = "duraray"


class SerializationError(DurableError, TypeError):
    """A payload cannot be encoded (unsupported type or too large) or decoded."""

    __module__ = "duraray"
