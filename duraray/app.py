"""App: a task hub's code (orchestrations, activities, entities) and how to run it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from duraray._registry import Registry
from duraray.config import HubConfig
from duraray.orchestrations.ids import validate_instance_id

if TYPE_CHECKING:
    from duraray.runtime.client.sync import Client

F = TypeVar("F", bound=Callable[..., Any])


class App:
    """A task hub: its name, its registered code and its configuration.

    ``App(name="default", *, partitions=4, **options)``; options are ``HubConfig`` fields.
    The configuration starts from ``HubConfig.load()`` (``$DURARAY_CONFIG`` TOML file and
    ``DURARAY_*`` variables) unless ``config`` is given; explicit options win.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        partitions: int | None = None,
        config: HubConfig | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(name, str) or not name or "/" in name or not name.isprintable():
            raise ValueError(f"invalid hub name {name!r}: use a non-empty name without '/'")
        validate_instance_id(name)
        self.name = name
        if partitions is not None:
            options["partitions"] = partitions
        self.config = (config or HubConfig.load()).with_options(**options)
        self.registry = Registry()

    # -- registration ----------------------------------------------------------------------

    @overload
    def orchestration(self, fn: F) -> F: ...
    @overload
    def orchestration(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...

    def orchestration(self, fn: Any = None, *, name: str | None = None) -> Any:
        """Register an orchestrator: ``@app.orchestration`` or ``@app.orchestration(name=...)``."""
        if fn is None:
            return lambda f: self._register_orchestration(f, name)
        return self._register_orchestration(fn, name)

    def _register_orchestration(self, fn: F, name: str | None) -> F:
        self.registry.add_orchestration(fn, name)
        return fn

    @overload
    def activity(self, fn: F) -> F: ...
    @overload
    def activity(
        self, fn: None = None, *, name: str | None = None, **options: Any
    ) -> Callable[[F], F]: ...

    def activity(self, fn: Any = None, *, name: str | None = None, **options: Any) -> Any:
        """Register an activity: ``@app.activity`` or ``@app.activity(num_cpus=1, ...)``.

        How an activity runs is decided per call by the partition's dispatch plan, from
        the wall and CPU time it has learned the activity takes: cheap ones run inline in
        the partition or travel in small batches to the shared worker pool; heavy
        CPU-bound ones (and ones of unknown cost) each run alone as a Ray task holding one
        CPU, so a fan-out uses every core of the cluster; ones that mostly wait share pool
        processes on threads. Each result is recorded as soon as its activity finishes.

        Options (unknown names and wrong types are refused here):

        - ``num_cpus``, ``num_gpus`` (fractions too), ``resources``, ``memory``,
          ``accelerator_type``, ``runtime_env``: run in a warm pool of Ray actors holding
          exactly those resources (one pool per activity, shared by the hub's partitions);
        - ``max_workers`` (the pool's most workers; default: what the cluster holds) and
          ``max_activities_per_worker`` (a worker is replaced after that many);
        - ``timeout`` (seconds; fails the attempt after that long and stops the process
          that ran it);
        - ``cpu_bound`` (True: always alone on a CPU; False: it mostly waits and may
          share a process on threads; default: learned);
        - ``inline`` (True/False: force or forbid running inside the partition's process);
        - ``retry_policy`` (accepted for compatibility; retries are set per call, with
          ``ctx.call_activity(..., retry_policy=...)``).

        An activity may be a class: it is constructed once per worker process and its
        instance is called per activity (``__call__(self, ctx, input)``).
        """
        if fn is None:
            return lambda f: self._register_activity(f, name, options)
        return self._register_activity(fn, name, options)

    def _register_activity(self, fn: F, name: str | None, options: dict[str, Any]) -> F:
        self.registry.add_activity(fn, name, **options)
        return fn

    def entity(self, target: Any = None, *, name: str | None = None) -> Any:
        """Register an entity class or function: ``@app.entity``."""
        if target is None:
            return lambda t: self._register_entity(t, name)
        return self._register_entity(target, name)

    def _register_entity(self, target: Any, name: str | None) -> Any:
        self.registry.add_entity(target, name)
        return target

    def add_orchestration(self, fn: Callable[..., Any], name: str | None = None) -> str:
        """Register an orchestrator; returns its name."""
        return self.registry.add_orchestration(fn, name)

    def add_activity(self, fn: Callable[..., Any], name: str | None = None, **options: Any) -> str:
        """Register an activity with options; returns its name."""
        return self.registry.add_activity(fn, name, **options)

    def add_entity(self, target: Any, name: str | None = None) -> str:
        """Register an entity class or function; returns its (lower-cased) name."""
        return self.registry.add_entity(target, name)

    # -- running ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(
        self,
        *,
        address: str | None = None,
        data_dir: str | None = None,
        in_process: bool = False,
        clock: Callable[[], datetime] | None = None,
        **options: Any,
    ) -> Iterator[Client]:
        """Run the hub for the duration of a ``with`` block and yield a ``Client``.

        ``in_process=True`` runs the same engine without Ray (``data_dir=":memory:"`` keeps
        everything in memory; ``clock`` may be a ``duraray.testing.ManualClock``).
        Otherwise a local Ray instance (or the one at ``address``) hosts the partitions.
        Data lives in ``./.duraray`` unless ``data_dir`` is given, and survives the run.
        """
        config = self._config(data_dir, options)
        from duraray.runtime.logging import configure_logging

        configure_logging(config.log_format)
        if in_process:
            from duraray.runtime.client.sync import Client
            from duraray.runtime.inprocess import InProcessHub

            hub = InProcessHub(self.name, self.registry, config, clock=clock)
            client = Client(
                hub,
                hub=self.name,
                registry=self.registry,
                max_payload_bytes=config.max_payload_bytes,
            )
            try:
                yield client
            finally:
                hub.close()
            return
        if clock is not None:
            raise ValueError("a custom clock needs in_process=True")
        import ray

        from duraray.runtime.ray.manager import PartitionManager, ensure_ray

        started_ray = ensure_ray(address)
        try:
            already_up = PartitionManager.find(self.name) is not None
            client = self._launch(config, detached=False)
            try:
                yield client
            finally:
                if not already_up:
                    PartitionManager.stop(self.name)
        finally:
            if started_ray:
                ray.shutdown()

    def start(
        self,
        *,
        address: str | None = "auto",
        data_dir: str | None = None,
        detached: bool = True,
        **options: Any,
    ) -> Client:
        """Launch the hub's actors on a running Ray cluster (or attach if they are up).

        Idempotent: a second call attaches to the running hub. With ``detached=True`` the
        hub outlives this process until ``App.stop()`` or ``Client.shutdown_hub()``.
        Returns a ``Client``.
        """
        from duraray.runtime.logging import configure_logging
        from duraray.runtime.ray.manager import ensure_ray

        config = self._config(data_dir, options)
        configure_logging(config.log_format)
        ensure_ray(address)
        return self._launch(config, detached=detached)

    def stop(self) -> bool:
        """Stop this hub's actors on the connected Ray cluster; data stays on disk."""
        from duraray.runtime.ray.manager import PartitionManager

        return PartitionManager.stop(self.name)

    def _config(self, data_dir: str | None, options: dict[str, Any]) -> HubConfig:
        config = self.config.with_options(**options)
        if data_dir is not None:
            config = config.with_options(data_dir=str(data_dir))
        if config.data_dir != ":memory:":
            # Actors do not share the driver's working directory: make the path absolute.
            config = config.with_options(data_dir=os.path.abspath(config.data_dir))
        return config

    def _launch(self, config: HubConfig, *, detached: bool) -> Client:
        from duraray.runtime.client.sync import Client
        from duraray.runtime.ray.manager import PartitionManager, RayTransport

        if config.data_dir == ":memory:":
            raise ValueError("data_dir=':memory:' needs in_process=True")
        self.registry.otel_setup = config.otel_setup  # travels to the workers with the code
        handle = PartitionManager(self.name, config, self.registry).launch(detached=detached)
        return Client(
            RayTransport(handle),
            hub=self.name,
            registry=self.registry,
            max_payload_bytes=config.max_payload_bytes,
        )
