"""The bulk routes of the HTTP API, in process: terminate and purge every instance a filter
matches (``POST /api/instances/terminate`` and ``POST /api/instances/purge``)."""

from __future__ import annotations

import pytest
from starlette.routing import Route

import duraray as dr
from duraray.runtime.http import create_app

#: Seconds any single wait may take before it counts as a failure.
TIMEOUT = 10.0

app = dr.App("http-bulk")


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value=None):
    return value


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


def _status(client: dr.Client, instance_id: str) -> dr.OrchestrationStatus | None:
    state = client.get_orchestration_state(instance_id)
    return None if state is None else state.runtime_status


def _statuses(client: dr.Client, ids: list[str]) -> list[dr.OrchestrationStatus | None]:
    return [_status(client, iid) for iid in ids]


def _waiting(client: dr.Client, ids: list[str], **tags: str) -> list[str]:
    """Start ``wait_go`` instances with ``ids`` (and ``tags``); return once all run."""
    client.schedule_new_orchestrations(wait_go, [None] * len(ids), instance_ids=ids, tags=tags)
    for iid in ids:
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    return ids


def _finished(client: dr.Client, ids: list[str], **tags: str) -> list[str]:
    """Start ``echo`` instances with ``ids`` (and ``tags``); return once all completed."""
    client.schedule_new_orchestrations(echo, list(range(len(ids))), instance_ids=ids, tags=tags)
    client.wait_for_orchestrations(ids, timeout=TIMEOUT)
    return ids


RUNNING = dr.OrchestrationStatus.RUNNING
COMPLETED = dr.OrchestrationStatus.COMPLETED
TERMINATED = dr.OrchestrationStatus.TERMINATED
SUSPENDED = dr.OrchestrationStatus.SUSPENDED


def test_terminate_by_tag_terminates_exactly_the_matching_unfinished_instances(http, client):
    """POST /api/instances/terminate?tag=k:v terminates the running instances with that tag
    and answers how many; other tags and finished instances are left alone."""
    acme = _waiting(client, ["a-1", "a-2", "a-3"], tenant="acme")
    other = _waiting(client, ["o-1", "o-2"], tenant="other")
    done = _finished(client, ["a-done"], tenant="acme")
    response = http.post("/api/instances/terminate", params={"tag": "tenant:acme"})
    expected = (200, {"terminated": 3})
    assert expected == (response.status_code, response.json())
    expected_statuses = [TERMINATED] * 3 + [RUNNING] * 2 + [COMPLETED]
    assert expected_statuses == _statuses(client, acme + other + done)


def test_terminate_takes_the_output_from_reason_or_the_json_body(http, client):
    """``reason`` (or a JSON body) becomes each terminated instance's output."""
    _waiting(client, ["r-1"])
    _waiting(client, ["b-1"])
    by_reason = http.post(
        "/api/instances/terminate", params={"instanceIdPrefix": "r-", "reason": "cleanup"}
    )
    by_body = http.post(
        "/api/instances/terminate", params={"instanceIdPrefix": "b-"}, json={"why": "expired"}
    )
    outputs = [client.get_orchestration_state(iid).output for iid in ("r-1", "b-1")]
    expected = (200, 200, ["cleanup", {"why": "expired"}])
    assert expected == (by_reason.status_code, by_body.status_code, outputs)


def test_terminate_respects_the_status_and_name_filters(http, client):
    """With runtimeStatus=Suspended only the suspended instances are terminated; a status
    that is already finished matches nothing (200, 0)."""
    running = _waiting(client, ["s-run"])
    paused = _waiting(client, ["s-paused"])
    client.suspend_orchestration("s-paused")
    client.hub_runtime.wait_idle(timeout=TIMEOUT)
    nothing = http.post(
        "/api/instances/terminate", params={"runtimeStatus": "Completed", "name": "wait_go"}
    )
    suspended = http.post(
        "/api/instances/terminate", params={"runtimeStatus": "Suspended", "name": "wait_go"}
    )
    expected = ({"terminated": 0}, {"terminated": 1}, [RUNNING, TERMINATED])
    assert expected == (nothing.json(), suspended.json(), _statuses(client, running + paused))


def test_purge_by_prefix_purges_the_finished_instances_only(http, client):
    """POST /api/instances/purge?instanceIdPrefix= deletes the finished matches; running
    ones and other prefixes stay."""
    finished = _finished(client, ["p-1", "p-2", "p-3"])
    running = _waiting(client, ["p-run"])
    kept = _finished(client, ["q-1"])
    response = http.post("/api/instances/purge", params={"instanceIdPrefix": "p-"})
    again = http.post("/api/instances/purge", params={"instanceIdPrefix": "p-"})
    expected = (200, {"purged": 3}, {"purged": 0})
    assert expected == (response.status_code, response.json(), again.json())
    expected_statuses = [None, None, None, RUNNING, COMPLETED]
    assert expected_statuses == _statuses(client, finished + running + kept)


def test_purge_by_created_time_range(http, client):
    """The created-time filters select what a bulk purge deletes."""
    _finished(client, ["t-1"])
    before = http.post("/api/instances/purge", params={"createdTimeTo": "2000-01-01T00:00:00Z"})
    since = http.post("/api/instances/purge", params={"createdTimeFrom": "2000-01-01T00:00:00Z"})
    expected = ({"purged": 0}, {"purged": 1}, None)
    assert expected == (before.json(), since.json(), _status(client, "t-1"))


@pytest.mark.parametrize("route", ["terminate", "purge"])
def test_a_bulk_call_without_any_filter_needs_all_true(http, client, route):
    """No filter at all is a 400 that names the filters and changes nothing; all=true acts
    on every instance."""
    running = _waiting(client, ["u-run"])
    done = _finished(client, ["u-done"])
    refused = http.post(f"/api/instances/{route}")
    unchanged = _statuses(client, running + done)
    accepted = http.post(f"/api/instances/{route}", params={"all": "true"})
    expected_after = [TERMINATED, COMPLETED] if route == "terminate" else [RUNNING, None]
    expected = (400, [RUNNING, COMPLETED], 200, expected_after)
    actual = (refused.status_code, unchanged, accepted.status_code)
    assert expected == (*actual, _statuses(client, running + done))
    assert "all=true" in refused.json()["error"]
    assert "instanceIdPrefix" in refused.json()["error"]


@pytest.mark.parametrize(
    "params",
    [
        {"tag": "no-colon"},
        {"runtimeStatus": "Bogus"},
        {"createdTimeFrom": "yesterday"},
        {"all": "maybe"},
    ],
)
@pytest.mark.parametrize("route", ["terminate", "purge"])
def test_malformed_filters_are_400_and_change_nothing(http, client, route, params):
    """A filter the server cannot read is a 400 before anything is terminated or purged."""
    ids = _waiting(client, ["m-run"]) + _finished(client, ["m-done"])
    response = http.post(f"/api/instances/{route}", params=params)
    expected = (400, [RUNNING, COMPLETED])
    assert expected == (response.status_code, _statuses(client, ids))


def test_a_malformed_recursive_flag_is_400_and_terminates_nothing(http, client):
    """recursive must be true or false; anything else is refused before terminating."""
    ids = _waiting(client, ["f-run"])
    response = http.post(
        "/api/instances/terminate", params={"instanceIdPrefix": "f-", "recursive": "perhaps"}
    )
    expected = (400, [RUNNING])
    assert expected == (response.status_code, _statuses(client, ids))


@pytest.mark.parametrize("route", ["terminate", "purge"])
def test_a_body_not_declared_json_is_415_and_changes_nothing(http, client, route):
    """As on every route, a body must be declared JSON; a refused one terminates nothing."""
    ids = _waiting(client, ["j-run"]) + _finished(client, ["j-done"])
    response = http.post(
        f"/api/instances/{route}",
        params={"instanceIdPrefix": "j-"},
        content=b'"x"',
        headers={"Content-Type": "text/plain"},
    )
    expected = (415, [RUNNING, COMPLETED])
    assert expected == (response.status_code, _statuses(client, ids))


def test_instances_named_terminate_or_purge_stay_addressable(http, client):
    """The bulk paths shadow no instance: ids "terminate" and "purge" are still read,
    terminated and purged through their own routes."""
    _waiting(client, ["terminate", "purge"])
    read = http.get("/api/instances/terminate")
    own = http.post("/api/instances/terminate/terminate")
    other = _status(client, "purge")
    http.post("/api/instances/purge/terminate")
    purged = http.delete("/api/instances/purge")
    expected = (202, "terminate", 202, TERMINATED, RUNNING, 200, None)
    assert expected == (
        read.status_code,
        read.json()["instanceId"],
        own.status_code,
        _status(client, "terminate"),
        other,
        purged.status_code,
        _status(client, "purge"),
    )


def test_the_bulk_routes_come_before_the_instance_routes(client):
    """Starlette takes the first full match: the bulk routes precede /api/instances/{id}."""
    paths = [r.path for r in create_app(client).routes if isinstance(r, Route)]
    first_instance_route = paths.index("/api/instances/{rest:path}")
    assert paths.index("/api/instances/terminate") < first_instance_route
    assert paths.index("/api/instances/purge") < first_instance_route


@pytest.mark.parametrize("route", ["terminate", "purge"])
def test_the_bulk_routes_need_the_token(client, make_http, route):
    """With a token configured, a bulk call without it is a 401 and changes nothing."""
    http = make_http(create_app(client, token="s3cret"))
    ids = _waiting(client, ["k-run"]) + _finished(client, ["k-done"])
    refused = http.post(f"/api/instances/{route}", params={"all": "true"})
    unchanged = _statuses(client, ids)
    accepted = http.post(
        f"/api/instances/{route}",
        params={"all": "true"},
        headers={"Authorization": "Bearer s3cret"},
    )
    expected = (401, [RUNNING, COMPLETED], 200)
    assert expected == (refused.status_code, unchanged, accepted.status_code)
