"""Hub configuration: one frozen, validated object with documented defaults.

Every knob of a hub lives here; per-call options stay on the calls themselves.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = "./.duraray"
#: Environment variable naming a TOML file to load the hub configuration from.
CONFIG_ENV = "DURARAY_CONFIG"
#: Prefix of environment variables that set single options (``DURARAY_PARTITIONS=8``).
ENV_PREFIX = "DURARAY_"
#: The smallest ``max_map_size`` accepted (1 MiB): LMDB needs a few pages to open a store.
MIN_MAP_SIZE = 1 << 20
#: What ``otel_setup`` names: a module (dotted), a colon, a function (dotted attributes).
_SETUP_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True, slots=True)
class HubConfig:
    """How a task hub runs.

    - ``partitions``: number of partitions; fixed when the hub's data dir is created.
    - ``data_dir``: where each partition keeps its LMDB environment (``<data_dir>/<hub>/p<i>``).
    - ``fsync``: fsync every batch commit (durable). Off trades crash safety for speed.
    - ``max_map_size``: the most bytes one partition's LMDB store may grow to (its map
      starts at 64 MiB and doubles as needed; default 1 TiB). A commit that would need
      more, or that the disk has no room for, fails with ``StorageFullError`` (HTTP 507)
      and writes nothing; the partition keeps serving reads and resumes writing once a
      commit fits again (purge data, free disk space or raise this option).
    - ``max_batch_items``: most work items a partition takes into one batch (each activity
      result counts as one).
    - ``max_cached_orchestrations``: live generators kept per partition; older ones are
      evicted and rebuilt by replay when their next event arrives.
    - ``max_cached_entities``: entity records kept in memory per partition (the rest are
      read from the store when used).
    - ``maximum_timer_interval``: split longer durable timers into chunks (None: no cap).
    - ``max_payload_bytes``: largest encoded input, output, event or state accepted.
    - ``resend_interval``: seconds before an unacknowledged partition message is resent.
    - ``request_dedup_seconds``: how long a partition keeps the reply of a state-changing
      client request, so a retry of that request (same request id) gets the reply instead
      of applying it twice. Older replies are deleted; a retry after that applies anew.
    - ``max_activities_in_flight``: most activities one partition has out at once (on Ray
      or in the in-process pool); the rest wait in the partition, durably, and go out as
      results come back, round-robin over the instances waiting. The default sits above
      what a cluster runs at once: it bounds what a huge fan-out hands Ray; what waits is
      still told to an autoscaler (the CPU-bound part of it).
    - ``activity_threads``: threads executing activities in the in-process runtime.
    - ``activity_workers``: actors of the shared activity worker pool on Ray, started when
      a partition first needs them (None: one per cluster CPU then, >= 2).
    - ``inline_activities``: let partitions run activities that proved cheap (see
      ``inline_activity_max_ms``) in their own process instead of a worker, saving a Ray
      round trip per step; ``@app.activity(inline=True/False)`` decides per activity.
    - ``inline_activity_max_ms``: average run time below which an activity is cheap.
    - ``placement``: where partitions run on a Ray cluster. "local" (default): all on the
      node that launches the hub, which holds the whole data dir. "spread": at the hub's
      first launch, round-robin over the launching node and the other nodes with CPUs,
      each partition keeping its data under ``data_dir`` on its own node's disk; the
      assignment is recorded in ``<data_dir>/<hub>/placement.json`` on the launching
      node, and later launches from that node put every partition back where its data
      is. A hub keeps the placement it was created with.
    - ``peer_links``: partitions send each other messages over direct TCP connections
      (authenticated per hub) instead of Ray actor calls, which cost far more CPU per hop.
      A link that cannot connect falls back to Ray calls on its own; False always uses
      Ray calls (e.g. where nodes may not open ports to each other). The links are plain
      TCP: with Ray's TLS on (``RAY_USE_TLS=1``) they stay off.
    - ``worker_concurrency``: activity batches one worker actor runs at once (threads).
    - ``activity_pool_idle_s``: seconds a warm worker of a resource-shaped pool (activities
      with ``num_gpus``, ``resources``, ...) may stay idle before it stops and its
      resources go back to the cluster.
    - ``determinism_warnings``: report calls that return another value each run (clocks,
      random sources, id generators) made by orchestration code on its first run, as a
      ``NonDeterminismWarning`` with the file and line of the call, once per call site and
      process (see ``duraray/orchestrations/determinism.py``). True: everywhere, including
      ``datetime.now()``/``utcnow()``/``today()``, ``date.today()`` and functions a module
      imported by name (``from uuid import uuid4``), which need a profile hook on the
      partition's thread while the orchestrator runs: measured at about 20% fewer hello5
      orchestrations a second in process (15-27% over runs), since the hook runs on every
      call the episode makes. None (default): all of it in the in-process runtime, where
      tests want it; off on Ray, where even the wrappers of the module functions (which
      every caller in the process goes through) measured about 7% of hello5's
      throughput. False: off.
    - ``version``: the version of the orchestration code this hub runs (None: unversioned).
    - ``version_match``: which instance versions this hub runs: "none" (all), "strict"
      (only its own version), "current_or_older" (its own and older ones).
    - ``version_failure``: what happens to an instance the hub must not run: "fail" (it
      fails with a non-retriable VersionMismatch) or "reject" (it waits, unapplied, for a
      hub whose version matches).
    - ``http_token``: bearer token of the HTTP API (``duraray serve``); required when it
      listens on a non-loopback address. Not shown in ``repr``.
    - ``log_format``: "auto" (console on a terminal, JSON otherwise), "console" or "json".
    - ``blocking_episode_warning_s``: an orchestrator episode (one run of an instance's
      code in a batch) still running after this many seconds is reported once, with the
      code's stack: a warning in the log, ``duraray_blocking_episodes_total`` in the
      metrics and the instance's page of the dashboard. Orchestrator code runs on its
      partition's batch thread, so one that blocks (``time.sleep``, a network call)
      stalls every instance of the partition. None or 0: no watch.
    - ``otel_setup``: ``"module:function"``, a function of no arguments that sets up
      OpenTelemetry (a tracer provider and its exporters) in a process of the hub: called
      once in every process that hosts a partition or runs activities (Ray actors and
      tasks, and the in-process runtime), before anything is traced. A function that
      raises is logged and the process runs untraced. Needs the ``otel`` extra; see the
      README's "Tracing". None (default): only a provider the process sets itself counts.
    """

    partitions: int = 4
    data_dir: str = DEFAULT_DATA_DIR
    fsync: bool = True
    max_map_size: int = 1 << 40
    max_batch_items: int = 5000
    max_cached_orchestrations: int = 20000
    max_cached_entities: int = 100000
    maximum_timer_interval: timedelta | None = None
    max_payload_bytes: int = 16 * 1024 * 1024
    resend_interval: float = 5.0
    request_dedup_seconds: float = 3600.0
    max_activities_in_flight: int = 10000
    activity_threads: int = 8
    activity_workers: int | None = None
    worker_concurrency: int = 4
    activity_pool_idle_s: float = 30.0
    inline_activities: bool = True
    inline_activity_max_ms: float = 0.5
    determinism_warnings: bool | None = None
    peer_links: bool = True
    placement: str = "local"
    log_format: str = "auto"
    version: str | None = None
    version_match: str = "none"
    version_failure: str = "fail"
    http_token: str | None = field(default=None, repr=False)
    blocking_episode_warning_s: float | None = 2.0
    otel_setup: str | None = None

    def __post_init__(self) -> None:
        interval = self.maximum_timer_interval
        if isinstance(interval, int | float) and not isinstance(interval, bool):
            # Durations may be given in seconds everywhere (App options, with_options, TOML).
            object.__setattr__(self, "maximum_timer_interval", timedelta(seconds=interval))
        if (
            isinstance(self.partitions, bool)
            or not isinstance(self.partitions, int)
            or not 1 <= self.partitions <= 1024
        ):
            raise ValueError("partitions must be an integer between 1 and 1024")
        if (
            isinstance(self.max_map_size, bool)
            or not isinstance(self.max_map_size, int)
            or self.max_map_size < MIN_MAP_SIZE
        ):
            raise ValueError(f"max_map_size must be an integer of at least {MIN_MAP_SIZE} bytes")
        if self.max_batch_items < 1:
            raise ValueError("max_batch_items must be >= 1")
        if (
            isinstance(self.max_activities_in_flight, bool)
            or not isinstance(self.max_activities_in_flight, int)
            or self.max_activities_in_flight < 1
        ):
            raise ValueError("max_activities_in_flight must be an integer >= 1")
        if self.max_cached_entities < 0:
            raise ValueError("max_cached_entities must be >= 0")
        if self.max_cached_orchestrations < 0:
            raise ValueError("max_cached_orchestrations must be >= 0")
        if self.maximum_timer_interval is not None and self.maximum_timer_interval <= timedelta(0):
            raise ValueError("maximum_timer_interval must be positive")
        if self.max_payload_bytes < 1024:
            raise ValueError("max_payload_bytes must be at least 1024")
        if not self.resend_interval > 0:  # also rejects NaN
            raise ValueError("resend_interval must be positive")
        if not 0 < self.request_dedup_seconds <= 10 * 365 * 86400:  # also rejects NaN, inf
            raise ValueError("request_dedup_seconds must be positive and at most 10 years")
        if self.activity_threads < 1:
            raise ValueError("activity_threads must be >= 1")
        if self.activity_workers is not None and self.activity_workers < 1:
            raise ValueError("activity_workers must be >= 1")
        if not self.inline_activity_max_ms >= 0:  # also rejects NaN
            raise ValueError("inline_activity_max_ms must be >= 0")
        if self.worker_concurrency < 1:
            raise ValueError("worker_concurrency must be >= 1")
        if not 0 < self.activity_pool_idle_s < 1e9:  # also rejects NaN and infinity
            raise ValueError("activity_pool_idle_s must be a positive number of seconds")
        if self.version_match not in ("none", "strict", "current_or_older"):
            raise ValueError("version_match must be 'none', 'strict' or 'current_or_older'")
        if self.placement not in ("local", "spread"):
            raise ValueError("placement must be 'local' or 'spread'")
        if self.version_failure not in ("fail", "reject"):
            raise ValueError("version_failure must be 'fail' or 'reject'")
        if self.determinism_warnings is not None and not isinstance(
            self.determinism_warnings, bool
        ):
            raise ValueError("determinism_warnings must be true, false or None")
        if self.log_format not in ("auto", "console", "json"):
            raise ValueError("log_format must be 'auto', 'console' or 'json'")
        warn = self.blocking_episode_warning_s
        if warn is not None and (
            isinstance(warn, bool) or not isinstance(warn, int | float) or not 0 <= warn < 1e9
        ):
            raise ValueError("blocking_episode_warning_s must be None or a number of seconds >= 0")
        if self.otel_setup is not None and not (
            isinstance(self.otel_setup, str) and _SETUP_SPEC.fullmatch(self.otel_setup)
        ):
            raise ValueError("otel_setup must be None or 'module:function'")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> HubConfig:
        """Defaults, then a TOML file, then ``DURARAY_*`` variables, then ``overrides``.

        The file is ``path`` or the one named by ``$DURARAY_CONFIG``; its keys are the field
        names, at the top level or under a ``[duraray]`` table. Environment variables are
        the upper-cased field names with the ``DURARAY_`` prefix. Durations are seconds.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = path or env.get(CONFIG_ENV)
        if path:
            with Path(path).open("rb") as fh:
                document = tomllib.load(fh)
            table = document.get("duraray", document)
            if not isinstance(table, dict):
                raise ValueError(f"{path}: [duraray] must be a table")
            values.update(table)
        kinds = {f.name: f.type for f in fields(cls)}
        for name in kinds:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _parse_env(name, str(kinds[name]), raw)
        values.update(overrides)
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise TypeError(f"unknown hub option(s): {', '.join(unknown)}")
        if isinstance(values.get("maximum_timer_interval"), int | float):
            values["maximum_timer_interval"] = timedelta(seconds=values["maximum_timer_interval"])
        return cls(**values)

    def with_options(self, **options: Any) -> HubConfig:
        """A copy with ``options`` applied; unknown option names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown hub option(s): {', '.join(unknown)}")
        return replace(self, **options)


def _parse_env(name: str, kind: str, raw: str) -> Any:
    """Parse an environment variable by the field's declared type."""
    text = raw.strip()
    if "None" in kind and text.lower() in ("", "none", "null"):
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float") or "timedelta" in kind:
            return float(text)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return text
