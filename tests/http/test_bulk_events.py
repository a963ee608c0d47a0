"""``POST /api/instances/raiseEvents``: many external events in one request, one outcome
per event in order; a malformed body is refused whole, and nothing of it is delivered."""

from __future__ import annotations

from typing import Any

import pytest

import duraray as dr
from duraray.runtime.http import create_app
from duraray.runtime.http.parsing import MAX_BULK_EVENTS

#: Seconds any single wait may take before it counts as a failure.
TIMEOUT = 10.0
URL = "/api/instances/raiseEvents"

app = dr.App("http-bulk-events")


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value=None):
    return value


def _waiting(client: dr.Client, *ids: str) -> None:
    client.schedule_new_orchestrations(wait_go, [None] * len(ids), instance_ids=list(ids))


def _raised(client: dr.Client, iid: str) -> list[Any]:
    history = client.get_orchestration_history(iid)
    return [e.input for e in history if isinstance(e, dr.EventRaised)]


def test_raise_events_delivers_each_event_and_answers_per_event(http, client):
    """200 with one outcome per event, in order; delivered events complete their instances,
    an unknown id is notFound and a finished instance finished, with the error's words."""
    _waiting(client, "b-1", "b-2")
    client.schedule_new_orchestration(echo, instance_id="b-done")
    client.wait_for_orchestration_completion("b-done", timeout=TIMEOUT)

    response = http.post(
        URL,
        json=[
            {"instanceId": "b-1", "name": "go", "data": {"n": 1}},
            {"instanceId": "nobody", "name": "go", "data": 2},
            {"instanceId": "b-done", "name": "go"},
            {"instanceId": "b-2", "name": "go", "data": [3]},
        ],
    )

    expected_code = 200
    assert expected_code == response.status_code
    body = response.json()
    expected = [
        ("b-1", "delivered"),
        ("nobody", "notFound"),
        ("b-done", "finished"),
        ("b-2", "delivered"),
    ]
    assert expected == [(item["instanceId"], item["status"]) for item in body]
    assert [None, None] == [body[0]["error"], body[3]["error"]]
    assert "nobody" in body[1]["error"]
    assert "COMPLETED" in body[2]["error"]
    states = client.wait_for_orchestrations(["b-1", "b-2"], timeout=TIMEOUT)
    expected_outputs = [{"n": 1}, [3]]
    assert expected_outputs == [s.output for s in states]


def test_an_empty_list_answers_an_empty_list(http):
    """No events: 200 and []."""
    response = http.post(URL, json=[])
    expected = (200, [])
    assert expected == (response.status_code, response.json())


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"instanceId": "m-1", "name": "go"}, "must be a JSON list of events"),
        ("m-1", "must be a JSON list of events"),
        ([{"instanceId": "m-1", "name": "go"}, 5], "events[1] must be an object"),
        ([{"instanceId": "m-1", "name": "go"}, {"name": "go"}], "events[1].instanceId"),
        ([{"instanceId": "m-1", "name": "go"}, {"instanceId": "m-1"}], "events[1].name"),
        ([{"instanceId": "m-1", "name": 5}], "events[0].name must be a string"),
        ([{"instanceId": 1, "name": "go"}], "events[0].instanceId must be a string"),
        (
            [{"instanceId": "m-1", "name": "go"}, {"instanceId": "m-1", "eventName": "go"}],
            "events[1] has unknown keys 'eventName'",
        ),
        (
            [{"instanceId": "m-1", "name": "go"}, {"instanceId": "", "name": "go"}],
            "events[1]: instance id must not be empty",
        ),
        (
            [{"instanceId": "m-1", "name": "go"}, {"instanceId": "m-1", "name": "x" * 300}],
            "events[1]: event name",
        ),
        (
            [{"instanceId": "m-1", "name": "go"}, {"instanceId": "m\x00", "name": "go"}],
            "events[1]: instance id",
        ),
    ],
)
def test_a_malformed_body_is_400_and_nothing_is_delivered(http, client, body, words):
    """Any malformed event refuses the whole request, naming the event; none is delivered."""
    _waiting(client, "m-1")

    response = http.post(URL, json=body)

    expected = 400
    assert expected == response.status_code
    assert words in response.json()["error"]
    client.hub_runtime.wait_idle(TIMEOUT)
    assert [] == _raised(client, "m-1")


def test_a_missing_body_is_400(http):
    """A POST without a body names the shape it wants."""
    response = http.post(URL)
    expected = 400
    assert expected == response.status_code
    assert "instanceId" in response.json()["error"]


def test_too_many_events_or_too_large_a_body_is_413(client, http, make_http):
    """Over MAX_BULK_EVENTS events, or a body over max_body_bytes, answers 413; nothing delivered."""
    _waiting(client, "big-1")
    many = [{"instanceId": "big-1", "name": "go"}] * (MAX_BULK_EVENTS + 1)
    small = make_http(create_app(client, max_body_bytes=64))

    counted = http.post(URL, json=many)
    sized = small.post(URL, json=[{"instanceId": "big-1", "name": "go", "data": "x" * 100}])

    expected = (413, 413)
    assert expected == (counted.status_code, sized.status_code)
    assert str(MAX_BULK_EVENTS) in counted.json()["error"]
    client.hub_runtime.wait_idle(TIMEOUT)
    assert [] == _raised(client, "big-1")


def test_an_instance_named_raise_events_is_still_addressable(http, client):
    """The bulk route takes POST only: GET and DELETE of /api/instances/raiseEvents still
    reach the instance of that id."""
    client.schedule_new_orchestration(echo, input=1, instance_id="raiseEvents")
    client.wait_for_orchestration_completion("raiseEvents", timeout=TIMEOUT)

    status = http.get(URL)
    purged = http.delete(URL)

    expected = (200, "raiseEvents", 200)
    assert expected == (status.status_code, status.json()["instanceId"], purged.status_code)
