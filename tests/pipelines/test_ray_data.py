"""duraray.data on the session's Ray: a durable orchestration per row of a Ray Dataset.

The hub runs on the shared Ray instance (``ray_session``) for the whole module; activities
run in Ray worker processes (the hub ships this module's code to them by value), so they
count their executions in a log file.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import pytest
import ray

import duraray as dr
import duraray.data as ddata

ROWS = 1000

app = dr.App("pipelines-data", partitions=2)


@app.activity
def enrich(ctx: dr.ActivityContext, row: dict[str, Any]) -> dict[str, Any]:
    """Log the execution (by instance id), then derive a few fields from the row."""
    fd = os.open(row["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.instance_id}\n".encode())
    finally:
        os.close(fd)
    return {"id": row["id"], "words": len(row["text"].split()), "shout": row["text"].upper()}


@app.activity(num_cpus=0.5)
def resources_seen(ctx: dr.ActivityContext) -> dict[str, float]:
    """The Ray resources this activity was given."""
    return dict(ray.get_runtime_context().get_assigned_resources())


@app.orchestration
def enrich_row(ctx: dr.OrchestrationContext, row: dict[str, Any]):
    """Enrich one row; rows whose id ends in 07 fail on purpose."""
    if row["id"] % 100 == 7 and row.get("picky"):
        raise ValueError(f"row {row['id']} is not welcome")
    return (yield ctx.call_activity(enrich, input=row))


@app.orchestration
def ask_resources(ctx: dr.OrchestrationContext, _: Any):
    """What an activity with num_cpus=0.5 was given."""
    return (yield ctx.call_activity(resources_seen))


@pytest.fixture(scope="module")
def client(ray_session, tmp_path_factory):
    """The module's hub on the session's Ray, on an LMDB data dir."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    with app.run(data_dir=str(tmp_path_factory.mktemp("data"))) as c:
        yield c


def _dataset(log: Path, *, picky: bool = False) -> Any:
    rows = [
        {"id": i, "text": f"row number {i}" + " more" * (i % 3), "log": str(log), "picky": picky}
        for i in range(ROWS)
    ]
    return ray.data.from_items(rows)


def _expected(i: int) -> dict[str, Any]:
    text = f"row number {i}" + " more" * (i % 3)
    return {"id": i, "words": 3 + i % 3, "shout": text.upper()}


def _executions(log: Path) -> collections.Counter[str]:
    return (
        collections.Counter(log.read_text().splitlines()) if log.exists() else collections.Counter()
    )


def _run(log: Path, prefix: str, **options: Any) -> list[dict[str, Any]]:
    out = ddata.map_dataset(
        _dataset(log, picky=options.pop("picky", False)),
        hub=app.name,
        orchestrator="enrich_row",
        id_prefix=prefix,
        id_column="id",
        batch_size=100,
        **options,
    )
    return sorted(out.take_all(), key=lambda row: row["id"])


@pytest.mark.ray
def test_every_row_of_a_thousand_gets_its_orchestration_output(client, tmp_path):
    """map_dataset over 1,000 rows gives every row its orchestration's output and instance id."""
    log = tmp_path / "executions.log"
    rows = _run(log, "thousand")
    assert list(range(ROWS)) == [row["id"] for row in rows]
    assert [_expected(i) for i in range(ROWS)] == [dict(row["output"]) for row in rows]
    assert [f"thousand-{i}" for i in range(ROWS)] == [row["output_instance_id"] for row in rows]
    assert {f"thousand-{i}": 1 for i in range(ROWS)} == dict(_executions(log))
    state = client.get_orchestration_state("thousand-999")
    assert _expected(999) == state.output


@pytest.mark.ray
def test_a_rerun_with_the_same_prefix_reuses_the_instances(client, tmp_path):
    """Running the pipeline again with the same id prefix re-uses every instance: no activity runs twice."""
    log = tmp_path / "executions.log"
    first = _run(log, "rerun")
    assert ROWS == sum(_executions(log).values())
    second = _run(log, "rerun")
    assert [dict(row["output"]) for row in first] == [dict(row["output"]) for row in second]
    assert {f"rerun-{i}": 1 for i in range(ROWS)} == dict(_executions(log))


@pytest.mark.ray
def test_failed_rows_get_null_and_the_reason(client, tmp_path):
    """With on_error="null" a failed row's output is None and its error column says why."""
    rows = _run(tmp_path / "executions.log", "picky", picky=True, on_error="null")
    failed = [row for row in rows if row["output"] is None]
    assert [i for i in range(ROWS) if i % 100 == 7] == [row["id"] for row in failed]
    assert f"row {failed[0]['id']} is not welcome" in failed[0]["output_error"]
    assert all(row["output_error"] is None for row in rows if row["output"] is not None)


@pytest.mark.ray
def test_failed_rows_fail_the_pipeline_by_default(client, tmp_path):
    """With the default on_error="raise" a failed row fails the dataset, naming the instance."""
    with pytest.raises(
        ray.exceptions.RayTaskError, match=r"instance 'picky-raise-(\d*0)?7'\) ended FAILED"
    ):
        _run(tmp_path / "executions.log", "picky-raise", picky=True)


@pytest.mark.ray
def test_activities_get_the_resources_they_ask_for(client):
    """An activity registered with num_cpus=0.5 runs with exactly that share of a CPU."""
    iid = client.schedule_new_orchestration(ask_resources)
    state = client.wait_for_orchestration_completion(iid, timeout=60)
    assert {"CPU": 0.5} == state.output


def test_row_ids_are_deterministic():
    """A row's id comes from its id column, or else from a digest of its content."""
    row = {"id": 3, "text": "abc"}
    assert "p-3" == ddata.row_instance_id("p", row, "id")
    digest = ddata.row_instance_id("p", row, None)
    assert digest == ddata.row_instance_id("p", dict(row), None)
    assert digest != ddata.row_instance_id("p", {"id": 3, "text": "abd"}, None)
    assert digest.startswith("p-")
