"""Puts tests/runtime on sys.path: the stored-data tests drive partitions with its
``partition_driver`` (pytest adds only a test file's own directory)."""

from __future__ import annotations

import sys
from pathlib import Path

RUNTIME_TESTS = str(Path(__file__).resolve().parents[1] / "runtime")
if RUNTIME_TESTS not in sys.path:
    sys.path.insert(0, RUNTIME_TESTS)
