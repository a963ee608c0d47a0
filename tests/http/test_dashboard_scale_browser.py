"""The dashboard with 10,000 instances in the hub, in Debian's Chromium: totals by status,
newest first, server-side filters, paging both ways, a 200-way fan-out's grouped timeline
and a bulk terminate of a filtered set.

One hub for the module (in process, manual clock), started in bulk with
``schedule_new_orchestrations``; the tests read what they expect from the hub with the
Python client at the time they look, so their order does not matter. Only the bulk test
changes the hub, and only its own tenant's instances (none are purged, so the total
stays 10,000).

``DURARAY_UPDATE_DOCS=1`` (``scripts/screenshots.py`` sets it) also writes the README's
screenshots, docs/dashboard.png and docs/dashboard-timeline.png.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from browser_support import DOCS, chromium, serve, watched_page
from playwright.sync_api import expect

import duraray as dr
from duraray.runtime.http import create_app
from duraray.testing import ManualClock, run_in_process

pytestmark = pytest.mark.browser

TOTAL = 10_000
FAN_OUT = 200
SITES = 12
#: The en dash of "Rows 1-25" and the multiplication sign of "x200" on the page.
DASH = "\u2013"
TIMES = "\u00d7"
#: Fan-out pages whose first fetch fails (then succeeds on the retry).
FLAKY = {7, 57, 107, 157}

app = dr.App("fleet")

_clock: dict[str, ManualClock] = {}
_attempts: dict[int, int] = {}
_attempts_lock = threading.Lock()


def _work(seconds: float) -> None:
    """Advance the hub's clock as if the activity had worked for ``seconds``."""
    _clock["now"].advance(timedelta(seconds=seconds))


@app.activity
def fetch_page(ctx: dr.ActivityContext, page: int) -> int:
    with _attempts_lock:
        _attempts[page] = attempt = _attempts.get(page, 0) + 1
    _work(0.05)
    if page in FLAKY and attempt == 1:
        raise TimeoutError(f"page {page} did not answer")
    return page


@app.activity
def merge(ctx: dr.ActivityContext, pages: list) -> int:
    _work(0.8)
    return len(pages)


@app.orchestration
def ingest(ctx: dr.OrchestrationContext, batch: int):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def report(ctx: dr.OrchestrationContext, number: int):
    if number % 100 == 0:
        raise ValueError(f"report {number} has no data")
    return number


@app.orchestration
def crawl_site(ctx: dr.OrchestrationContext, site: int):
    return (yield ctx.call_activity(fetch_page, input=10_000 + site))


@app.orchestration
def crawl(ctx: dr.OrchestrationContext, pages: int):
    retry = dr.RetryPolicy(first_retry_interval=timedelta(seconds=2), max_number_of_attempts=3)
    fetched = yield dr.when_all(
        [ctx.call_activity(fetch_page, input=n, retry_policy=retry) for n in range(pages)]
    )
    sites = yield dr.when_all(
        [ctx.call_sub_orchestrator(crawl_site, input=s) for s in range(SITES)]
    )
    return (yield ctx.call_activity(merge, input=fetched + sites))


@dataclass
class Fleet:
    """The hub under test: its client, the dashboard's URL and the fan-out's instance id."""

    client: dr.Client
    url: str
    crawl: str


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def _populate(client: dr.Client, clock: ManualClock) -> str:
    """10,000 instances in batches a few minutes apart: running, completed, failed,
    suspended, two tenants' tagged sets and one 200-way fan-out; returns its id."""

    def batch(orchestrator: Any, ids: list[str], **tags: str) -> None:
        clock.advance(timedelta(minutes=7))
        client.schedule_new_orchestrations(
            orchestrator, range(len(ids)), instance_ids=ids, tags=tags or None
        )

    batch(ingest, _ids("ingest", 6_000), source="web")
    batch(report, _ids("report", 2_400), source="nightly")
    batch(ingest, _ids("acme", 1_000), tenant="acme")
    batch(ingest, _ids("globex", 500), tenant="globex")
    clock.advance(timedelta(minutes=7))
    crawl_id = client.schedule_new_orchestration(crawl, input=FAN_OUT, instance_id="crawl-0001")
    client.wait_for_orchestration_completion(crawl_id, timeout=60).raise_if_failed()
    # The newest: a mix, one a second, so the first page shows every kind.
    tail = TOTAL - 6_000 - 2_400 - 1_000 - 500 - 1 - SITES
    for i in range(tail):
        clock.advance(timedelta(seconds=1))
        if i % 3 == 0:
            client.schedule_new_orchestration(report, input=i, instance_id=f"report-t{i:03d}")
        else:
            client.schedule_new_orchestration(
                ingest, input=i, instance_id=f"ingest-t{i:03d}", tags={"source": "api"}
            )
    assert client.hub_runtime.wait_idle(timeout=60)
    for i in range(1, tail, 9):
        if i % 3:
            client.suspend_orchestration(f"ingest-t{i:03d}", reason="quota")
    assert client.hub_runtime.wait_idle(timeout=60)
    assert TOTAL == sum(client.count_instances().values())
    return crawl_id


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """The fleet app in process with 10,000 instances, its API served over HTTP."""
    clock = ManualClock(datetime(2026, 3, 2, 8, 0, tzinfo=UTC), auto_advance=True)
    _clock["now"] = clock
    _attempts.clear()
    with run_in_process(app, clock=clock) as client:
        crawl_id = _populate(client, clock)
        with serve(create_app(client, bind_host="127.0.0.1")) as url:
            yield Fleet(client, url, crawl_id)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    """Debian's Chromium with a new, empty profile directory; fails if it is missing."""
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(browser_context):
    """A new tab (auto-refresh off: the tests drive every reload); fails on script errors."""
    with watched_page(browser_context) as tab:
        tab.add_init_script("sessionStorage.setItem('duraray.autoRefresh', 'off')")
        yield tab


def _counts(client: dr.Client, **filters: Any) -> dict[str, int]:
    """The hub's counts by status, in the API's spelling."""
    names = {
        "CONTINUED_AS_NEW": "ContinuedAsNew",
    }
    return {
        names.get(status.value, status.value.capitalize()): n
        for status, n in client.count_instances(**filters).items()
    }


def _page_ids(client: dr.Client, pages: int, **filters: Any) -> list[list[str]]:
    """The ids of the first ``pages`` pages of 25, newest first, as the server pages them."""
    out: list[list[str]] = []
    token = None
    for _ in range(pages):
        page = client.query_instances(
            newest_first=True, page_size=25, continuation_token=token, **filters
        )
        out.append([state.instance_id for state in page.items])
        token = page.continuation_token
    return out


def _shown_ids(page) -> list[str]:
    return page.locator("table.instances tbody tr").evaluate_all(
        "rows => rows.map((row) => row.dataset.instanceId)"
    )


def _expect_rows(page, ids: list[str]) -> None:
    """The table shows exactly ``ids``, in order (waiting for the first one to appear)."""
    expect(page.locator("table.instances tbody tr").first).to_have_attribute(
        "data-instance-id", ids[0]
    )
    assert ids == _shown_ids(page)


def test_totals_by_status_newest_first_and_paging_both_ways(fleet: Fleet, page, tmp_path):
    """The list opens newest first with the hub's totals on the status chips and
    "10,000 matching"; next and previous walk the server's pages exactly."""
    pages = _page_ids(fleet.client, 3)
    page.goto(fleet.url + "/")
    expect(page.locator(".total")).to_have_attribute("data-total", str(TOTAL))
    expect(page.locator(".total")).to_have_text("10,000 matching")
    for status, n in _counts(fleet.client).items():
        chip = page.locator(f".chip[data-status={status}] .chip-count")
        expect(chip).to_have_text(f"{n:,}")
    expect(page.locator(".chip[data-status=All]")).to_have_attribute("aria-pressed", "true")
    _expect_rows(page, pages[0])

    pager = page.locator(".pager")
    pager.get_by_role("button", name="Next →").click()
    _expect_rows(page, pages[1])
    expect(pager.locator(".page-label")).to_have_text(f"Rows 26{DASH}50 of 10,000 · page 2 of 400")
    pager.get_by_role("button", name="Next →").click()
    _expect_rows(page, pages[2])
    pager.get_by_role("button", name="← Previous").click()
    _expect_rows(page, pages[1])
    pager.get_by_role("button", name="← Previous").click()
    _expect_rows(page, pages[0])
    expect(pager.get_by_role("button", name="← Previous")).to_be_disabled()

    # A selection offers what applies to its rows (the screenshot shows it).
    shown = _shown_ids(page)
    statuses = [fleet.client.get_orchestration_state(iid).runtime_status for iid in shown[:4]]
    for iid in shown[:4]:
        page.get_by_label(f"Select {iid}").check()
    unfinished = sum(not status.is_terminal for status in statuses)
    expect(page.locator(".selected-count")).to_have_text("4 selected")
    expect(page.locator("[data-bulk=terminate]")).to_have_text(f"Terminate {unfinished}")
    expect(page.locator("[data-bulk=purge]")).to_have_text(f"Purge {4 - unfinished}")
    page.mouse.move(0, 0)
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    if os.environ.get("DURARAY_UPDATE_DOCS"):
        page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)

    # A larger page size applies at once, from the first page.
    page.locator("select[name=top]").select_option("100")
    expect(page.locator("table.instances tbody tr")).to_have_count(100)
    expect(pager.locator(".page-label")).to_have_text(f"Rows 1{DASH}100 of 10,000 · page 1 of 100")


def test_filters_are_applied_by_the_server_with_their_totals(fleet: Fleet, page):
    """A tag filter, then a name filter with a status chip, show the server's total and
    rows for exactly that filter (not a filtered page)."""
    client = fleet.client
    page.goto(fleet.url + "/")
    page.locator("input[name=tag]").fill("tenant:acme")
    page.get_by_role("button", name="Apply").click()
    acme = _counts(client, tags={"tenant": "acme"})
    expect(page.locator(".total")).to_have_attribute("data-total", str(sum(acme.values())))
    expect(page.locator(".chip[data-status=Running] .chip-count")).to_have_text(
        f"{acme['Running']:,}"
    )
    _expect_rows(page, _page_ids(client, 1, tags={"tenant": "acme"})[0])
    tags = page.locator("table.instances tbody td.tags").all_inner_texts()
    assert [] == [text for text in tags if text != "tenant:acme"]

    # By name, then only the failed ones (a status chip): the URL keeps both filters.
    page.locator("input[name=tag]").fill("")
    page.locator("input[name=name]").fill("report")
    page.get_by_role("button", name="Apply").click()
    reports = _counts(client, name="report")
    expect(page.locator(".total")).to_have_attribute("data-total", str(sum(reports.values())))
    page.locator(".chip[data-status=Failed]").click()
    expect(page.locator(".total")).to_have_attribute("data-total", str(reports["Failed"]))
    failed = _page_ids(client, 1, name="report", runtime_status=[dr.OrchestrationStatus.FAILED])
    _expect_rows(page, failed[0])
    badges = page.locator("table.instances tbody .badge").all_inner_texts()
    assert len(failed[0]) * ["Failed"] == badges
    assert page.url.endswith("#/instances?status=Failed&name=report")


def test_a_200_way_fan_out_is_grouped_and_fits_a_screen(fleet: Fleet, page, tmp_path):
    """The fan-out's timeline has one row per activity and sub-orchestration name (with
    count and retries), fits well inside a screen, and expands to the 200 calls."""
    page.goto(f"{fleet.url}/#/instances/{fleet.crawl}")
    timeline = page.locator(".timeline")
    fetches = timeline.locator(".tl-group[data-count='200']")
    expect(fetches).to_contain_text("fetch_page")
    expect(fetches).to_contain_text(f"{TIMES}200")
    expect(timeline.locator(".tl-group[data-count='12']")).to_contain_text("crawl_site")
    # The axis, the orchestration, the two groups and the one merge.
    expect(timeline.locator(".tl-row")).to_have_count(5)
    box = timeline.bounding_box()
    assert box is not None and box["height"] < 400, box

    toggle = fetches.get_by_role("button", name="fetch_page", exact=True)
    toggle.click()
    expect(timeline.locator(".tl-children .tl-row")).to_have_count(FAN_OUT)
    expect(timeline.locator(".tl-children .tl-bar[data-kind=retry]")).to_have_count(len(FLAKY))
    expect(toggle).to_have_attribute("aria-expanded", "true")
    timeline.locator(".tl-group .tl-toggle[aria-expanded=true]").click()
    expect(timeline.locator(".tl-children")).to_have_count(0)

    # For the docs: the sub-orchestrations expanded (12 rows), the fan-out grouped.
    timeline.get_by_role("button", name="crawl_site", exact=True).click()
    expect(timeline.locator(".tl-children .tl-row")).to_have_count(SITES)
    page.mouse.move(0, 0)
    clip = _timeline_clip(page)
    page.screenshot(path=str(tmp_path / "timeline.png"), clip=clip, full_page=True)
    if os.environ.get("DURARAY_UPDATE_DOCS"):
        page.screenshot(path=str(DOCS / "dashboard-timeline.png"), clip=clip, full_page=True)


def _timeline_clip(page) -> dict[str, float]:
    """The page from the top to the end of the timeline panel."""
    panel = page.locator("section.panel", has=page.locator(".timeline")).bounding_box()
    assert panel is not None
    return {"x": 0, "y": 0, "width": 1360, "height": panel["y"] + panel["height"] + 16}


def test_an_expanded_group_draws_at_most_500_rows(fleet: Fleet, page):
    """A group of 600 calls expands to its first 500 rows and says how many are left out
    (the timeline modules, driven in the page with a made-up history)."""
    page.goto(fleet.url + "/")
    shown = page.evaluate(
        """async () => {
            const { buildTimeline } = await import("./static/timeline.js");
            const { renderTimeline } = await import("./static/timeline-view.js");
            const t = (s) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
            const events = [{ EventType: "ExecutionStarted", timestamp: t(0), event_id: -1 }];
            for (let i = 0; i < 600; i += 1) {
                events.push({ EventType: "TaskScheduled", timestamp: t(1), event_id: i, name: "work" });
            }
            for (let i = 0; i < 600; i += 1) {
                events.push({ EventType: "TaskCompleted", timestamp: t(2 + (i % 50)), task_scheduled_id: i });
            }
            const model = buildTimeline(events, {});
            const el = renderTimeline(model, { status: "Completed", expanded: new Set(["activity:work"]) });
            return {
                groups: el.querySelectorAll(".tl-group").length,
                rows: el.querySelectorAll(".tl-children .tl-row").length,
                note: el.querySelector(".tl-note").textContent,
            };
        }"""
    )
    expected = {
        "groups": 1,
        "rows": 500,
        "note": "Showing the first 500 of 600 calls; the event table lists them all.",
    }
    assert expected == shown


def test_bulk_terminate_of_a_filtered_set_terminates_exactly_that_set(fleet: Fleet, page):
    """Terminate-all on the tag filter tenant:globex asks with the count and the filter,
    does nothing when cancelled, and when confirmed terminates exactly those 500."""
    client = fleet.client
    before = _counts(client)
    globex = _counts(client, tags={"tenant": "globex"})
    assert 500 == globex["Running"]
    page.goto(f"{fleet.url}/#/instances?tag=tenant:globex")
    expect(page.locator(".total")).to_have_attribute("data-total", "500")
    button = page.locator("[data-matching=terminate]")
    expect(button).to_have_text("Terminate 500…")

    dialog = page.locator("#confirm-dialog")
    button.click()
    expect(dialog).to_contain_text("Terminate all 500 unfinished instances")
    expect(dialog).to_contain_text("tenant:globex")
    dialog.get_by_role("button", name="Cancel").click()
    assert before == _counts(client)

    button.click()
    dialog.get_by_role("button", name="Terminate 500").click()
    expect(page.locator(".notice-success")).to_contain_text("Terminated 500 instances.")
    expect(page.locator(".chip[data-status=Terminated] .chip-count")).to_have_text("500")
    expect(page.locator(".chip[data-status=Running] .chip-count")).to_have_text("0")
    after = _counts(client)
    expected = {**before, "Running": before["Running"] - 500, "Terminated": 500}
    assert expected == after
    assert {"Terminated": 500} == {
        k: v for k, v in _counts(client, tags={"tenant": "globex"}).items() if v
    }
