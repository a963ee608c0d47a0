"""Versioned hubs (SEMANTICS #51): strict, current-or-older, fail and reject."""

from __future__ import annotations

import duraray as dr
from duraray.testing import run_in_process

from .helpers import TIMEOUT

app = dr.App("e2e-versioning", partitions=2)


@app.orchestration
def versioned(ctx: dr.OrchestrationContext, _):
    return ctx.version


def _run(client: dr.Client, version: str | None) -> dr.OrchestrationState:
    iid = client.schedule_new_orchestration(versioned, version=version)
    return client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)


def test_strict_fail_fails_other_versions():
    """A strict hub runs its own version and fails others with a non-retriable VersionMismatch."""
    with run_in_process(app, version="2.0", version_match="strict") as client:
        assert "2.0" == _run(client, "2.0").output
        state = _run(client, "1.0")
        assert dr.OrchestrationStatus.FAILED == state.runtime_status
        assert "VersionMismatch" == state.failure_details.error_type
        assert state.failure_details.non_retriable


def test_current_or_older_fails_only_newer_versions():
    """A current-or-older hub runs older versions (1.9 < 1.10) and fails newer ones."""
    with run_in_process(app, version="1.10", version_match="current_or_older") as client:
        assert "1.9" == _run(client, "1.9").output
        assert "1.10" == _run(client, "1.10").output
        assert dr.OrchestrationStatus.FAILED == _run(client, "1.11").runtime_status


def test_reject_leaves_the_instance_for_a_matching_hub(data_dir):
    """With reject, a mismatched instance stays pending until a hub of its version opens the data."""
    with run_in_process(
        app, data_dir=data_dir, version="1.0", version_match="strict", version_failure="reject"
    ) as client:
        iid = client.schedule_new_orchestration(versioned, version="2.0")
        client.hub_runtime.wait_idle()
        assert dr.OrchestrationStatus.PENDING == client.get_orchestration_state(iid).runtime_status
    with run_in_process(
        app, data_dir=data_dir, version="2.0", version_match="strict", version_failure="reject"
    ) as client:
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert "2.0" == state.output
