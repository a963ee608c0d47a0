"""The public surface: every name API.md promises is importable from ``duraray``."""

from __future__ import annotations

import inspect

import pytest

import duraray as dr
import duraray.testing

#: Names from API.md (and the history classes the engine-core issue makes public, and
#: what an operator meets when a partition runs short of space or isolates poison, and
#: the warning about non-deterministic calls in orchestration code).
API_NAMES = """
App Client AsyncClient OrchestrationContext ActivityContext EntityContext DurableEntity
EntityId EntityInstanceId RetryPolicy when_all when_any OrchestrationState OrchestrationStatus
FailureDetails EntityMetadata PurgeResult Page DurableError TaskFailedError
NonDeterminismError TaskCancelledError OrchestrationFailedError EntityOperationFailedError
LockingRuleError InstanceNotFoundError InstanceAlreadyExistsError SerializationError
ExecutionStarted OrchestratorStarted TaskScheduled TaskCompleted TaskFailed TimerCreated
TimerFired EventRaised EventSent SubOrchestrationInstanceCreated
SubOrchestrationInstanceCompleted SubOrchestrationInstanceFailed ExecutionSuspended
ExecutionResumed ExecutionTerminated ExecutionCompleted ContinueAsNew
StorageFullError PartitionFailureError ParkedItem NonDeterminismWarning BlockingReport
""".split()  # noqa: SIM905 (one name per word reads best)

CLIENT_METHODS = """
schedule_new_orchestration get_orchestration_state get_orchestration_history
wait_for_orchestration_start wait_for_orchestration_completion raise_orchestration_event
terminate_orchestration suspend_orchestration resume_orchestration rewind_orchestration
restart_orchestration purge_orchestration purge_orchestrations_by query_instances
signal_entity get_entity query_entities clean_entity_storage map attach shutdown_hub
partition_stats get_parked_items get_blocking_report
""".split()  # noqa: SIM905 (one name per word reads best)

CONTEXT_MEMBERS = """
instance_id parent_instance_id version current_utc_datetime is_replaying set_custom_status
create_timer call_activity call_sub_orchestrator wait_for_external_event send_event
continue_as_new new_uuid call_entity signal_entity lock_entities create_replay_safe_logger
""".split()  # noqa: SIM905 (one name per word reads best)


@pytest.mark.parametrize("name", API_NAMES)
def test_api_name_is_exported(name):
    """Every name of the API contract is importable from duraray and listed in __all__."""
    assert hasattr(dr, name)
    assert name in dr.__all__


def test_all_names_exist_and_are_documented():
    """Everything in __all__ exists and every public class or function has a docstring."""
    for name in dr.__all__:
        value = getattr(dr, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"duraray.{name} has no docstring"


@pytest.mark.parametrize("method", CLIENT_METHODS)
def test_client_method_exists_with_docstring(method):
    """Every Client method of the contract exists and is documented."""
    assert getattr(dr.Client, method).__doc__


@pytest.mark.parametrize("method", [m for m in CLIENT_METHODS if m not in ("attach",)])
def test_async_client_mirrors_client(method):
    """AsyncClient mirrors every Client method of the contract as a coroutine function."""
    member = getattr(dr.AsyncClient, method)
    assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)


@pytest.mark.parametrize("member", CONTEXT_MEMBERS)
def test_orchestration_context_member_exists(member):
    """Every OrchestrationContext member of the contract exists."""
    assert hasattr(dr.OrchestrationContext, member)


def test_errors_share_one_root():
    """Every public error derives from DurableError."""
    errors = [getattr(dr, n) for n in dr.__all__ if n.endswith("Error")]
    assert all(issubclass(e, dr.DurableError) for e in errors)
    assert issubclass(dr.EntityOperationFailedError, dr.TaskFailedError)


def test_testing_module_exports():
    """duraray.testing offers the in-process runtime, the manual clock and the replayer."""
    for name in ("ManualClock", "Replayer", "run_in_process", "save_history", "load_history"):
        assert name in duraray.testing.__all__
