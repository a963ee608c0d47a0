"""A Ray Data pipeline whose per-record enrichment is a durable orchestration with retries.

    python examples/ray_data_enrichment/pipeline.py [--records 300] [--out DIR] [--data-dir DIR]

A Ray Dataset of customer records goes through ``duraray.data.map_dataset``: every record
is one ``enrich_customer`` orchestration (instance id ``<job>-<customer_id>``) that calls

- ``lookup_region``, a flaky "remote API" (it fails transiently on about a third of its
  attempts), under a ``RetryPolicy``: each retry is a durable timer, so a record's retries
  survive a crash of anything in between; the activity asks for a custom Ray resource,
  ``geo_api``, of which the cluster has two units, so at most two calls hit the "API" at
  once (the same option takes ``num_gpus=1`` for a model);
- ``score_risk``, a plain CPU step.

The enriched dataset is written to ``<out>/enriched/`` as Parquet and summarised in
``<out>/summary.json``. Running it again with the same ``--job`` re-uses every record
that completed (nothing is recomputed) and rewrites the same output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import ray

import duraray as dr
import duraray.data as ddata

app = dr.App("enrichment", partitions=2)

REGIONS = ("north", "east", "south", "west")
#: The share of calls to the "remote API" that fail (a timeout, say).
FAILURE_RATE = 0.3
RETRY = dr.RetryPolicy(
    first_retry_interval=0.05,
    max_number_of_attempts=10,
    backoff_coefficient=1.5,
    max_retry_interval=0.5,
)


@app.activity(num_cpus=0, resources={"geo_api": 1})
def lookup_region(ctx: dr.ActivityContext, record: dict[str, Any]) -> dict[str, Any]:
    """The region of a postcode, from a "remote API" that times out now and then.

    Whether an attempt fails is a coin flip seeded by the instance and task id (each retry
    is a new task), so a run is reproducible and still exercises the retries.
    """
    coin = hashlib.sha256(f"{ctx.instance_id}/{ctx.task_id}".encode()).digest()[0] / 256
    if coin < FAILURE_RATE:
        raise ConnectionError(f"geo API timed out looking up {record['postcode']}")
    return {"region": REGIONS[int(record["postcode"][:2]) % len(REGIONS)]}


@app.activity
def score_risk(ctx: dr.ActivityContext, record: dict[str, Any]) -> float:
    """A toy risk score from spend and region."""
    base = {"north": 0.2, "east": 0.4, "south": 0.3, "west": 0.5}[record["region"]]
    return round(min(1.0, base + float(record["spend"]) / 10_000), 3)


@app.orchestration
def enrich_customer(
    ctx: dr.OrchestrationContext, record: dict[str, Any]
) -> Generator[dr.Task[Any], Any, dict[str, Any]]:
    """Look the region up (retrying the flaky API), then score the customer."""
    geo = yield ctx.call_activity(lookup_region, input=record, retry_policy=RETRY)
    risk = yield ctx.call_activity(score_risk, input={**record, **geo})
    return {"region": geo["region"], "risk": risk}


def customers(count: int) -> list[dict[str, Any]]:
    """Synthetic customer records (the same for the same count)."""
    return [
        {
            "customer_id": i,
            "name": f"customer-{i:05d}",
            "postcode": f"{(i * 37) % 100:02d}{(i * 11) % 1000:03d}",
            "spend": round((i * 7919) % 5000 + 0.5, 2),
        }
        for i in range(count)
    ]


def retried_attempts(client: dr.Client, instance_ids: list[str]) -> int:
    """Failed attempts that a retry made good, read from the instances' histories."""
    return sum(
        isinstance(event, dr.TaskFailed)
        for iid in instance_ids
        for event in client.get_orchestration_history(iid)
    )


def run_pipeline(
    client: dr.Client, records: int, out_dir: Path, *, job: str = "enrich-v1"
) -> dict[str, Any]:
    """Enrich ``records`` customers; write them and a summary under ``out_dir``."""
    reused = len(
        client.get_all_instances(
            instance_id_prefix=f"{job}-", runtime_status=["COMPLETED"], fetch_payloads=False
        )
    )
    dataset = ray.data.from_items(customers(records))
    enriched = ddata.map_dataset(
        dataset,
        hub=app.name,
        orchestrator="enrich_customer",
        id_prefix=job,
        id_column="customer_id",
        input_columns=["customer_id", "postcode", "spend"],
        output_column="enrichment",
        batch_size=100,
        on_error="null",
    ).materialize()
    rows = enriched.take_all()

    # The output is derived from durable results: rewrite it whole on every run.
    shutil.rmtree(out_dir / "enriched", ignore_errors=True)
    enriched.write_parquet(str(out_dir / "enriched"))

    done = [row for row in rows if row["enrichment"] is not None]
    by_region: dict[str, int] = {}
    for row in done:
        by_region[row["enrichment"]["region"]] = by_region.get(row["enrichment"]["region"], 0) + 1
    summary = {
        "records": len(rows),
        "enriched": len(done),
        "failed": [row["customer_id"] for row in rows if row["enrichment"] is None],
        "reused_from_earlier_run": reused,
        "retried_attempts": retried_attempts(
            client, [row["enrichment_instance_id"] for row in rows]
        ),
        "by_region": dict(sorted(by_region.items())),
        "mean_risk": round(sum(row["enrichment"]["risk"] for row in done) / max(1, len(done)), 4),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--out", default="enrichment-out", help="output directory")
    parser.add_argument("--data-dir", default=".duraray", help="the hub's data dir")
    parser.add_argument("--job", default="enrich-v1", help="prefix of the instance ids")
    args = parser.parse_args(argv)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Ray started here (not by app.run) so that the cluster has the custom resource that
    # lookup_region asks for: two "geo_api" slots, i.e. at most two concurrent lookups.
    ray.init(
        address="local",
        resources={"geo_api": 2},
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        with app.run(data_dir=args.data_dir) as client:
            summary = run_pipeline(client, args.records, out_dir, job=args.job)
    finally:
        ray.shutdown()
    print(json.dumps(summary, indent=2))
    print(f"wrote {out_dir / 'enriched'} and {out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
