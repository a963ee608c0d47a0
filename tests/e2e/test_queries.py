"""End to end: query_instances filters, paging with continuation tokens, get_all_instances."""

from __future__ import annotations

import threading
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


def _key(state):
    return (state.created_at, state.instance_id)


@pytest.mark.parametrize("page_size", [1, 3, 7, 100])
@pytest.mark.parametrize("newest_first", [False, True], ids=["oldest", "newest"])
def test_paging_in_either_order_is_the_sorted_list(population, page_size, newest_first):
    """Oldest first and newest first, every page size: the pages joined are every
    instance once, in (creation time, id) order or its reverse."""
    client, instances = population
    pages = _all_pages(client, page_size=page_size, newest_first=newest_first)
    seen = [s for p in pages for s in p.items]
    assert all(len(p.items) <= page_size for p in pages)
    assert sorted(instances) == sorted(s.instance_id for s in seen)
    assert sorted(seen, key=_key, reverse=newest_first) == seen


def test_a_token_works_without_the_client_that_made_it(population, manual_client):
    """The read-ahead is an optimisation: a token followed on another client (or after
    the read-ahead expired) gives the same next pages."""
    client, _ = population
    first = client.query_instances(page_size=5, newest_first=True)
    fresh = dr.Client(client._router.transport, hub="e2e-queries")
    assert [
        s.instance_id
        for s in client.query_instances(
            page_size=5, newest_first=True, continuation_token=first.continuation_token
        ).items
    ] == [
        s.instance_id
        for s in fresh.query_instances(
            page_size=5, newest_first=True, continuation_token=first.continuation_token
        ).items
    ]


def test_a_token_of_the_other_order_is_refused(population):
    client, _ = population
    token = client.query_instances(page_size=2).continuation_token
    with pytest.raises(ValueError, match="continuation token"):
        client.query_instances(page_size=2, newest_first=True, continuation_token=token)


def test_query_by_name_and_tags(manual_client):
    """Name and tag filters are applied by the partitions, with paging."""
    ids = manual_client.schedule_new_orchestrations(
        echo, range(12), tags={"team": "a", "env": "prod"}
    )
    ids += manual_client.schedule_new_orchestrations(echo, range(5), tags={"team": "b"})
    ids += manual_client.schedule_new_orchestrations(wait_go, [None] * 3, tags={"team": "a"})
    manual_client.wait_for_orchestrations(ids[:17], timeout=TIMEOUT)
    team_a = manual_client.get_all_instances(tags={"team": "a"}, page_size=4)
    assert 15 == len(team_a)
    assert 12 == len(manual_client.get_all_instances(tags={"team": "a", "env": "prod"}))
    assert 3 == len(manual_client.get_all_instances(name="wait_go", tags={"team": "a"}))
    assert [] == manual_client.get_all_instances(name="nope")


def test_count_instances_from_counters_and_by_scan(population):
    """count_instances: every status (zeros included) from the counters; filters scan."""
    client, instances = population
    expected = Counter(status for _, status in instances.values())
    counts = client.count_instances()
    assert set(Status) == set(counts)
    assert {s: expected.get(s, 0) for s in Status} == counts
    assert {Status.FAILED: expected[Status.FAILED]} == client.count_instances(
        runtime_status=Status.FAILED
    )
    orders = Counter(s for i, (_, s) in instances.items() if i.startswith("order-"))
    by_prefix = client.count_instances(instance_id_prefix="order-")
    assert {s: orders.get(s, 0) for s in Status} == by_prefix
    assert expected[Status.RUNNING] == client.count_instances(name="wait_go")[Status.RUNNING]


def test_counts_follow_every_change_of_status(manual_client):
    """Counters through terminate, purge, suspend, rewind and an id used again."""
    client = manual_client
    waiting = client.schedule_new_orchestrations(wait_go, [None] * 4)
    for iid in waiting:
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    failed = client.schedule_new_orchestration(fail_now)
    client.wait_for_orchestration_completion(failed, timeout=TIMEOUT)
    assert (4, 1) == (
        client.count_instances()[Status.RUNNING],
        client.count_instances()[Status.FAILED],
    )
    client.terminate_orchestration(waiting[0])
    client.suspend_orchestration(waiting[1])
    client.raise_orchestration_event(waiting[2], "go", data=1)
    for iid in waiting[:3]:
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT) if iid != waiting[
            1
        ] else None
    counts = client.count_instances()
    assert 1 == counts[Status.TERMINATED] and 1 == counts[Status.SUSPENDED]
    assert 1 == counts[Status.COMPLETED] and 1 == counts[Status.RUNNING]
    client.purge_orchestration(waiting[0])
    client.purge_orchestration(waiting[2])
    # The same id again: the finished instance it replaces is no longer counted.
    client.schedule_new_orchestration(echo, input=1, instance_id=failed)
    client.wait_for_orchestration_completion(failed, timeout=TIMEOUT)
    counts = client.count_instances()
    assert {Status.SUSPENDED: 1, Status.RUNNING: 1, Status.COMPLETED: 1} == {
        s: n for s, n in counts.items() if n
    }
    assert sum(counts.values()) == len(client.get_all_instances())


def test_bulk_terminate_and_purge_by_filter_report_progress(manual_client, monkeypatch):
    """terminate_instances and purge_instances act on what the filter matches, a page
    at a time, and report (done, total) after each page."""
    from duraray.runtime.client import bulk

    monkeypatch.setattr(bulk, "BULK_PAGE", 7)
    client = manual_client
    batch_a = client.schedule_new_orchestrations(wait_go, [None] * 20, tags={"batch": "a"})
    keep = client.schedule_new_orchestrations(wait_go, [None] * 5, tags={"batch": "b"})
    for iid in batch_a + keep:
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    progress = []
    done = client.terminate_instances(
        tags={"batch": "a"}, output="stop", on_progress=lambda d, t: progress.append((d, t))
    )
    assert 20 == done
    assert [(7, 20), (14, 20), (20, 20)] == progress
    assert {Status.TERMINATED} == {
        client.get_orchestration_state(i).runtime_status for i in batch_a
    }
    assert "stop" == client.get_orchestration_state(batch_a[0]).output
    assert {Status.RUNNING} == {client.get_orchestration_state(i).runtime_status for i in keep}
    # Nothing running matches any more; running ones are never purged.
    assert 0 == client.terminate_instances(tags={"batch": "a"})
    assert 0 == client.purge_instances(tags={"batch": "b"}).deleted_instance_count
    assert 20 == client.purge_instances(runtime_status=Status.TERMINATED).deleted_instance_count
    assert 5 == sum(client.count_instances().values())
    with pytest.raises(TypeError, match="unknown filter"):
        client.terminate_instances(status="RUNNING")


_held = threading.Event()
_holding = threading.Event()


@app.orchestration
def hold_batch(ctx: dr.OrchestrationContext):
    # After its timer (so no client call waits on the batch), blocks its partition's
    # batch, as orchestration code must never do, until let go.
    yield ctx.create_timer(timedelta(seconds=1))
    if not ctx.is_replaying:
        _holding.set()
        _held.wait(timeout=TIMEOUT)
    return "let go"


def test_listings_and_counts_are_answered_while_the_batch_is_stuck(client):
    """query_instances and count_instances read committed data beside the batch loop:
    they answer while a batch is stuck in orchestration code."""
    done = client.schedule_new_orchestrations(echo, range(30))
    client.wait_for_orchestrations(done, timeout=TIMEOUT)
    _held.clear()
    _holding.clear()
    stuck = client.schedule_new_orchestration(hold_batch)
    assert _holding.wait(timeout=TIMEOUT)
    try:
        assert 30 == client.count_instances()[Status.COMPLETED]
        page = client.query_instances(page_size=100, runtime_status=Status.COMPLETED)
        assert sorted(done) == sorted(s.instance_id for s in page.items)
    finally:
        _held.set()
    assert "let go" == client.wait_for_orchestration_completion(stuck, timeout=TIMEOUT).output


def test_bulk_terminate_skips_instances_that_changed_after_the_listing(manual_client, monkeypatch):
    """An instance listed but finished (or purged) before its page is terminated is left
    as it is: the others are terminated, and the count says how many were."""
    from duraray.runtime.client import bulk

    client = manual_client
    ids = client.schedule_new_orchestrations(wait_go, [None] * 6)
    for iid in ids:
        client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    listed = bulk.queries.query_instances

    def listing_then_changes(*args, **kwargs):
        page = listed(*args, **kwargs)
        if page.items:  # meanwhile: one finishes and is purged, one finishes
            client.raise_orchestration_event(ids[0], "go", data=0)
            client.wait_for_orchestration_completion(ids[0], timeout=TIMEOUT)
            client.purge_orchestration(ids[0])
            client.raise_orchestration_event(ids[1], "go", data=1)
            client.wait_for_orchestration_completion(ids[1], timeout=TIMEOUT)
        return page

    monkeypatch.setattr(bulk.queries, "query_instances", listing_then_changes)
    assert 4 == client.terminate_instances()
    assert Status.COMPLETED == client.get_orchestration_state(ids[1]).runtime_status
    assert {Status.TERMINATED} == {
        client.get_orchestration_state(i).runtime_status for i in ids[2:]
    }


@app.orchestration
def parent_of_one(ctx: dr.OrchestrationContext):
    return (yield ctx.call_sub_orchestrator(echo, input=1))


def test_bulk_purge_deletes_sub_orchestrations_too(manual_client):
    """purge_instances deletes what purge_orchestration would: each match and its
    sub-orchestrations."""
    parent = manual_client.schedule_new_orchestration(parent_of_one, instance_id="p-1")
    manual_client.wait_for_orchestration_completion(parent, timeout=TIMEOUT)
    assert 2 == len(manual_client.get_all_instances())
    assert 2 == manual_client.purge_instances(name="parent_of_one").deleted_instance_count
    assert [] == manual_client.get_all_instances()
