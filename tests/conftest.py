"""Shared fixtures.

Tests that need Ray share ONE Ray instance per test session (``ray_session``), started
on first use with ``num_cpus=2`` and no dashboard; everything else runs without Ray.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def data_dir(tmp_path):
    """A fresh directory for a hub's LMDB data."""
    path = tmp_path / "data"
    path.mkdir()
    return str(path)


@pytest.fixture(scope="session")
def ray_session():
    """The session's Ray instance (started on first use, shut down at the end)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started = False
    if not ray.is_initialized():
        ray.init(
            # "local": a new instance, never a cluster another process left in
            # /tmp/ray/ray_current_cluster (e.g. a multi-node test's Cluster).
            address="local",
            num_cpus=2,
            # Stands in for a GPU in the shaped-pool tests: four 0.25 shares fit on it.
            resources={"gpu_slot": 1.0},
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )
        started = True
    yield ray
    if started:
        ray.shutdown()
