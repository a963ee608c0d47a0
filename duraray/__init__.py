"""duraray: durable orchestrations, activities and entities (the Durable Task model) on Ray.

Orchestrations are generator functions replayed from an event log; activities do the
work; state lives in partitions, each with its own LMDB event log. Everything public is
importable from here.
"""

from duraray._errors import (
    ActivityNotRegisteredError,
    DurableError,
    EntityOperationFailedError,
    FailureDetails,
    HubConfigurationError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    LockingRuleError,
    NonDeterminismError,
    OrchestrationFailedError,
    OrchestratorNotRegisteredError,
    PartitionFailureError,
    SerializationError,
    StorageFullError,
    TaskCancelledError,
    TaskFailedError,
)
from duraray.app import App
from duraray.config import HubConfig
from duraray.entities.entity import DurableEntity, EntityContext
from duraray.entities.ids import EntityId, EntityInstanceId
from duraray.orchestrations.context import CriticalSection, OrchestrationContext, ReplaySafeLogger
from duraray.orchestrations.determinism import NonDeterminismWarning
from duraray.orchestrations.history import (
    ContinueAsNew,
    EntityLockGranted,
    EntityLockRequested,
    EntityOperationCalled,
    EntityOperationCompleted,
    EntityOperationFailed,
    EntityOperationSignaled,
    EntityUnlockSent,
    EventRaised,
    EventSent,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionRewound,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    HistoryEvent,
    OrchestrationStatus,
    OrchestratorStarted,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from duraray.orchestrations.task import RetryPolicy, Task, when_all, when_any
from duraray.runtime.client.aio import AsyncClient
from duraray.runtime.client.mapping import MapFailure
from duraray.runtime.client.sync import (
    BlockingReport,
    CleanEntityStorageResult,
    Client,
    EntityMetadata,
    OrchestrationState,
    Page,
    ParkedItem,
    PurgeResult,
)
from duraray.runtime.engine.activity import ActivityContext
from duraray.runtime.engine.codec import UndecodablePayload
from duraray.runtime.engine.records import ReuseIdPolicy

__version__ = "0.1.0"

__all__ = [
    "ActivityContext",
    "ActivityNotRegisteredError",
    "App",
    "AsyncClient",
    "BlockingReport",
    "CleanEntityStorageResult",
    "Client",
    "ContinueAsNew",
    "CriticalSection",
    "DurableEntity",
    "DurableError",
    "EntityContext",
    "EntityId",
    "EntityInstanceId",
    "EntityLockGranted",
    "EntityLockRequested",
    "EntityMetadata",
    "EntityOperationCalled",
    "EntityOperationCompleted",
    "EntityOperationFailed",
    "EntityOperationFailedError",
    "EntityOperationSignaled",
    "EntityUnlockSent",
    "EventRaised",
    "EventSent",
    "ExecutionCompleted",
    "ExecutionResumed",
    "ExecutionRewound",
    "ExecutionStarted",
    "ExecutionSuspended",
    "ExecutionTerminated",
    "FailureDetails",
    "HistoryEvent",
    "HubConfig",
    "HubConfigurationError",
    "InstanceAlreadyExistsError",
    "InstanceNotFoundError",
    "InstanceStateError",
    "LockingRuleError",
    "MapFailure",
    "NonDeterminismError",
    "NonDeterminismWarning",
    "OrchestrationContext",
    "OrchestrationFailedError",
    "OrchestrationState",
    "OrchestrationStatus",
    "OrchestratorNotRegisteredError",
    "OrchestratorStarted",
    "Page",
    "ParkedItem",
    "PartitionFailureError",
    "PurgeResult",
    "ReplaySafeLogger",
    "RetryPolicy",
    "ReuseIdPolicy",
    "SerializationError",
    "StorageFullError",
    "SubOrchestrationInstanceCompleted",
    "SubOrchestrationInstanceCreated",
    "SubOrchestrationInstanceFailed",
    "Task",
    "TaskCancelledError",
    "TaskCompleted",
    "TaskFailed",
    "TaskFailedError",
    "TaskScheduled",
    "TimerCreated",
    "TimerFired",
    "UndecodablePayload",
    "__version__",
    "when_all",
    "when_any",
]
