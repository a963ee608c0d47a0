"""Prometheus metrics of a hub, read from ``Client.partition_stats()`` at scrape time.

Nothing is counted here: a custom collector asks every partition for its counters and load
when ``/metrics`` is scraped and turns them into series labelled ``hub`` and ``partition``.
The engine's counters are cumulative since the partition started (they restart at zero
when a partition actor restarts; Prometheus' ``rate()`` handles such resets).

Series (all prefixed ``duraray_``):

- ``orchestrations_live{status}``: instances loaded in the partition by runtime status
  (PENDING, RUNNING, SUSPENDED always present; finished instances are not held live);
- ``batches_total``, ``batch_items_total``: batches committed and work items in them
  (mean batch size = ``rate(batch_items_total) / rate(batches_total)``);
- ``commit_seconds_total``: time spent committing batches (mean commit latency =
  ``rate(commit_seconds_total) / rate(batches_total)``);
- ``episodes_total``, ``replays_total``, ``activities_dispatched_total``,
  ``messages_sent_total``, ``entity_operations_total``;
- ``queue_depth`` (work waiting for the next batch), ``timers``, ``activities_in_flight``,
  ``activities_waiting`` (beyond ``max_activities_in_flight``), ``results_held`` (a
  flood of activity results beyond its fair share of a batch), ``outbox_messages``
  (partition messages not yet acknowledged), ``cached_executors``;
- ``parked_items`` (work set aside as poison, kept in the store: a gauge that only grows,
  so alert on ``> 0`` or on ``increase()``), ``poison_items_total`` (items found poison)
  and ``rebuilds_total`` (the partition's core rebuilt after a failed batch);
- ``blocking_episodes_total``: orchestrator episodes that ran longer than
  ``blocking_episode_warning_s`` (code blocking its partition's thread; counted while
  they run, so a scrape sees one as soon as the partition answers again);
- ``stats_up{hub}``: 1 when every partition answered, else 0 (and no other series).

Counters the engine adds later appear as ``duraray_<name>_total`` without a change here.
Activity latency is not measured by the engine yet, so there is no series for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

log = structlog.get_logger("duraray.http.metrics")

_LABELS = ["hub", "partition"]

#: Engine counter name -> (metric name without ``_total``, help text).
COUNTERS: dict[str, tuple[str, str]] = {
    "batches": ("duraray_batches", "Batches committed by the partition."),
    "items": ("duraray_batch_items", "Work items processed in committed batches."),
    "episodes": ("duraray_episodes", "Orchestration episodes executed."),
    "commit_seconds": ("duraray_commit_seconds", "Seconds spent committing batches."),
    "replays": ("duraray_replays", "Orchestrations rebuilt by replaying their history."),
    "activities_dispatched": ("duraray_activities_dispatched", "Activity tasks handed to workers."),
    "messages_sent": ("duraray_messages_sent", "Messages sent to other partitions."),
    "entity_operations": ("duraray_entity_operations", "Entity operations executed."),
    "activities_completed": (
        "duraray_activities_completed",
        "Activity results recorded (mean latency = activity_seconds / activities_completed).",
    ),
    "activity_seconds": ("duraray_activity_seconds", "Seconds activities ran, summed."),
    "request_replies_pruned": (
        "duraray_request_replies_pruned",
        "Stored client-request replies deleted after request_dedup_seconds.",
    ),
    "storage_full": (
        "duraray_storage_full",
        "Batches not committed for lack of space (full disk or max_map_size): their writes "
        "were refused with StorageFullError (HTTP 507).",
    ),
    "poison_items": (
        "duraray_poison_items",
        "Items that failed on their own, twice, inside the partition (poison): a client "
        "request answered with PartitionFailureError (HTTP 500), an instance failed, or a "
        "message parked (see duraray_parked_items).",
    ),
    "blocking_episodes": (
        "duraray_blocking_episodes",
        "Orchestrator episodes that ran longer than blocking_episode_warning_s, blocking "
        "the partition's other instances meanwhile (each reported once, with its stack, in "
        "the log and on the instance's dashboard page).",
    ),
    "rebuilds": (
        "duraray_rebuilds",
        "Times the partition's core was rebuilt from its store, in process, after applying "
        "a batch raised; the batch's work is then applied one item at a time.",
    ),
    "link_frames_sent": (
        "duraray_link_frames_sent",
        "Frames (messages and acks for one peer) sent on direct partition links.",
    ),
    "link_frames_received": (
        "duraray_link_frames_received",
        "Frames received on direct partition links.",
    ),
    "link_declined": (
        "duraray_link_declined",
        "Frames sent as Ray actor calls because the peer's link was down or backed up.",
    ),
    "link_rejected": (
        "duraray_link_rejected",
        "Incoming link connections refused at the handshake.",
    ),
}

#: Load figure in partition_stats -> (gauge name, help text).
GAUGES: dict[str, tuple[str, str]] = {
    "queue_depth": ("duraray_queue_depth", "Work items waiting for the partition's next batch."),
    "timers": ("duraray_timers", "Durable timers scheduled in the partition."),
    "activities_in_flight": (
        "duraray_activities_in_flight",
        "Activities dispatched and not yet answered.",
    ),
    "activities_waiting": (
        "duraray_activities_waiting",
        "Activities beyond max_activities_in_flight, waiting in the partition for a slot.",
    ),
    "results_held": (
        "duraray_results_held",
        "Activity results held for later batches: one instance's flood beyond its fair share.",
    ),
    "outbox": ("duraray_outbox_messages", "Partition messages sent and not yet acknowledged."),
    "shared_workers": (
        "duraray_shared_workers",
        "Shared pool workers that answered the partition (Ray; 0 until its first cheap batch).",
    ),
    "cached_executors": (
        "duraray_cached_executors",
        "Live orchestration generators cached in memory.",
    ),
    "parked": (
        "duraray_parked_items",
        "Items the partition set aside because applying them failed (poison), kept in its "
        "store; list them with GET /api/parked or `duraray parked`.",
    ),
}

_ALWAYS_REPORTED_STATUSES = ("PENDING", "RUNNING", "SUSPENDED")


class PartitionStatsCollector:
    """Collects a hub's partition counters and load on every scrape."""

    def __init__(self, hub: str, stats: Callable[[], list[dict[str, Any]]]) -> None:
        self.hub = hub
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        """Ask every partition for its stats and yield one family per figure."""
        up = GaugeMetricFamily(
            "duraray_stats_up", "1 when every partition answered the last scrape.", labels=["hub"]
        )
        try:
            stats = self._stats()
        except Exception as exc:  # a scrape must answer even when a partition does not
            log.warning("partition stats unavailable", hub=self.hub, error=repr(exc))
            up.add_metric([self.hub], 0)
            yield up
            return
        up.add_metric([self.hub], 1)
        yield up
        yield from self._families(stats)

    def _families(self, stats: list[dict[str, Any]]) -> Iterator[Metric]:
        live = GaugeMetricFamily(
            "duraray_orchestrations_live",
            "Orchestration instances loaded in the partition, by runtime status.",
            labels=[*_LABELS, "status"],
        )
        counters: dict[str, CounterMetricFamily] = {}
        gauges = {
            key: GaugeMetricFamily(name, doc, labels=_LABELS) for key, (name, doc) in GAUGES.items()
        }
        for index, part in enumerate(stats):
            labels = [self.hub, str(part.get("partition", index))]
            by_status = {s: 0 for s in _ALWAYS_REPORTED_STATUSES}
            by_status.update(part.get("live_instances") or {})
            for status, count in sorted(by_status.items()):
                live.add_metric([*labels, str(status)], count)
            for key, value in (part.get("counters") or {}).items():
                if not _is_number(value):
                    continue
                family = counters.get(key)
                if family is None:
                    name, doc = COUNTERS.get(key, (_metric_name(key), f"Engine counter {key}."))
                    family = counters[key] = CounterMetricFamily(name, doc, labels=_LABELS)
                family.add_metric(labels, value)
            for key, gauge in gauges.items():
                load = part.get(key)
                if isinstance(load, int | float) and not isinstance(load, bool):
                    gauge.add_metric(labels, load)
        yield live
        yield from counters.values()
        yield from gauges.values()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metric_name(key: str) -> str:
    return "duraray_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def hub_registry(hub: str, stats: Callable[[], list[dict[str, Any]]]) -> CollectorRegistry:
    """A registry of its own for one hub (the process-wide default is left alone)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PartitionStatsCollector(hub, stats))
    return registry
