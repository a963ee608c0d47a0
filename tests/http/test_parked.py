"""Poison isolation as an operator sees it: parked items over the client and HTTP, the
500 a request that fails inside its partition answers, and the figures of /metrics.

A poison item is made for real: ``EntityHost.signal`` (the engine's handler of a client
``signal_entity``) raises for one entity, so applying that request fails on its own,
twice; the partition answers it with ``PartitionFailureError``, parks it and goes on.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import generate_latest

import duraray as dr
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.http.metrics import hub_registry

# Two partitions: listings gather from both.
app = dr.App("http-parked", partitions=2)

BAD = "@counter@bad"
BAD2 = "@counter@bad2"


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signals to ``@counter@bad`` (and ``bad2``) raise inside the partition, every time."""
    original = EntityHost.signal

    def signal(self: EntityHost, b: Any, *, entity_id: str, **kwargs: Any) -> None:
        if entity_id in (BAD, BAD2):
            raise RuntimeError(f"cannot apply a signal to {entity_id}")
        original(self, b, entity_id=entity_id, **kwargs)

    monkeypatch.setattr(EntityHost, "signal", signal)


def _park_one(client: dr.Client) -> None:
    with pytest.raises(dr.PartitionFailureError, match="RuntimeError: cannot apply"):
        client.signal_entity(BAD, "add", 1)


# -- the client ------------------------------------------------------------------------------


def test_get_parked_items_lists_the_poison_request(client: dr.Client, poisoned: None) -> None:
    """A request that fails alone is answered with PartitionFailureError and parked; the
    client lists it with the partition that holds it, and the partition goes on."""
    assert [] == client.get_parked_items()
    _park_one(client)
    client.signal_entity("@counter@good", "add", 2)
    items = client.get_parked_items()
    assert 1 == len(items)
    item = items[0]
    assert isinstance(item, dr.ParkedItem)
    expected = ("request", f"signal_entity {BAD}", partition_for(BAD, 2), None)
    assert expected == (item.kind, item.target, item.partition, item.payload)
    assert item.error.startswith("RuntimeError: cannot apply a signal")
    assert "Traceback" in item.detail
    assert isinstance(item.parked_at, datetime)
    good = client.get_entity("@counter@good")
    assert good is not None and 2 == good.state


def test_get_parked_items_validates_and_cuts_at_limit(client: dr.Client, poisoned: None) -> None:
    """``limit`` is a page size (1 to 10,000); at most that many items come back, by
    partition then key."""
    _park_one(client)
    client.signal_entity("@counter@good", "add", 1)
    with pytest.raises(dr.PartitionFailureError):
        client.signal_entity(BAD2, "add", 1)
    items = client.get_parked_items()
    expected = sorted((partition_for(e, 2), f"signal_entity {e}") for e in (BAD, BAD2))
    assert expected == [(item.partition, item.target) for item in items]
    assert items[:1] == client.get_parked_items(limit=1)
    for bad in (0, 10_001):
        with pytest.raises(ValueError, match="limit"):
            client.get_parked_items(limit=bad)
    with pytest.raises(TypeError, match="limit"):
        client.get_parked_items(limit="5")  # type: ignore[arg-type]


def test_async_client_mirrors_get_parked_items(client: dr.Client, poisoned: None) -> None:
    """AsyncClient.get_parked_items is the sync call as a coroutine."""
    _park_one(client)
    items = asyncio.run(dr.AsyncClient(client).get_parked_items(limit=10))
    assert ["request"] == [item.kind for item in items]


# -- HTTP ------------------------------------------------------------------------------------


def test_a_request_failing_inside_its_partition_answers_500_and_the_server_goes_on(
    http: Any, poisoned: None
) -> None:
    """The 500 carries the API's JSON error body with the engine's reason; the next
    requests, to the same partition or another, are served."""
    response = http.post("/api/entities/counter/bad?op=add")
    assert 500 == response.status_code
    error = response.json()["error"]
    assert error.startswith("partition failure: operation 'signal_entity' failed inside")
    assert "GET /api/parked" in error
    assert "RuntimeError: cannot apply a signal to @counter@bad" in error
    assert "nothing of it was stored" in error
    assert 202 == http.post("/api/entities/counter/good?op=add").status_code
    assert 200 == http.get("/healthz").status_code
    assert 200 == http.get("/api/partitions").status_code


def test_get_api_parked_lists_items_in_camel_case(http: Any, poisoned: None) -> None:
    """GET /api/parked: {partition, kind, target, parkedAt, error, detail}, no payload
    unless showPayload=true (then base64, or null)."""
    assert [] == http.get("/api/parked").json()
    assert 500 == http.post("/api/entities/counter/bad?op=add").status_code
    response = http.get("/api/parked")
    assert 200 == response.status_code
    [item] = response.json()
    assert {"partition", "kind", "target", "parkedAt", "error", "detail"} == set(item)
    expected = (partition_for(BAD, 2), "request", f"signal_entity {BAD}")
    assert expected == (item["partition"], item["kind"], item["target"])
    assert item["parkedAt"].endswith("Z")
    assert datetime.fromisoformat(item["parkedAt"]).tzinfo is not None
    assert item["error"].startswith("RuntimeError: ")
    [shown] = http.get("/api/parked?showPayload=true&top=5").json()
    assert shown["payload"] is None


@pytest.mark.parametrize("query", ["top=0", "top=1001", "top=x", "showPayload=maybe"])
def test_get_api_parked_refuses_a_bad_query(http: Any, query: str) -> None:
    """A bad ``top`` or ``showPayload`` answers 400 with the JSON error body."""
    response = http.get(f"/api/parked?{query}")
    assert (400, True) == (response.status_code, bool(response.json()["error"]))


def test_partitions_and_metrics_count_the_parked_item(http: Any, poisoned: None) -> None:
    """/api/partitions passes the engine's poison counters through; /metrics has them as
    duraray_poison_items_total and duraray_rebuilds_total, and describes
    duraray_parked_items."""
    assert 500 == http.post("/api/entities/counter/bad?op=add").status_code
    owner = partition_for(BAD, 2)
    stats = {part["partition"]: part for part in http.get("/api/partitions").json()}
    assert 1 == stats[owner]["counters"]["poison_items"]
    assert stats[owner]["counters"]["rebuilds"] >= 1
    text = http.get("/metrics").text
    labels = f'hub="http-parked",partition="{owner}"'
    assert f"duraray_poison_items_total{{{labels}}} 1.0" in text
    assert f"duraray_rebuilds_total{{{labels}}}" in text
    assert "# HELP duraray_parked_items " in text


def test_partition_stats_count_the_parked_row(client: dr.Client, http: Any, poisoned: None) -> None:
    """The engine's ``parked`` stat counts the row; /api/partitions and the
    duraray_parked_items gauge pass it through."""
    _park_one(client)
    owner = partition_for(BAD, 2)
    assert 1 == client.partition_stats()[owner]["parked"]
    stats = {part["partition"]: part for part in http.get("/api/partitions").json()}
    assert 1 == stats[owner]["parked"]
    labels = f'hub="http-parked",partition="{owner}"'
    assert f"duraray_parked_items{{{labels}}} 1.0" in http.get("/metrics").text


def test_parked_gauge_and_poison_help_texts() -> None:
    """The collector turns ``parked`` into a gauge and describes the poison counters."""

    def stats() -> list[dict[str, Any]]:
        counters = {"poison_items": 2, "rebuilds": 3}
        return [{"partition": 0, "counters": counters, "parked": 4}]

    text = generate_latest(hub_registry("h", stats)).decode()
    labels = 'hub="h",partition="0"'
    assert f"duraray_parked_items{{{labels}}} 4.0" in text
    assert f"duraray_poison_items_total{{{labels}}} 2.0" in text
    assert f"duraray_rebuilds_total{{{labels}}} 3.0" in text
    assert "# HELP duraray_poison_items_total Items that failed on their own" in text
    assert "# HELP duraray_rebuilds_total Times the partition's core was rebuilt" in text


def test_parked_json_encodes_a_payload_as_base64() -> None:
    """A parked message's payload is base64 with showPayload; times are ISO with Z."""
    from duraray.runtime.http.payloads import parked_json

    item = dr.ParkedItem(
        "message", "i1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "E: x", "tb", 1, b"\x00\xff"
    )
    out: dict[str, Any] = parked_json(item, show_payload=True)
    expected = ("2026-01-02T03:04:05Z", base64.b64encode(b"\x00\xff").decode())
    assert expected == (out["parkedAt"], out["payload"])
    assert "payload" not in parked_json(item)


def test_partition_failure_from_any_route_is_500(make_http: Callable[[Any], Any]) -> None:
    """PartitionFailureError escaping any route (here a status read) is the same 500."""
    from duraray.runtime.http import create_app

    class Failing:
        hub = "failing"

        def get_orchestration_state(self, *args: Any, **kwargs: Any) -> Any:
            raise dr.PartitionFailureError("operation 'get_state' failed inside the partition")

        def partition_stats(self) -> list[dict[str, Any]]:
            return []

    http = make_http(create_app(dr.AsyncClient(Failing())))  # type: ignore[arg-type]
    response = http.get("/api/instances/i1")
    assert 500 == response.status_code
    assert "operation 'get_state' failed inside the partition" in response.json()["error"]
