"""Fixtures of the Ray runtime tests.

Every test here runs on the session's Ray instance (``ray_session``, see tests/conftest.py)
except the multi-node one, which builds its own cluster in a subprocess. Test modules are
not importable by Ray worker processes, so each module registers itself with Ray's
cloudpickle to be pickled by value (its activities travel to the workers as code).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def hubs_to_stop(ray_session) -> Iterator[list[str]]:
    """Names of hubs a test starts; each is stopped at teardown, whatever the test did."""
    from duraray.runtime.ray.manager import PartitionManager

    names: list[str] = []
    yield names
    for name in names:
        PartitionManager.stop(name)
