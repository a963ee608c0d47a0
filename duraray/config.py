"""Hub configuration: one frozen, validated object with documented defaults.

Every knob of a hub lives here; per-call options stay on the calls themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import timedelta
from typing import Any

DEFAULT_DATA_DIR = "./.duraray"


@dataclass(frozen=True, slots=True)
class HubConfig:
    """How a task hub runs.

    - ``partitions``: number of partitions; fixed when the hub's data dir is created.
    - ``data_dir``: where each partition keeps its LMDB environment (``<data_dir>/<hub>/p<i>``).
    - ``fsync``: fsync every batch commit (durable). Off trades crash safety for speed.
    - ``max_batch_items``: most work items a partition takes into one batch.
    - ``max_cached_orchestrations``: live generators kept per partition; older ones are
      evicted and rebuilt by replay when their next event arrives.
    - ``maximum_timer_interval``: split longer durable timers into chunks (None: no cap).
    - ``max_payload_bytes``: largest encoded input, output, event or state accepted.
    - ``resend_interval``: seconds before an unacknowledged partition message is resent.
    - ``activity_threads``: threads executing activities in the in-process runtime.
    - ``activity_workers``: activity worker actors on Ray (None: one per cluster CPU, >= 2).
    - ``worker_concurrency``: activity batches one worker actor runs at once (threads).
    - ``log_format``: "console" or "json".
    """

    partitions: int = 4
    data_dir: str = DEFAULT_DATA_DIR
    fsync: bool = True
    max_batch_items: int = 5000
    max_cached_orchestrations: int = 20000
    maximum_timer_interval: timedelta | None = None
    max_payload_bytes: int = 16 * 1024 * 1024
    resend_interval: float = 5.0
    activity_threads: int = 8
    activity_workers: int | None = None
    worker_concurrency: int = 4
    log_format: str = "console"

    def __post_init__(self) -> None:
        if not isinstance(self.partitions, int) or not 1 <= self.partitions <= 1024:
            raise ValueError("partitions must be an integer between 1 and 1024")
        if self.max_batch_items < 1:
            raise ValueError("max_batch_items must be >= 1")
        if self.max_cached_orchestrations < 0:
            raise ValueError("max_cached_orchestrations must be >= 0")
        if self.maximum_timer_interval is not None and self.maximum_timer_interval <= timedelta(0):
            raise ValueError("maximum_timer_interval must be positive")
        if self.max_payload_bytes < 1024:
            raise ValueError("max_payload_bytes must be at least 1024")
        if self.resend_interval <= 0:
            raise ValueError("resend_interval must be positive")
        if self.activity_threads < 1:
            raise ValueError("activity_threads must be >= 1")
        if self.activity_workers is not None and self.activity_workers < 1:
            raise ValueError("activity_workers must be >= 1")
        if self.worker_concurrency < 1:
            raise ValueError("worker_concurrency must be >= 1")
        if self.log_format not in ("console", "json"):
            raise ValueError("log_format must be 'console' or 'json'")

    def with_options(self, **options: Any) -> HubConfig:
        """A copy with ``options`` applied; unknown option names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown hub option(s): {', '.join(unknown)}")
        return replace(self, **options)
