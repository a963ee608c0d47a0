"""Fixtures for the runtime tests; the PartitionCore driver itself is in partition_driver.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from partition_driver import Cluster

from duraray._registry import Registry


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build clusters that are closed (and their time patch undone) after the test."""
    made: list[Cluster] = []

    def make(registry: Registry, *, lmdb: bool = False, **kwargs: Any) -> Cluster:
        data_dir = tmp_path / f"data{len(made)}" if lmdb else None
        cluster = Cluster(registry, data_dir=data_dir, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in reversed(made):
        cluster.close()
