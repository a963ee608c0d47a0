"""Tracing on Ray: ``otel_setup`` runs in the partition and worker processes, and their
spans form one trace per instance (exported to files by tests/ray/otel_file_spans.py)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

pytest.importorskip("opentelemetry.sdk.trace")

import duraray as dr
from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name

#: Where tests/ray/otel_file_spans.py writes (imported by name in the hub's processes only).
SPANS_DIR = Path(tempfile.gettempdir()) / f"duraray-otel-test-{os.getuid()}"

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

app = dr.App("rt-tracing", partitions=2)


@app.activity(inline=False)
def shout(ctx: dr.ActivityContext, word: str) -> str:
    """The word in capitals."""
    return word.upper()


@app.orchestration
def child(ctx: dr.OrchestrationContext, word: str):
    """Shouts the word."""
    return (yield ctx.call_activity(shout, input=word))


@app.orchestration
def parent(ctx: dr.OrchestrationContext, word: str):
    """Shouts the word, then has a sub-orchestration shout it again."""
    first = yield ctx.call_activity(shout, input=word)
    return [first, (yield ctx.call_sub_orchestrator(child, input=word))]


def _spans(instance_ids: set[str]) -> list[dict[str, Any]]:
    spans = []
    for path in SPANS_DIR.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["attributes"].get("duraray.instance_id") in instance_ids:
                spans.append(record)
    return spans


def poll_spans(instance_ids: set[str], *, count: int) -> list[dict[str, Any]]:
    """The spans of the instances, once ``count`` were written (an activity's span is
    written by its worker, which may finish just after the partition learns its result)."""
    deadline = time.monotonic() + 30
    while True:
        spans = _spans(instance_ids)
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


@pytest.fixture
def client(ray_session, data_dir: str, hubs_to_stop: list[str]) -> Iterator[dr.Client]:
    """The hub on the session's Ray, every process of it set up by otel_file_spans."""
    hubs_to_stop.append(app.name)
    client = app.start(
        address=None, data_dir=data_dir, otel_setup="tests.ray.otel_file_spans:setup"
    )
    yield client


def test_otel_setup_traces_partitions_and_workers(client: dr.Client) -> None:
    """The partitions and the workers call ``otel_setup``; the instance and its child
    are one trace, each span emitted once, by the process that did the work."""
    iid = f"traced-{uuid.uuid4().hex}"
    client.schedule_new_orchestration(parent, input="hi", instance_id=iid)
    state = client.wait_for_orchestration_completion(iid, timeout=60)
    assert ["HI", "HI"] == state.output
    child_id = next(
        e.instance_id
        for e in client.get_orchestration_history(iid)
        if isinstance(e, dr.SubOrchestrationInstanceCreated)
    )
    partition_pids = {
        ray.get(
            ray.get_actor(partition_actor_name(app.name, i), namespace=NAMESPACE).describe.remote()
        )["pid"]
        for i in range(2)
    }
    try:
        assert all((SPANS_DIR / f"{pid}.setup").exists() for pid in partition_pids)
        spans = poll_spans({iid, child_id}, count=4)
        names = sorted(s["name"] for s in spans)
        assert [
            "activity:shout",
            "activity:shout",
            "orchestration:child",
            "orchestration:parent",
        ] == names
        assert 1 == len({s["trace_id"] for s in spans})
        assert len(spans) == len({s["span_id"] for s in spans})
        by_name = {s["name"]: s for s in spans}
        assert by_name["orchestration:parent"]["pid"] in partition_pids
        assert by_name["orchestration:parent"]["parent_id"] is None
        assert (
            by_name["orchestration:parent"]["span_id"]
            == by_name["orchestration:child"]["parent_id"]
        )
        workers = {s["pid"] for s in spans if s["name"] == "activity:shout"}
        assert not workers & partition_pids  # inline=False: run by workers, not the partitions
    finally:  # the files of this hub's processes (its spans were all read)
        pids = partition_pids | {s["pid"] for s in _spans({iid, child_id})}
        for pid in pids:
            for suffix in (".jsonl", ".setup"):
                (SPANS_DIR / f"{pid}{suffix}").unlink(missing_ok=True)
