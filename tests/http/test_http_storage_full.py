"""HTTP 507 Insufficient Storage: a partition that cannot store a change says so."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import duraray as dr
from duraray.runtime.http import create_app
from duraray.testing import run_in_process

app = dr.App("http-storage-full", partitions=1)


@app.orchestration
def echo_length(ctx: dr.OrchestrationContext, text: str):
    return len(text)


@pytest.fixture
def small_client(tmp_path: Path) -> Iterator[dr.Client]:
    """The app in process on LMDB with a 1 MiB max_map_size."""
    with run_in_process(app, data_dir=str(tmp_path), max_map_size=1 << 20, fsync=False) as c:
        yield c


def test_start_that_does_not_fit_is_507(
    small_client: dr.Client, make_http: Callable[[Any], Any]
) -> None:
    """Starting an instance whose input does not fit answers 507 with the reason; a start
    that fits is accepted right after."""
    http = make_http(create_app(small_client))
    response = http.post("/api/orchestrations/echo_length?instance_id=big", json="x" * 700_000)
    assert (507, True) == (response.status_code, "could not commit" in response.json()["error"])
    response = http.post("/api/orchestrations/echo_length?instance_id=fits", json="ok")
    assert 202 == response.status_code
