"""The HTTP API with payloads it cannot show as they are (issue 11): never a 400 or 500.

New payloads that would not decode or render are refused at the call site (400); records
stored before those rules (written here with the codec's check switched off) are listed
and shown with a marker and ``payloadErrors``, each record on its own.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

import duraray as dr
from duraray.runtime.engine import codec, codec_ext
from duraray.runtime.http.payloads import render, to_json

app = dr.App("http-degrade")


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@app.orchestration
def hold(ctx: dr.OrchestrationContext, value: Any = None) -> Any:
    return (yield ctx.wait_for_external_event("go"))


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def store_unchecked(client: dr.Client, instance_id: str, value: Any) -> None:
    """Start ``hold`` with ``value`` as a codec without the new checks wrote it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "_check", lambda value: None)
        mp.setattr(codec_ext, "MAX_INT_BITS", 10**9)  # read where ints are encoded
        client.schedule_new_orchestration(hold, input=value, instance_id=instance_id)
    client.wait_for_orchestration_start(instance_id, timeout=10)


@pytest.fixture
def stored(client: dr.Client) -> dict[str, Any]:
    """One good record and three that older versions could store."""
    client.schedule_new_orchestration(hold, input={"city": "Tokyo"}, instance_id="good")
    client.wait_for_orchestration_start("good", timeout=10)
    store_unchecked(client, "badkey", {Point(1, 2): 1})
    store_unchecked(client, "deep", nested(600))
    store_unchecked(client, "huge", 2**20000)
    return {"good": {"city": "Tokyo"}}


def test_listing_shows_every_record_with_markers(http: Any, stored: dict[str, Any]) -> None:
    """Defect: one undecodable record made GET /api/instances a 400 for the whole hub."""
    response = http.get("/api/instances?showInput=true")
    assert 200 == response.status_code, response.text
    by_id = {item["instanceId"]: item for item in response.json()}
    assert {"good", "badkey", "deep", "huge"} == set(by_id)
    assert stored["good"] == by_id["good"]["input"]
    assert "payloadErrors" not in by_id["good"]
    assert by_id["badkey"]["input"].startswith("<undecodable payload: cannot decode")
    assert "unhashable" in by_id["badkey"]["payloadErrors"]["input"]
    assert "<unrenderable: nests deeper than 200 levels>" in json.dumps(by_id["deep"]["input"])
    assert "<unrenderable: an int of 20001 bits>" == by_id["huge"]["input"]
    assert {"input"} == set(by_id["huge"]["payloadErrors"])


def test_listing_without_inputs_still_flags_the_undecodable_one(
    http: Any, stored: dict[str, Any]
) -> None:
    """Inputs hidden (the default), the undecodable record is listed and flagged."""
    response = http.get("/api/instances")
    assert 200 == response.status_code, response.text
    by_id = {item["instanceId"]: item for item in response.json()}
    assert 4 == len(by_id)
    assert by_id["badkey"]["input"] is None
    assert "input" in by_id["badkey"]["payloadErrors"]


@pytest.mark.parametrize("instance_id", ["badkey", "deep", "huge"])
def test_status_of_a_bad_record_answers_with_markers(
    http: Any, stored: dict[str, Any], instance_id: str
) -> None:
    """Defect: the status page of a 600-deep or 2**20000 input answered 500."""
    for url in (f"/api/instances/{instance_id}", f"/api/instances/{instance_id}?showHistory=true"):
        response = http.get(url)
        assert response.status_code in (200, 202), response.text
        body = response.json()
        assert "input" in body["payloadErrors"]
    history = http.get(f"/api/instances/{instance_id}?showHistory=true").json()["historyEvents"]
    started = next(e for e in history if e["EventType"] == "ExecutionStarted")
    assert "input" in started["payloadErrors"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (json.dumps(nested(101)), "nests too deeply"),
        ('{"n": ' + "9" * 1500 + "}", "int of 4983 bits"),
    ],
    ids=["deep", "wide-int"],
)
def test_a_new_input_that_could_not_be_shown_is_a_400(
    http: Any, client: dr.Client, body: str, reason: str
) -> None:
    """Over HTTP too, the codec's limits refuse the input before anything is stored."""
    response = http.post(
        "/api/orchestrations/hold", content=body, headers={"content-type": "application/json"}
    )
    assert 400 == response.status_code
    assert reason in response.json()["error"]
    assert [] == client.query_instances().items


def test_rendering_never_raises() -> None:
    """Defense in depth: to_json marks what JSON text cannot carry instead of raising."""
    assert "<unrenderable: an int of 20001 bits>" == to_json(2**20000)
    deep = to_json({"a": nested(5000)})
    assert "<unrenderable: nests deeper than 200 levels>" in json.dumps(deep)
    assert (nested(5), None) == render(nested(5))
    assert {"[1,2]": 1, "null": 2} == to_json({(1, 2): 1, None: 2})
