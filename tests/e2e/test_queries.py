"""End to end: query_instances filters, paging with continuation tokens, get_all_instances."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

import duraray as dr

from .helpers import TIMEOUT

app = dr.App("e2e-queries", partitions=4)

Status = dr.OrchestrationStatus


@app.orchestration
def echo(ctx: dr.OrchestrationContext, value):
    return value


@app.orchestration
def wait_go(ctx: dr.OrchestrationContext):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def fail_now(ctx: dr.OrchestrationContext):
    raise RuntimeError("no")


@pytest.fixture
def population(manual_client, manual_clock):
    """25 instances over 4 partitions: created one second apart in pairs, mixed statuses.

    Returns ``(client, instances)`` where instances maps id -> (created_at, expected status).
    """
    instances = {}
    for n in range(25):
        if n % 5 == 0:
            orchestrator, status = wait_go, Status.RUNNING
        elif n % 5 == 1:
            orchestrator, status = fail_now, Status.FAILED
        else:
            orchestrator, status = echo, Status.COMPLETED
        prefix = "order" if n % 2 == 0 else "invoice"
        iid = manual_client.schedule_new_orchestration(
            orchestrator, input=n, instance_id=f"{prefix}-{n:02d}"
        )
        instances[iid] = (manual_clock.now(), status)
        if n % 2 == 1:  # pairs share a creation time: ties must page correctly too
            manual_clock.advance(timedelta(seconds=1))
    for iid, (_, status) in instances.items():
        if status is Status.RUNNING:
            manual_client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
        else:
            manual_client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    partitions = {
        s["partition"] for s in manual_client.partition_stats() if s["counters"]["episodes"]
    }
    expected = 4
    assert expected == len(partitions), "the population should span every partition"
    return manual_client, instances


def _all_pages(client, **filters):
    pages, token = [], None
    for _ in range(100):
        page = client.query_instances(continuation_token=token, **filters)
        pages.append(page)
        token = page.continuation_token
        if token is None:
            return pages
    pytest.fail("paging did not end within 100 pages")


def test_query_by_runtime_status(population):
    """query_instances(runtime_status=...) returns exactly the instances in those statuses."""
    client, instances = population
    for wanted in ([Status.RUNNING], [Status.COMPLETED, Status.FAILED], Status.FAILED, "FAILED"):
        statuses = {wanted} if not isinstance(wanted, list) else set(wanted)
        statuses = {Status(s) for s in statuses}
        expected = sorted(i for i, (_, s) in instances.items() if s in statuses)
        page = client.query_instances(runtime_status=wanted)
        assert expected == sorted(s.instance_id for s in page.items)
        assert all(s.runtime_status in statuses for s in page.items)


def test_query_by_created_time_range(population):
    """query_instances with a created-time range returns the instances created inside it, bounds included."""
    client, instances = population
    times = sorted({created for created, _ in instances.values()})
    low, high = times[3], times[7]
    expected = sorted(i for i, (c, _) in instances.items() if low <= c <= high)
    page = client.query_instances(created_time_from=low, created_time_to=high)
    assert expected == sorted(s.instance_id for s in page.items)
    only_from = client.query_instances(created_time_from=times[-1])
    expected_last = sorted(i for i, (c, _) in instances.items() if c == times[-1])
    assert expected_last == sorted(s.instance_id for s in only_from.items)


def test_query_by_instance_id_prefix(population):
    """query_instances(instance_id_prefix=...) returns only ids starting with the prefix."""
    client, instances = population
    expected = sorted(i for i in instances if i.startswith("invoice-"))
    page = client.query_instances(instance_id_prefix="invoice-")
    assert expected == sorted(s.instance_id for s in page.items)


def test_paging_yields_every_instance_exactly_once(population):
    """Following continuation tokens with page_size 4 yields every instance exactly once, oldest first."""
    client, instances = population
    pages = _all_pages(client, page_size=4)
    assert all(len(p.items) <= 4 for p in pages)
    seen = [s.instance_id for p in pages for s in p.items]
    expected = Counter(list(instances))
    assert expected == Counter(seen)
    created = [s.created_at for p in pages for s in p.items]
    assert sorted(created) == created


def test_paging_with_filters(population):
    """Paging combined with a status filter and a prefix still yields each match exactly once."""
    client, instances = population
    wanted = {Status.COMPLETED, Status.FAILED}
    pages = _all_pages(
        client, page_size=3, runtime_status=list(wanted), instance_id_prefix="order-"
    )
    seen = [s.instance_id for p in pages for s in p.items]
    expected = Counter(
        i for i, (_, s) in instances.items() if s in wanted and i.startswith("order-")
    )
    assert expected == Counter(seen)


def test_get_all_instances_follows_every_page(population):
    """get_all_instances returns every matching instance across pages."""
    client, instances = population
    everything = client.get_all_instances(page_size=2)
    expected = sorted(instances)
    assert expected == sorted(s.instance_id for s in everything)


def test_query_without_payloads(population):
    """query_instances(fetch_payloads=False) leaves input and output None."""
    client, _ = population
    items = client.query_instances(runtime_status=[Status.COMPLETED], fetch_payloads=False).items
    assert items
    assert all(s.input is None and s.output is None for s in items)
    with_payloads = client.query_instances(runtime_status=[Status.COMPLETED]).items
    assert all(s.input == s.output for s in with_payloads)


def test_query_argument_errors(client):
    """A non-positive page size or a malformed continuation token raises ValueError."""
    with pytest.raises(ValueError):
        client.query_instances(page_size=0)
    with pytest.raises(ValueError):
        client.query_instances(continuation_token="not a token!")


def test_query_of_an_empty_hub(client):
    """Querying a hub without instances returns an empty page and no continuation token."""
    page = client.query_instances()
    expected = dr.Page([], None)
    assert expected == page
