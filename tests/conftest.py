"""Shared fixtures: test apps run in process on a memory store unless a test says otherwise."""

from __future__ import annotations

import pytest


@pytest.fixture
def data_dir(tmp_path):
    """A fresh directory for a hub's LMDB data."""
    path = tmp_path / "data"
    path.mkdir()
    return str(path)
