"""The HTTP management API, in process: every route, status code and header of API.md."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import duraray as dr
from duraray.runtime.http import (
    build_server,
    create_app,
    wait_for_completion_or_create_check_status_response,
)
from duraray.runtime.http.auth import TOKEN_ENV, is_loopback
from duraray.runtime.http.metrics import hub_registry
from duraray.runtime.http.payloads import to_json
from duraray.testing import ManualClock, run_in_process

#: Seconds any single wait may take before it counts as a failure.
TIMEOUT = 10.0
#: The header a request with a JSON body declares.
JSON = {"Content-Type": "application/json"}

app = dr.App("http-api")

MANAGEMENT_KEYS = {
    "id",
    "statusQueryGetUri",
    "sendEventPostUri",
    "terminatePostUri",
    "suspendPostUri",
    "resumePostUri",
    "rewindPostUri",
    "restartPostUri",
    "purgeHistoryDeleteUri",
}
STATUS_KEYS = {
    "name",
    "instanceId",
    "runtimeStatus",
    "input",
    "customStatus",
    "output",
    "createdTime",
    "lastUpdatedTime",
    "completedTime",
    "scheduledStartTime",
    "failureDetails",
    "version",
    "tags",
    "parentInstanceId",
    "blockingReport",  # GET /api/instances/{id} only; null unless its episode blocked
}

_attempts: dict[str, int] = {}
_attempts_lock = threading.Lock()


@app.activity
def say_hello(ctx: dr.ActivityContext, name: str) -> str:
    return f"Hello, {name}!"


@app.activity
def fails_first_time(ctx: dr.ActivityContext) -> str:
    with _attempts_lock:
        _attempts[ctx.orchestration_id] = _attempts.get(ctx.orchestration_id, 0) + 1
        attempt = _attempts[ctx.orchestration_id]
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return f"attempt {attempt}"


@app.orchestration
def greet(ctx: dr.OrchestrationContext, name: str):
    ctx.set_custom_status({"greeting": name})
    return (yield ctx.call_activity(say_hello, input=name))


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value=None):
    return value


@app.orchestration
def binary(ctx: dr.OrchestrationContext):
    return b"\x00\x01\xff"


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def boom(ctx: dr.OrchestrationContext):
    raise RuntimeError("boom")


@app.orchestration
def flaky(ctx: dr.OrchestrationContext):
    return (yield ctx.call_activity(fails_first_time))


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)


def _start(http, name: str, body=None, **params) -> str:
    response = http.post(f"/api/orchestrations/{name}", json=body, params=params)
    expected = 202
    assert expected == response.status_code, response.text
    return response.json()["id"]


def _finish(client, instance_id: str) -> dr.OrchestrationState:
    return client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)


# -- start ------------------------------------------------------------------------------------


def test_start_answers_202_with_management_urls_location_and_retry_after(http):
    """Starting an orchestration answers 202 with the Durable Functions payload, Location and Retry-After."""
    response = http.post("/api/orchestrations/greet", json="Tokyo", params={"instance_id": "s-1"})
    body = response.json()
    root = "http://testserver/api/instances/s-1"
    expected = 202
    assert expected == response.status_code
    expected = MANAGEMENT_KEYS
    assert expected == set(body)
    expected = {
        "id": "s-1",
        "statusQueryGetUri": root,
        "sendEventPostUri": f"{root}/raiseEvent/{{eventName}}",
        "terminatePostUri": f"{root}/terminate",
        "suspendPostUri": f"{root}/suspend",
        "resumePostUri": f"{root}/resume",
        "rewindPostUri": f"{root}/rewind",
        "restartPostUri": f"{root}/restart",
        "purgeHistoryDeleteUri": root,
    }
    assert expected == body
    assert root == response.headers["location"]
    expected = "1"
    assert expected == response.headers["retry-after"]


def test_start_generates_an_id_and_runs_the_orchestration(http, client):
    """Without instance_id the server picks an id, and the instance runs with the JSON input."""
    instance_id = _start(http, "greet", "Paris")
    expected = "Hello, Paris!"
    assert expected == _finish(client, instance_id).output


def test_start_with_an_empty_body_passes_none(http, client):
    """An empty start body means no input (None)."""
    response = http.post("/api/orchestrations/echo", params={"instance_id": "empty-1"})
    expected = 202
    assert expected == response.status_code
    assert _finish(client, "empty-1").output is None


def test_start_management_urls_use_the_configured_base_url(client, make_http):
    """With base_url set, management URLs are built from it instead of the request."""
    http = make_http(create_app(client, base_url="https://duraray.example/hub/"))
    response = http.post("/api/orchestrations/echo", params={"instance_id": "b 1"})
    expected = "https://duraray.example/hub/api/instances/b%201"
    assert expected == response.json()["statusQueryGetUri"]
    assert expected == response.headers["location"]


def test_start_with_a_running_id_is_409(http):
    """Starting with the id of a running instance answers 409."""
    _start(http, "wait_go", instance_id="dup-1")
    response = http.post("/api/orchestrations/wait_go", params={"instance_id": "dup-1"})
    expected = 409
    assert expected == response.status_code
    assert "already exists" in response.json()["error"]


def test_start_with_malformed_json_is_400(http):
    """A start body that is not JSON answers 400 with an error message."""
    response = http.post("/api/orchestrations/echo", content=b"{not json", headers=JSON)
    expected = 400
    assert expected == response.status_code
    assert "not valid JSON" in response.json()["error"]


def test_start_rejects_non_finite_json_numbers(http):
    """NaN is not JSON, so a body holding it answers 400."""
    response = http.post("/api/orchestrations/echo", content=b"[NaN]", headers=JSON)
    expected = 400
    assert expected == response.status_code


@pytest.mark.parametrize("instance_id", ["x" * 300, "bad\x01id"])
def test_start_with_an_invalid_instance_id_is_400(http, instance_id):
    """Over-long ids and ids with control characters answer 400 (a "/" is fine)."""
    response = http.post("/api/orchestrations/echo", params={"instance_id": instance_id})
    expected = 400
    assert expected == response.status_code
    assert response.json()["error"]


def test_start_of_an_unknown_orchestration_fails_the_instance(http, client):
    """An unknown orchestration name still starts (202), and the instance fails."""
    instance_id = _start(http, "no_such_orchestration")
    expected = dr.OrchestrationStatus.FAILED
    assert expected == _finish(client, instance_id).runtime_status


def test_body_over_the_limit_is_413(client, make_http):
    """A body larger than max_body_bytes answers 413, with or without Content-Length."""
    http = make_http(create_app(client, max_body_bytes=64))
    big = b'"' + b"x" * 100 + b'"'

    async def chunks():
        for _ in range(10):
            yield b"x" * 20

    declared = http.post("/api/orchestrations/echo", content=big)
    streamed = http.post("/api/orchestrations/echo", content=chunks())
    expected = 413
    assert expected == declared.status_code
    assert expected == streamed.status_code
    assert "limit" in declared.json()["error"]


def test_payload_over_the_engine_limit_is_400(make_http):
    """A payload the codec refuses (over max_payload_bytes) answers 400, not 500."""
    with run_in_process(app, clock=ManualClock(auto_advance=True), max_payload_bytes=1024) as c:
        http = make_http(create_app(c))
        response = http.post("/api/orchestrations/echo", json="x" * 5000)
    expected = 400
    assert expected == response.status_code
    assert "orchestration input" in response.json()["error"]


# -- status ----------------------------------------------------------------------------------


def test_status_of_a_running_instance_is_202_with_location(http):
    """Polling a running instance answers 202 with Location and Retry-After."""
    _start(http, "wait_go", instance_id="run-1")
    response = http.get("/api/instances/run-1")
    expected = 202
    assert expected == response.status_code
    expected = STATUS_KEYS
    assert expected == set(response.json())
    assert response.json()["runtimeStatus"] in ("Pending", "Running")
    expected = "http://testserver/api/instances/run-1"
    assert expected == response.headers["location"]
    expected = "1"
    assert expected == response.headers["retry-after"]


def test_an_instance_id_with_slashes_is_reachable_percent_encoded(http, client):
    """Ids may hold "/" (and other reserved characters): the management URLs carry them
    percent-encoded, and every route finds the instance."""
    iid = "tenant/a b/order?1%"
    started = http.post("/api/orchestrations/wait_go", params={"instanceId": iid})
    assert 202 == started.status_code, started.text
    status_url = started.json()["statusQueryGetUri"]
    assert "tenant%2Fa%20b%2Forder%3F1%25" in status_url
    path = status_url.removeprefix("http://testserver")
    assert iid == http.get(path).json()["instanceId"]
    raised = http.post(started.json()["sendEventPostUri"].replace("{eventName}", "go"), json=7)
    assert 202 == raised.status_code, raised.text
    _finish(client, iid)
    assert 7 == http.get(path).json()["output"]
    assert 200 == http.delete(path).status_code
    assert 404 == http.get(path).status_code


def test_status_of_a_completed_instance_is_200_with_output(http, client):
    """Once completed the status URL answers 200 with the Durable Functions status payload."""
    _start(http, "greet", "Oslo", instance_id="done-1")
    _finish(client, "done-1")
    response = http.get("/api/instances/done-1")
    body = response.json()
    expected = 200
    assert expected == response.status_code
    expected = {
        "name": "greet",
        "instanceId": "done-1",
        "runtimeStatus": "Completed",
        "input": "Oslo",
        "customStatus": {"greeting": "Oslo"},
        "output": "Hello, Oslo!",
        "failureDetails": None,
        "version": None,
        "tags": None,
        "parentInstanceId": None,
    }
    assert expected == {k: v for k, v in body.items() if k in expected}
    assert body["createdTime"].endswith("Z")
    assert "location" not in response.headers


def test_status_hides_input_when_asked(http, client):
    """showInput=false leaves the input out of the status payload."""
    _start(http, "echo", {"a": 1}, instance_id="noinput-1")
    _finish(client, "noinput-1")
    body = http.get("/api/instances/noinput-1", params={"showInput": "false"}).json()
    assert body["input"] is None
    expected = {"a": 1}
    assert expected == body["output"]


def test_status_with_history_lists_typed_events(http, client):
    """showHistory=true adds historyEvents with an EventType and the event's fields."""
    _start(http, "greet", "Rome", instance_id="hist-1")
    _finish(client, "hist-1")
    events = http.get("/api/instances/hist-1", params={"showHistory": "true"}).json()[
        "historyEvents"
    ]
    types = [e["EventType"] for e in events]
    completed = next(e for e in events if e["EventType"] == "TaskCompleted")
    started = next(e for e in events if e["EventType"] == "ExecutionStarted")
    assert {"ExecutionStarted", "TaskScheduled", "TaskCompleted", "ExecutionCompleted"} <= set(
        types
    )
    expected = "Hello, Rome!"
    assert expected == completed["result"]
    expected = "Rome"
    assert expected == started["input"]
    assert started["timestamp"].endswith("Z")


def test_status_payloads_carry_bytes_as_base64(http, client):
    """A bytes output is shown as base64 text."""
    _start(http, "binary", instance_id="bin-1")
    _finish(client, "bin-1")
    expected = "AAH/"
    assert expected == http.get("/api/instances/bin-1").json()["output"]


def test_status_of_a_failed_instance_reports_the_failure(http, client):
    """A failed instance answers 200 (500 on request) with its failure details."""
    _start(http, "boom", instance_id="fail-1")
    _finish(client, "fail-1")
    plain = http.get("/api/instances/fail-1")
    strict = http.get(
        "/api/instances/fail-1", params={"returnInternalServerErrorOnFailure": "true"}
    )
    expected = 200
    assert expected == plain.status_code
    expected = 500
    assert expected == strict.status_code
    body = plain.json()
    expected = "Failed"
    assert expected == body["runtimeStatus"]
    assert "boom" in body["failureDetails"]["errorMessage"]
    assert "boom" in body["output"]


def test_status_of_an_unknown_instance_is_404(http):
    """An unknown instance id answers 404 with an error message."""
    response = http.get("/api/instances/never-started")
    expected = 404
    assert expected == response.status_code
    assert "never-started" in response.json()["error"]


def test_status_with_an_invalid_id_or_flag_is_400(http):
    """An over-long id or a flag that is not a boolean answers 400."""
    too_long = http.get("/api/instances/" + "x" * 300)
    bad_flag = http.get("/api/instances/x", params={"showHistory": "maybe"})
    expected = 400
    assert expected == too_long.status_code
    assert expected == bad_flag.status_code


# -- raiseEvent --------------------------------------------------------------------------------


def test_raise_event_delivers_the_json_body(http, client):
    """raiseEvent answers 202 and the orchestration receives the body as event data."""
    _start(http, "wait_go", instance_id="ev-1")
    response = http.post("/api/instances/ev-1/raiseEvent/go", json={"approved": True})
    expected = 202
    assert expected == response.status_code
    expected = {"approved": True}
    assert expected == _finish(client, "ev-1").output


def test_raise_event_to_an_unknown_instance_is_404(http):
    """raiseEvent to an unknown instance answers 404."""
    response = http.post("/api/instances/nobody/raiseEvent/go", json=1)
    expected = 404
    assert expected == response.status_code


def test_raise_event_to_a_completed_instance_is_410(http, client):
    """raiseEvent to a finished instance answers 410 Gone."""
    _start(http, "echo", instance_id="ev-done")
    _finish(client, "ev-done")
    response = http.post("/api/instances/ev-done/raiseEvent/go", json=1)
    expected = 410
    assert expected == response.status_code
    assert "COMPLETED" in response.json()["error"]


def test_raise_event_with_a_non_json_body_is_400(http):
    """raiseEvent with a body that is not JSON answers 400."""
    _start(http, "wait_go", instance_id="ev-bad")
    response = http.post("/api/instances/ev-bad/raiseEvent/go", content=b"<xml/>", headers=JSON)
    expected = 400
    assert expected == response.status_code


# -- terminate, suspend, resume ------------------------------------------------------------------


def test_terminate_with_a_reason_ends_the_instance(http, client):
    """terminate?reason= answers 202 and the instance is Terminated with the reason as output."""
    _start(http, "wait_go", instance_id="term-1")
    response = http.post("/api/instances/term-1/terminate", params={"reason": "enough"})
    state = _finish(client, "term-1")
    expected = 202
    assert expected == response.status_code
    expected = (dr.OrchestrationStatus.TERMINATED, "enough")
    assert expected == (state.runtime_status, state.output)


def test_terminate_with_a_json_body_uses_it_as_output(http, client):
    """A JSON terminate body becomes the terminated instance's output."""
    _start(http, "wait_go", instance_id="term-2")
    http.post("/api/instances/term-2/terminate", json={"why": "test"})
    expected = {"why": "test"}
    assert expected == _finish(client, "term-2").output


def test_terminate_of_unknown_or_finished_instances_is_404_or_410(http, client):
    """terminate answers 404 for an unknown id and 410 for a finished instance."""
    _start(http, "echo", instance_id="term-done")
    _finish(client, "term-done")
    expected = (404, 410)
    assert expected == (
        http.post("/api/instances/nobody/terminate").status_code,
        http.post("/api/instances/term-done/terminate").status_code,
    )


def test_suspend_and_resume_round_trip(http, client):
    """suspend makes the status Suspended (still 202), resume lets the instance finish."""
    _start(http, "wait_go", instance_id="sus-1")
    suspended = http.post("/api/instances/sus-1/suspend", params={"reason": "pause"})
    status = http.get("/api/instances/sus-1")
    resumed = http.post("/api/instances/sus-1/resume", json="go on")
    http.post("/api/instances/sus-1/raiseEvent/go", json="after")
    expected = (202, 202, "Suspended", 202)
    assert expected == (
        suspended.status_code,
        status.status_code,
        status.json()["runtimeStatus"],
        resumed.status_code,
    )
    expected = "after"
    assert expected == _finish(client, "sus-1").output


def test_suspend_resume_of_unknown_or_finished_instances(http, client):
    """suspend of a finished instance answers 410; resume of an unknown one 404."""
    _start(http, "echo", instance_id="sus-done")
    _finish(client, "sus-done")
    expected = (410, 404)
    assert expected == (
        http.post("/api/instances/sus-done/suspend").status_code,
        http.post("/api/instances/nobody/resume").status_code,
    )


def test_suspend_with_a_non_string_body_is_400(http):
    """The optional body of suspend must be a JSON string (the reason)."""
    _start(http, "wait_go", instance_id="sus-bad")
    response = http.post("/api/instances/sus-bad/suspend", json={"reason": 1})
    expected = 400
    assert expected == response.status_code


# -- rewind, restart ----------------------------------------------------------------------------


def test_rewind_reruns_a_failed_instance(http, client):
    """rewind of a failed instance answers 202 and the instance then completes."""
    _start(http, "flaky", instance_id="rw-1")
    failed = _finish(client, "rw-1")
    response = http.post("/api/instances/rw-1/rewind", params={"reason": "fixed"})
    expected = 202
    assert expected == response.status_code
    expected = dr.OrchestrationStatus.FAILED
    assert expected == failed.runtime_status
    expected = "attempt 2"
    assert expected == _finish(client, "rw-1").output


def test_rewind_of_a_completed_or_unknown_instance_is_410_or_404(http, client):
    """rewind answers 410 for an instance that did not fail and 404 for an unknown one."""
    _start(http, "echo", instance_id="rw-done")
    _finish(client, "rw-done")
    expected = (410, 404)
    assert expected == (
        http.post("/api/instances/rw-done/rewind").status_code,
        http.post("/api/instances/nobody/rewind").status_code,
    )


def test_restart_reruns_a_finished_instance_under_its_id(http, client):
    """restart answers 202 with the check-status payload of the same id."""
    _start(http, "greet", "Lima", instance_id="rs-1")
    _finish(client, "rs-1")
    response = http.post("/api/instances/rs-1/restart")
    expected = (202, "rs-1", "http://testserver/api/instances/rs-1")
    assert expected == (
        response.status_code,
        response.json()["id"],
        response.headers["location"],
    )
    expected = "Hello, Lima!"
    assert expected == _finish(client, "rs-1").output


def test_restart_with_a_new_instance_id(http, client):
    """restartWithNewInstanceId=true answers the payload of a new instance with the same input."""
    _start(http, "greet", "Kyiv", instance_id="rs-2")
    _finish(client, "rs-2")
    response = http.post("/api/instances/rs-2/restart", params={"restartWithNewInstanceId": "true"})
    new_id = response.json()["id"]
    expected = 202
    assert expected == response.status_code
    old_id = "rs-2"
    assert old_id != new_id
    expected = MANAGEMENT_KEYS
    assert expected == set(response.json())
    expected = "Hello, Kyiv!"
    assert expected == _finish(client, new_id).output


def test_restart_of_a_running_or_unknown_instance_is_410_or_404(http):
    """restart answers 410 while the instance runs and 404 for an unknown id."""
    _start(http, "wait_go", instance_id="rs-run")
    expected = (410, 404)
    assert expected == (
        http.post("/api/instances/rs-run/restart").status_code,
        http.post("/api/instances/nobody/restart").status_code,
    )


# -- purge -------------------------------------------------------------------------------------


def test_purge_deletes_a_finished_instance(http, client):
    """DELETE of a finished instance answers 200 {instancesDeleted: 1}; it is then unknown."""
    _start(http, "echo", instance_id="pg-1")
    _finish(client, "pg-1")
    response = http.delete("/api/instances/pg-1")
    expected = (200, {"instancesDeleted": 1})
    assert expected == (response.status_code, response.json())
    expected = 404
    assert expected == http.get("/api/instances/pg-1").status_code


def test_purge_of_unknown_or_running_instances_is_404_or_410(http):
    """DELETE answers 404 for an unknown id and 410 for a running instance (nothing deleted)."""
    _start(http, "wait_go", instance_id="pg-run")
    expected = (404, 410)
    assert expected == (
        http.delete("/api/instances/nobody").status_code,
        http.delete("/api/instances/pg-run").status_code,
    )


def test_bulk_purge_deletes_matching_finished_instances(http, client):
    """DELETE /api/instances with createdTimeFrom purges the finished instances only."""
    for iid in ("bp-1", "bp-2"):
        _start(http, "echo", instance_id=iid)
        _finish(client, iid)
    _start(http, "wait_go", instance_id="bp-run")
    params = {"createdTimeFrom": "2000-01-01T00:00:00Z", "runtimeStatus": "Completed"}
    first = http.delete("/api/instances", params=params)
    again = http.delete("/api/instances", params=params)
    missing = http.delete("/api/instances")
    expected = (200, {"instancesDeleted": 2}, 404, 400)
    assert expected == (first.status_code, first.json(), again.status_code, missing.status_code)
    expected = 202
    assert expected == http.get("/api/instances/bp-run").status_code


# -- list --------------------------------------------------------------------------------------


def test_list_pages_with_the_continuation_header_return_each_instance_once(http, client):
    """Following x-ms-continuation-token with top=2 lists every instance exactly once."""
    ids = [f"page-{i}" for i in range(7)]
    for iid in ids:
        _start(http, "echo", iid, instance_id=iid)
        _finish(client, iid)
    seen: list[str] = []
    headers: dict[str, str] = {}
    for _ in range(len(ids) + 2):  # a bound: each page has at least one item but the last
        response = http.get("/api/instances", params={"top": "2"}, headers=headers)
        expected = 200
        assert expected == response.status_code
        assert len(response.json()) <= 2
        seen.extend(item["instanceId"] for item in response.json())
        token = response.headers.get("x-ms-continuation-token")
        if token is None:
            break
        headers = {"x-ms-continuation-token": token}
    assert sorted(ids) == sorted(seen)


def test_list_filters_by_status_prefix_and_time(http, client):
    """runtimeStatus, instanceIdPrefix and createdTimeFrom/To filter the list."""
    _start(http, "echo", instance_id="flt-done")
    _finish(client, "flt-done")
    _start(http, "wait_go", instance_id="flt-run")
    _start(http, "wait_go", instance_id="other-run")

    def ids(**params):
        response = http.get("/api/instances", params=params)
        return sorted(item["instanceId"] for item in response.json())

    expected = ["flt-run", "other-run"]
    assert expected == ids(runtimeStatus="Running,Pending")
    expected = ["flt-done", "flt-run"]
    assert expected == ids(instanceIdPrefix="flt-")
    expected = ["flt-done"]
    assert expected == ids(instanceIdPrefix="flt-", runtimeStatus="Completed")
    expected = []
    assert expected == ids(createdTimeTo="2000-01-01T00:00:00Z")
    expected = ["flt-done", "flt-run", "other-run"]
    assert expected == ids(createdTimeFrom="2000-01-01T00:00:00+00:00")


def test_list_newest_first_by_name_and_tag_and_the_counts(http, client):
    """newestFirst, name and tag=key:value filter the list; /api/instance-counts counts
    every status with the same filters."""
    client.schedule_new_orchestrations("echo", [1, 2, 3], instance_ids=["t-1", "t-2", "t-3"])
    client.schedule_new_orchestration("echo", input=4, instance_id="t-4", tags={"k": "v"})
    for iid in ("t-1", "t-2", "t-3", "t-4"):
        _finish(client, iid)
    _start(http, "wait_go", instance_id="t-run")

    def ids(**params):
        response = http.get("/api/instances", params=params)
        assert 200 == response.status_code, response.text
        return [item["instanceId"] for item in response.json()]

    oldest = ids(name="echo")
    assert sorted(oldest) == ["t-1", "t-2", "t-3", "t-4"]
    assert list(reversed(oldest)) == ids(name="echo", newestFirst="true")
    assert ["t-4"] == ids(tag="k:v")
    assert [] == ids(tag="k:other")
    counts = http.get("/api/instance-counts").json()
    assert 4 == counts["Completed"] and 1 == counts["Running"] and 0 == counts["Failed"]
    assert {"Completed": 1} == {
        k: v for k, v in http.get("/api/instance-counts", params={"tag": "k:v"}).json().items() if v
    }
    assert 400 == http.get("/api/instances", params={"tag": "novalue"}).status_code


def test_list_shows_input_only_when_asked(http, client):
    """The list leaves inputs out unless showInput=true."""
    _start(http, "echo", [1, 2], instance_id="li-1")
    _finish(client, "li-1")
    hidden = http.get("/api/instances").json()[0]
    shown = http.get("/api/instances", params={"showInput": "true"}).json()[0]
    assert hidden["input"] is None
    expected = [1, 2]
    assert expected == shown["input"]


@pytest.mark.parametrize(
    "params",
    [{"runtimeStatus": "Sleeping"}, {"createdTimeFrom": "yesterday"}, {"top": "0"}, {"top": "x"}],
)
def test_list_with_invalid_query_parameters_is_400(http, params):
    """An unknown status, a malformed time or an out-of-range top answers 400."""
    response = http.get("/api/instances", params=params)
    expected = 400
    assert expected == response.status_code
    assert response.json()["error"]


def test_list_with_a_malformed_continuation_token_is_400(http):
    """A continuation token the server did not issue answers 400."""
    response = http.get("/api/instances", headers={"x-ms-continuation-token": "!!"})
    expected = 400
    assert expected == response.status_code


# -- entities ------------------------------------------------------------------------------------


def test_signal_entity_then_get_its_state(http, poll):
    """Signals answer 202; GET then shows the entity's state and metadata."""
    responses = [
        http.post("/api/entities/Counter/k1", params={"op": "add"}, json=n) for n in (2, 3)
    ]
    expected = [202, 202]
    assert expected == [r.status_code for r in responses]
    response = poll(
        lambda: http.get("/api/entities/counter/k1"),
        lambda r: r.status_code == 200 and r.json()["state"] == 5,
    )
    body = response.json()
    expected = {"name": "counter", "key": "k1"}
    assert expected == body["entityId"]
    expected = {"entityId", "state", "lastModified", "lockedBy", "backlogQueueSize"}
    assert expected == set(body)
    assert body["lastModified"].endswith("Z")


def test_get_of_an_unknown_entity_is_404(http):
    """GET of an entity that never received an operation answers 404."""
    response = http.get("/api/entities/counter/never")
    expected = 404
    assert expected == response.status_code


def test_signal_entity_validation(http):
    """A signal without op, with an invalid entity name or with a non-JSON body answers 400."""
    expected = (400, 400, 400)
    assert expected == (
        http.post("/api/entities/counter/k", json=1).status_code,
        http.post("/api/entities/bad@name/k", params={"op": "add"}, json=1).status_code,
        http.post(
            "/api/entities/counter/k", params={"op": "add"}, content=b"{", headers=JSON
        ).status_code,
    )


def test_list_entities_pages_with_the_continuation_header(http, client, poll):
    """GET /api/entities?name= pages with the continuation header and lists each entity once."""
    keys = ["a", "b", "c"]
    for key in keys:
        client.signal_entity(dr.EntityId("counter", key), "add", 1)
    poll(
        lambda: len(client.get_all_entities(name="counter")),
        lambda n: n == len(keys),
    )
    seen: list[str] = []
    headers: dict[str, str] = {}
    for _ in range(len(keys) + 2):
        response = http.get(
            "/api/entities", params={"name": "counter", "top": "1"}, headers=headers
        )
        seen.extend(item["entityId"]["key"] for item in response.json())
        token = response.headers.get("x-ms-continuation-token")
        if token is None:
            break
        headers = {"x-ms-continuation-token": token}
    assert keys == sorted(seen)


# -- partitions, metrics, health --------------------------------------------------------------------


def test_partitions_lists_each_partitions_stats(http, client):
    """/api/partitions answers one stats object per partition."""
    _start(http, "echo", instance_id="stats-1")
    _finish(client, "stats-1")
    body = http.get("/api/partitions").json()
    expected = list(range(app.config.partitions))
    assert expected == [part["partition"] for part in body]
    assert all("batches" in part["counters"] for part in body)
    assert sum(part["counters"]["episodes"] for part in body) >= 1


def test_metrics_exposes_per_partition_series(http, client):
    """/metrics answers Prometheus text with series labelled by hub and partition."""
    _start(http, "echo", instance_id="metrics-1")
    _finish(client, "metrics-1")
    response = http.get("/metrics")
    text = response.text
    expected = 200
    assert expected == response.status_code
    assert response.headers["content-type"].startswith("text/plain")
    assert 'duraray_stats_up{hub="http-api"} 1.0' in text
    for partition in range(app.config.partitions):
        labels = f'hub="http-api",partition="{partition}"'
        for name in (
            "duraray_batches_total",
            "duraray_commit_seconds_total",
            "duraray_queue_depth",
        ):
            assert f"{name}{{{labels}}}" in text
        assert f'duraray_orchestrations_live{{{labels},status="RUNNING"}}' in text


def test_metrics_report_unavailable_partitions_as_down():
    """When partition_stats fails, the scrape answers stats_up 0 instead of an error."""

    def broken() -> list[dict]:
        raise RuntimeError("partition unreachable")

    from prometheus_client import generate_latest

    text = generate_latest(hub_registry("h", broken)).decode()
    assert 'duraray_stats_up{hub="h"} 0.0' in text
    assert "duraray_batches_total" not in text


def test_healthz_answers_200(http):
    """/healthz answers 200 with the hub's name."""
    response = http.get("/healthz")
    expected = (200, {"status": "ok", "hub": "http-api"})
    assert expected == (response.status_code, response.json())


def test_unknown_routes_and_methods_answer_json_errors(http):
    """An unknown path answers 404 and a wrong method 405, both with a JSON error."""
    missing = http.get("/api/nothing-here")
    wrong = http.request("PUT", "/api/instances")
    expected = (404, 405)
    assert expected == (missing.status_code, wrong.status_code)
    assert missing.json()["error"]


# -- authentication ----------------------------------------------------------------------------------


def test_a_configured_token_is_required_on_every_route_but_healthz(client, make_http):
    """With a token, requests without it or with a wrong one answer 401; /healthz stays open."""
    http = make_http(create_app(client, token="s3cret", require_token=True))
    missing = http.get("/api/instances")
    wrong = http.get("/api/instances", headers={"Authorization": "Bearer nope"})
    right = http.get("/api/instances", headers={"Authorization": "Bearer s3cret"})
    start = http.post("/api/orchestrations/echo")
    metrics = http.get("/metrics")
    health = http.get("/healthz")
    expected = (401, 401, 200, 401, 401, 200)
    assert expected == (
        missing.status_code,
        wrong.status_code,
        right.status_code,
        start.status_code,
        metrics.status_code,
        health.status_code,
    )
    assert "missing bearer token" in missing.json()["error"]
    assert "invalid bearer token" in wrong.json()["error"]
    assert missing.headers["www-authenticate"].startswith("Bearer")


def test_require_token_without_a_token_is_an_error(client):
    """create_app(require_token=True) without a token refuses to build the app."""
    with pytest.raises(ValueError, match="needs a token"):
        create_app(client, require_token=True)


def test_serve_refuses_a_non_loopback_host_without_a_token(client, monkeypatch):
    """Serving on 0.0.0.0 without a token (argument or environment) raises a clear error."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match="without a bearer token"):
        build_server(client, host="0.0.0.0", port=0)


def test_serve_takes_the_token_from_the_environment(client, monkeypatch, make_http):
    """On a non-loopback host the token from DURARAY_HTTP_TOKEN is enforced."""
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    server = build_server(client, host="0.0.0.0", port=0)
    http = make_http(server.config.app)
    expected = (401, 200)
    assert expected == (
        http.get("/api/partitions").status_code,
        http.get("/api/partitions", headers={"Authorization": "Bearer from-env"}).status_code,
    )


def test_serve_on_loopback_needs_no_token(client, monkeypatch, make_http):
    """On a loopback host without any token the API is open."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    server = build_server(client, host="127.0.0.1", port=0)
    expected = 200
    http = make_http(server.config.app, base_url="http://127.0.0.1:8000")
    assert expected == http.get("/api/partitions").status_code


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_loopback_detection(host, loopback):
    """Only localhost and loopback addresses count as loopback."""
    assert loopback == is_loopback(host)


def _fake_dashboard(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "duraray.runtime.http.dashboard", module)


def test_dashboard_routes_are_mounted_and_served_without_a_token(client, make_http, monkeypatch):
    """dashboard_routes() are appended; its page and static files need no token, the API does."""

    async def page(request: Request) -> Response:
        return PlainTextResponse("page")

    fake = types.ModuleType("duraray.runtime.http.dashboard")
    fake.dashboard_routes = lambda: [  # type: ignore[attr-defined]
        Route("/", page, methods=["GET", "POST"]),
        Route("/static/app.js", page),
    ]
    _fake_dashboard(monkeypatch, fake)
    http = make_http(create_app(client, token="t"))
    expected = (200, 200, 401, 401)
    assert expected == (
        http.get("/").status_code,
        http.get("/static/app.js").status_code,
        http.post("/").status_code,
        http.get("/api/partitions").status_code,
    )
    expected = "page"
    assert expected == http.get("/").text


def test_the_api_works_without_a_dashboard(client, make_http, monkeypatch):
    """When no dashboard module can be imported, the API is served and GET / is 404."""
    _fake_dashboard(monkeypatch, None)  # None in sys.modules makes the import fail
    http = make_http(create_app(client))
    expected = (404, 200)
    assert expected == (http.get("/").status_code, http.get("/healthz").status_code)


# -- wait_for_completion_or_create_check_status_response (SEMANTICS #72) --------------------------------


@pytest.fixture
def waiting_http(client, make_http):
    """An app whose route starts an orchestration and answers with the #72 helper."""

    async def run(request: Request) -> Response:
        name = request.path_params["name"]
        timeout = float(request.query_params.get("timeout", TIMEOUT))
        instance_id = await dr.AsyncClient(client).schedule_new_orchestration(
            name, input=request.query_params.get("input")
        )
        return await wait_for_completion_or_create_check_status_response(
            client, request, instance_id, timeout=timeout, retry_interval=min(timeout, 1)
        )

    return make_http(Starlette(routes=[Route("/run/{name}", run, methods=["POST"])]))


def test_wait_helper_answers_200_with_the_output_when_done(waiting_http):
    """An orchestration finishing within the timeout answers 200 with its output."""
    response = waiting_http.post("/run/greet", params={"input": "Bern"})
    expected = (200, "Hello, Bern!")
    assert expected == (response.status_code, response.json())


def test_wait_helper_answers_500_with_the_status_when_failed(waiting_http):
    """A failed orchestration answers 500 with its status payload."""
    response = waiting_http.post("/run/boom")
    expected = (500, "Failed")
    assert expected == (response.status_code, response.json()["runtimeStatus"])
    assert "boom" in response.json()["failureDetails"]["errorMessage"]


def test_wait_helper_answers_202_check_status_when_still_running(waiting_http):
    """An orchestration still running at the timeout answers the 202 check-status response."""
    response = waiting_http.post("/run/wait_go", params={"timeout": "0.05"})
    body = response.json()
    expected = 202
    assert expected == response.status_code
    expected = MANAGEMENT_KEYS
    assert expected == set(body)
    assert body["statusQueryGetUri"] == response.headers["location"]


def test_wait_helper_answers_404_for_an_unknown_instance(client, make_http):
    """The helper answers 404 for an instance id that does not exist."""

    async def run(request: Request) -> Response:
        return await wait_for_completion_or_create_check_status_response(
            client, request, "nobody", timeout=1
        )

    http = make_http(Starlette(routes=[Route("/run", run)]))
    expected = 404
    assert expected == http.get("/run").status_code


def test_wait_helper_checks_the_retry_interval(client):
    """A retry interval longer than the timeout is refused, as in Durable Functions."""
    with pytest.raises(ValueError, match="retry interval"):
        asyncio.run(
            wait_for_completion_or_create_check_status_response(
                client,
                None,
                "x",
                timeout=1,
                retry_interval=5,  # type: ignore[arg-type]
            )
        )


# -- payload conversion ----------------------------------------------------------------------------------


def test_to_json_maps_codec_types_to_json():
    """Payload types JSON lacks become base64, ISO 8601, seconds, text or lists."""
    value = {
        "bytes": b"\x00\xff",
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "delay": timedelta(minutes=1, milliseconds=500),
        "id": uuid.UUID(int=1),
        "amount": Decimal("1.10"),
        "pair": (1, "two"),
        "nan": float("nan"),
        "inf": float("-inf"),
        1: "int key",
        None: "none key",
    }
    expected = {
        "bytes": "AP8=",
        "when": "2026-01-02T03:04:05+00:00",
        "delay": 60.5,
        "id": "00000000-0000-0000-0000-000000000001",
        "amount": "1.10",
        "pair": [1, "two"],
        "nan": "NaN",
        "inf": "-Infinity",
        "1": "int key",
        "null": "none key",
    }
    assert expected == to_json(value)
