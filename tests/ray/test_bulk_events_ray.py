"""Bulk external events over Ray: per-event outcomes cross the actor boundary, and events
to one instance keep their order although a partition's events fill several requests
(which an async partition actor may run in either order)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import ray

import duraray as dr
from duraray.runtime.client import transport

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

TIMEOUT = 60.0

app = dr.App("rt-bulk-events", partitions=2)


@app.orchestration
def wait_two(ctx: dr.OrchestrationContext):
    """The data of the next two "item" events, in the order received."""
    first = yield ctx.wait_for_external_event("item")
    second = yield ctx.wait_for_external_event("item")
    return [first, second]


@pytest.fixture(scope="module")
def client(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dr.Client]:
    """The module's hub on the session's Ray."""
    with app.run(data_dir=str(tmp_path_factory.mktemp("rt-bulk-events"))) as c:
        yield c


def test_bulk_events_over_ray_keep_their_order_and_report_each_event(client, monkeypatch):
    """200 instances get two events each, the second ones listed in reverse after all the
    first ones, in requests of at most 16 events: each instance receives its two in order;
    an event to an unknown id is InstanceNotFoundError in its own slot."""
    monkeypatch.setattr(transport, "BATCH_CHUNK", 16)
    ids = [f"rb-{i}" for i in range(200)]
    client.schedule_new_orchestrations(wait_two, [None] * len(ids), instance_ids=ids)

    events = [(iid, "item", f"{iid}:1") for iid in ids]
    events.append(("rb-nobody", "item", 0))
    events += [(iid, "item", f"{iid}:2") for iid in reversed(ids)]
    results = client.raise_orchestration_events(events)

    missing = results.pop(len(ids))
    assert isinstance(missing, dr.InstanceNotFoundError)
    assert [None] * (2 * len(ids)) == results
    states = client.wait_for_orchestrations(ids, timeout=TIMEOUT)
    expected = [[f"{iid}:1", f"{iid}:2"] for iid in ids]
    assert expected == [s.output for s in states]
