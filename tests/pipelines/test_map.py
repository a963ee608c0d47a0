"""Client.map in process: order, error policies, re-use of completed instances, the async
twin, and backpressure (never more than ``max_in_flight`` instances outstanding).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import pytest

import duraray as dr
from duraray.testing import run_in_process

app = dr.App("pipelines-map", partitions=4)

#: Activity executions per input, across the runs of one test (activities run in threads).
executions: collections.Counter[int] = collections.Counter()
_lock = threading.Lock()


@pytest.fixture(autouse=True)
def _reset_executions():
    with _lock:
        executions.clear()


@app.activity
def square(ctx: dr.ActivityContext, x: int) -> int:
    """x squared; later inputs finish first (so completion order is not input order)."""
    with _lock:
        executions[x] += 1
    time.sleep(0.001 * (20 - x % 20))
    return x * x


@app.activity
def picky_square(ctx: dr.ActivityContext, x: int) -> int:
    """x squared, except that it fails for every x ending in 3."""
    with _lock:
        executions[x] += 1
    if x % 10 == 3:
        raise ValueError(f"no threes please ({x})")
    return x * x


@app.orchestration
def squared(ctx: dr.OrchestrationContext, x: int):
    """One activity call."""
    return (yield ctx.call_activity(square, input=x))


@app.orchestration
def picky(ctx: dr.OrchestrationContext, x: int):
    """One activity call that fails for inputs ending in 3."""
    return (yield ctx.call_activity(picky_square, input=x))


@app.orchestration
def echo(ctx: dr.OrchestrationContext, x: int):
    """No activity at all: the cheapest orchestration there is."""
    return x


@pytest.fixture
def client():
    """The module's app in process on a memory store."""
    with run_in_process(app) as c:
        yield c


def test_outputs_come_in_input_order(client):
    """Outputs are yielded in input order even when later items finish first."""
    outputs = list(client.map(squared, range(100), max_in_flight=16, progress=False))
    assert [x * x for x in range(100)] == outputs


def test_prefix_ids_name_the_instances(client):
    """A prefix gives instance ids ``<prefix>-<index>``, and the instances are queryable."""
    list(client.map(squared, [5, 6, 7], instance_id="named", progress=False))
    states = [client.get_orchestration_state(f"named-{i}") for i in range(3)]
    assert [25, 36, 49] == [s.output for s in states]
    assert [dr.OrchestrationStatus.COMPLETED] * 3 == [s.runtime_status for s in states]


def test_on_error_raise_names_the_first_failed_item(client):
    """With on_error="raise" the first failed item (in input order) raises with its index and id."""
    seen = []
    with pytest.raises(dr.OrchestrationFailedError) as info:
        for value in client.map(picky, range(20), instance_id="raise", max_in_flight=4):
            seen.append(value)
    assert [0, 1, 4] == seen
    assert "raise-3" == info.value.instance_id
    assert 3 == info.value.index
    assert "raise-3" in str(info.value)
    assert "no threes please (3)" in info.value.details.message


def test_on_error_skip_leaves_failed_items_out(client):
    """With on_error="skip" failed items are left out and the rest keep their order."""
    outputs = list(client.map(picky, range(30), on_error="skip", progress=False))
    assert [x * x for x in range(30) if x % 10 != 3] == outputs


def test_on_error_collect_puts_a_failure_in_the_item_s_place(client):
    """With on_error="collect" a MapFailure with index, instance id and reason replaces the item."""
    outputs = list(
        client.map(picky, range(15), instance_id="col", on_error="collect", progress=False)
    )
    failures = [o for o in outputs if isinstance(o, dr.MapFailure)]
    assert [3, 13] == [f.index for f in failures]
    assert ["col-3", "col-13"] == [f.instance_id for f in failures]
    assert [dr.OrchestrationStatus.FAILED] * 2 == [f.status for f in failures]
    assert "no threes please (13)" in failures[1].failure.message
    assert [x * x for x in range(15) if x % 10 != 3] == [
        o for o in outputs if not isinstance(o, dr.MapFailure)
    ]
    assert failures == [outputs[3], outputs[13]]


def test_a_rerun_reuses_completed_instances(client):
    """Re-running a job with the same prefix re-uses completed instances: no activity runs again."""
    first = list(client.map(squared, range(50), instance_id="job-1", max_in_flight=8))
    assert {x: 1 for x in range(50)} == dict(executions)
    second = list(client.map(squared, range(50), instance_id="job-1", max_in_flight=8))
    assert first == second
    assert {x: 1 for x in range(50)} == dict(executions)
    # A longer job over the same prefix runs only the new items.
    third = list(client.map(squared, range(60), instance_id="job-1", max_in_flight=8))
    assert [x * x for x in range(60)] == third
    assert {x: 1 for x in range(60)} == dict(executions)


def test_a_rerun_with_an_id_function_reuses_completed_instances(client):
    """An id function of (index, input) makes ids deterministic just like a prefix."""

    def ids(index: int, value: int) -> str:
        return f"sq-of-{value}"

    inputs = [4, 8, 15, 16, 23, 42]
    first = list(client.map(squared, inputs, instance_id=ids, progress=False))
    second = list(client.map(squared, list(reversed(inputs)), instance_id=ids, progress=False))
    assert list(reversed(first)) == second
    assert dict.fromkeys(inputs, 1) == dict(executions)
    assert 16 * 16 == client.get_orchestration_state("sq-of-16").output


def test_a_rerun_starts_failed_items_again(client):
    """On a re-run only the items that failed run again; completed ones are re-used."""
    list(client.map(picky, range(20), instance_id="again", on_error="skip", progress=False))
    list(client.map(picky, range(20), instance_id="again", on_error="skip", progress=False))
    assert {x: (2 if x % 10 == 3 else 1) for x in range(20)} == dict(executions)


def test_progress_flag_is_accepted(client):
    """progress=True gives the same outputs as progress=False, for sized and unsized inputs."""
    with_bar = list(client.map(squared, range(10), progress=True))
    unsized = list(client.map(squared, (x for x in range(10)), progress=True))
    without = list(client.map(squared, range(10), progress=False))
    assert [x * x for x in range(10)] == with_bar == unsized == without


def test_arguments_are_checked(client):
    """An unknown on_error policy or a non-positive max_in_flight is refused before anything starts."""
    with pytest.raises(ValueError, match="on_error"):
        next(client.map(squared, [1], on_error="ignore"))
    with pytest.raises(ValueError, match="max_in_flight"):
        next(client.map(squared, [1], max_in_flight=0))
    assert {} == dict(executions)


def test_empty_input_yields_nothing(client):
    """Mapping no inputs yields nothing and starts nothing."""
    assert [] == list(client.map(squared, [], progress=False))


def test_async_map_yields_outputs_in_order(client):
    """AsyncClient.map is an async generator with the same order, ids and error policy."""

    async def scenario() -> list:
        aclient = dr.AsyncClient(client)
        return [
            value
            async for value in aclient.map(
                picky,
                range(25),
                instance_id="amap",
                max_in_flight=5,
                on_error="collect",
                progress=False,
            )
        ]

    outputs = asyncio.run(scenario())
    assert 25 == len(outputs)
    assert [3, 13, 23] == [o.index for o in outputs if isinstance(o, dr.MapFailure)]
    assert ["amap-3", "amap-13", "amap-23"] == [
        o.instance_id for o in outputs if isinstance(o, dr.MapFailure)
    ]
    assert [x * x for x in range(25) if x % 10 != 3] == [
        o for o in outputs if not isinstance(o, dr.MapFailure)
    ]


def test_async_map_reuses_completed_instances(client):
    """A second async run over the same prefix re-uses every completed instance."""

    async def run() -> list:
        aclient = dr.AsyncClient(client)
        return [v async for v in aclient.map(squared, range(20), instance_id="async-job")]

    first = asyncio.run(run())
    second = asyncio.run(run())
    assert [x * x for x in range(20)] == first == second
    assert {x: 1 for x in range(20)} == dict(executions)


def test_fifty_thousand_inputs_keep_at_most_max_in_flight_outstanding(client):
    """Mapping 50,000 inputs never has more than max_in_flight instances started and unfinished."""
    max_in_flight = 500
    total = 50_000
    pulled = 0
    yielded = 0
    started = 0
    peaks = {"outstanding": 0, "pulled_ahead": 0, "live": 0}

    def inputs():
        nonlocal pulled
        for i in range(total):
            pulled += 1
            yield i

    # Instances started by map and not yet handed to the caller, measured right after
    # every start request (the moment the count is highest).
    real_schedule = client.schedule_new_orchestrations

    def counting_schedule(orchestrator, values, **kwargs):
        nonlocal started
        ids = real_schedule(orchestrator, values, **kwargs)
        started += len(ids)
        peaks["outstanding"] = max(peaks["outstanding"], started - yielded)
        return ids

    client.schedule_new_orchestrations = counting_schedule

    # Meanwhile, the partitions' own count of live (not yet finished) instances.
    stop = threading.Event()

    def sample_live() -> None:
        while not stop.is_set():
            live = sum(sum(p["live_instances"].values()) for p in client.partition_stats())
            peaks["live"] = max(peaks["live"], live)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample_live, daemon=True)
    sampler.start()
    checksum = 0
    try:
        for value in client.map(echo, inputs(), max_in_flight=max_in_flight, progress=False):
            yielded += 1
            checksum += value
            peaks["pulled_ahead"] = max(peaks["pulled_ahead"], pulled - yielded)
    finally:
        stop.set()
        sampler.join()
    assert total == yielded
    assert sum(range(total)) == checksum
    assert total == started
    assert peaks["outstanding"] <= max_in_flight
    assert peaks["pulled_ahead"] <= max_in_flight
    assert peaks["live"] <= max_in_flight
    # The measurement saw the window fill up (it is not vacuous).
    assert max_in_flight == peaks["outstanding"]


def test_async_map_raises_the_first_failure(client):
    """With on_error="raise" the async twin raises the first failed item's error, naming its instance."""

    async def run() -> list:
        aclient = dr.AsyncClient(client)
        seen = []
        async for value in aclient.map(picky, range(10), instance_id="araise", progress=False):
            seen.append(value)
        return seen

    with pytest.raises(dr.OrchestrationFailedError) as info:
        asyncio.run(run())
    assert "araise-3" == info.value.instance_id
