"""The dashboard in a real headless browser: Debian's Chromium driven by Playwright.

The hub runs in process on a manual clock; the API (with the dashboard) is served by
uvicorn on a loopback port in a background thread. Activities move the manual clock by
how long they "take", so the timeline shows believable durations without any sleeping.

Chromium comes from Debian (``scripts/ensure-browser.sh``, run by ``make test``); a
missing browser fails these tests rather than skipping them, so a CI machine without it
cannot pass quietly.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from browser_support import WAIT_MS, chromium, serve, watched_page
from playwright.sync_api import expect
from structlog.testing import capture_logs

import duraray as dr
from duraray.runtime.http import create_app
from duraray.testing import ManualClock, run_in_process

pytestmark = pytest.mark.browser

app = dr.App("shop")

# The hub's manual clock, for activities that "take time" (set by the ``hub`` fixture).
_clock: dict[str, ManualClock] = {}
_charges: dict[str, int] = {}
_charges_lock = threading.Lock()


def _work(seconds: float) -> None:
    """Advance the hub's clock as if the activity had worked for ``seconds``."""
    _clock["now"].advance(timedelta(seconds=seconds))


@app.entity
class Stock(dr.DurableEntity):
    def add(self, qty: int) -> int:
        self.set_state(self.get_state(int, 0) + qty)
        return self.get_state(int, 0)

    def reserve(self, qty: int) -> int:
        left = self.get_state(int, 0) - qty
        if left < 0:
            raise ValueError("out of stock")
        self.set_state(left)
        return left


@app.activity
def validate_order(ctx: dr.ActivityContext, order: dict) -> bool:
    _work(0.4)
    return True


@app.activity
def charge_card(ctx: dr.ActivityContext, order: dict) -> str:
    with _charges_lock:
        _charges[ctx.instance_id] = attempt = _charges.get(ctx.instance_id, 0) + 1
    _work(1.2)
    if order.get("card") == "declined":
        raise RuntimeError("card declined by issuer (code 51)")
    if attempt == 1 and order.get("flaky_gateway"):
        raise TimeoutError("payment gateway did not answer within 1.2 s")
    return f"rcpt-{order['id']}-{attempt}"


@app.activity
def pack_items(ctx: dr.ActivityContext, order: dict) -> int:
    _work(3.0)
    return order["qty"]


@app.activity
def book_courier(ctx: dr.ActivityContext, order: dict) -> str:
    _work(1.8)
    return f"TRK{order['id']}00"


@app.activity
def send_confirmation(ctx: dr.ActivityContext, order: dict) -> None:
    _work(0.6)


@app.orchestration
def ship_order(ctx: dr.OrchestrationContext, order: dict):
    packed, tracking = yield dr.when_all(
        [ctx.call_activity(pack_items, input=order), ctx.call_activity(book_courier, input=order)]
    )
    yield ctx.create_timer(timedelta(seconds=20))  # the courier's pickup window
    return {"packed": packed, "tracking": tracking}


@app.orchestration
def process_order(ctx: dr.OrchestrationContext, order: dict):
    ctx.set_custom_status({"stage": "validating"})
    yield ctx.call_activity(validate_order, input=order)
    left = yield ctx.call_entity(dr.EntityId("stock", order["sku"]), "reserve", order["qty"])
    ctx.set_custom_status({"stage": "charging card"})
    receipt = yield ctx.call_activity(
        charge_card,
        input=order,
        retry_policy=dr.RetryPolicy(
            first_retry_interval=timedelta(seconds=5),
            max_number_of_attempts=3,
            backoff_coefficient=2,
        ),
    )
    ctx.set_custom_status({"stage": "awaiting approval", "receipt": receipt})
    approval = yield ctx.wait_for_external_event("approval")
    ctx.set_custom_status({"stage": "shipping", "receipt": receipt})
    shipment = yield ctx.call_sub_orchestrator(ship_order, input=order)
    yield ctx.call_activity(send_confirmation, input=order)
    ctx.set_custom_status({"stage": "done", "stock_left": left})
    return {
        "order": order["id"],
        "receipt": receipt,
        "tracking": shipment["tracking"],
        "approved_by": approval["by"],
    }


@app.orchestration
def restock(ctx: dr.OrchestrationContext, sku: str):
    # Holds the item's lock until the delivery arrives, so nobody reserves it meanwhile.
    with (yield ctx.lock_entities([dr.EntityId("stock", sku)])):
        delivered = yield ctx.wait_for_external_event("delivery")
        yield ctx.call_entity(dr.EntityId("stock", sku), "add", delivered)
    return delivered


# Released by the test that makes ``quote_price`` block its partition.
_pricing_answered = threading.Event()


def call_pricing_service() -> None:
    _pricing_answered.wait(timeout=30)  # a blocking call in orchestrator code


@app.orchestration
def quote_price(ctx: dr.OrchestrationContext, sku: str):
    if not ctx.is_replaying:
        call_pricing_service()
    return {"sku": sku, "price": 12}


def _order(number: int, **extra: object) -> dict:
    return {"id": number, "sku": "sku-42", "qty": 2, **extra}


@dataclass
class Hub:
    """The in-process hub under test: its client, its clock and the dashboard's URL."""

    client: dr.Client
    clock: ManualClock
    url: str


@contextlib.contextmanager
def _running_hub(token: str | None = None, **options: object) -> Iterator[Hub]:
    clock = ManualClock(datetime(2026, 3, 2, 9, 30, tzinfo=UTC), auto_advance=True)
    _clock["now"] = clock
    _charges.clear()
    with run_in_process(app, clock=clock, **options) as client:
        # As `duraray serve` builds it on loopback: Origin and Host checked (same-origin page).
        api = create_app(client, token=token, bind_host="127.0.0.1")
        with serve(api) as url:
            yield Hub(client, clock, url)


@pytest.fixture
def hub() -> Iterator[Hub]:
    """The shop app in process (auto-advancing manual clock), its API served over HTTP."""
    with _running_hub() as running:
        yield running


@pytest.fixture
def watched_hub() -> Iterator[Hub]:
    """The same, reporting orchestrator episodes that run longer than 0.2 s."""
    _pricing_answered.clear()
    try:
        with _running_hub(blocking_episode_warning_s=0.2) as running:
            yield running
    finally:
        _pricing_answered.set()


@pytest.fixture
def secured_hub() -> Iterator[Hub]:
    """The same, with the API requiring the bearer token "s3cret"."""
    with _running_hub(token="s3cret") as running:
        yield running


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    """Debian's Chromium with a new, empty profile directory; fails if it is missing."""
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(browser_context):
    """A new tab; the test fails on any uncaught script error or console error."""
    with watched_page(browser_context) as tab:
        yield tab


def _seed(hub: Hub) -> str:
    """A few instances in different states; returns the id of the one awaiting approval.

    Each step waits for the hub to go idle before the next, so the instances never share
    the clock while running and the committed screenshot is the same on every run.
    """
    client = hub.client

    def settle() -> None:
        assert client.hub_runtime.wait_idle(timeout=10)

    client.signal_entity(dr.EntityId("stock", "sku-42"), "add", 40)
    client.signal_entity(dr.EntityId("stock", "sku-7"), "add", 3)
    settle()

    done = client.schedule_new_orchestration(
        process_order, input=_order(1001), instance_id="order-1001"
    )
    client.raise_orchestration_event(done, "approval", data={"by": "ana@shop.example"})
    client.wait_for_orchestration_completion(done, timeout=10).raise_if_failed()
    settle()

    declined = client.schedule_new_orchestration(
        process_order, input=_order(1002, card="declined"), instance_id="order-1002"
    )
    assert dr.OrchestrationStatus.FAILED == (
        client.wait_for_orchestration_completion(declined, timeout=10).runtime_status
    )
    settle()

    cancelled = client.schedule_new_orchestration(
        process_order, input=_order(1003), instance_id="order-1003"
    )
    settle()
    client.schedule_new_orchestration(restock, input="sku-7", instance_id="restock-sku-7")
    settle()
    waiting = client.schedule_new_orchestration(
        process_order, input=_order(1004, flaky_gateway=True), instance_id="order-1004"
    )
    settle()
    paused = client.schedule_new_orchestration(
        process_order, input=_order(1005), instance_id="order-1005"
    )
    settle()
    client.terminate_orchestration(cancelled, output="customer cancelled")
    client.suspend_orchestration(paused, reason="fraud review")
    settle()
    # The approver takes a while: the wait shows on the timeline.
    hub.clock.advance(timedelta(seconds=40))
    return waiting


def test_raise_event_from_instance_page_completes_the_orchestration(hub: Hub, page, tmp_path):
    """An operator finds a waiting instance, raises its event from the page and sees it complete."""
    waiting = _seed(hub)

    # The list, filtered to running orders: the waiting instance is there, finished ones not.
    # (Refreshing every 2 s: the completion below is seen by auto-refresh.)
    page.goto(hub.url + "/")
    page.locator("#refresh-every").select_option("2000")
    expect(page.locator("table.instances")).to_be_visible()
    page.locator(".chip[data-status=Running]").click()
    expect(page.locator(".chip[data-status=Running]")).to_have_attribute("aria-pressed", "true")
    page.locator("input[name=prefix]").fill("order-")
    page.get_by_role("button", name="Apply").click()
    row = page.locator(f"tr[data-instance-id='{waiting}']")
    expect(row.locator(".badge")).to_have_text("Running")
    expect(page.locator("tr[data-instance-id='order-1001']")).to_have_count(0)

    # Its page: status, custom status and a timeline with the activity, entity call and retry.
    row.get_by_role("link", name=waiting).click()
    expect(page.locator("h1")).to_have_text(waiting)
    expect(page.locator(".status-slot .badge")).to_have_text("Running")
    expect(page.locator("[data-panel=custom-status]")).to_contain_text("awaiting approval")
    expect(page.locator(".tl-bar[data-kind=retry]")).to_have_count(1)
    expect(page.locator(".tl-bar[data-kind=activity][data-outcome=failed]")).to_have_count(1)
    expect(page.locator(".tl-bar[data-kind=entity]")).to_have_count(1)

    # Raise the event from the form, confirming in the dialog.
    page.get_by_role("button", name="Raise event…").click()
    page.get_by_label("Event name").fill("approval")
    page.get_by_label("Data (JSON, optional)").fill('{"by": "lee@shop.example", "approved": true}')
    page.get_by_role("button", name="Send event").click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("approval")
    dialog.get_by_role("button", name="Raise event").click()

    # Auto-refresh picks up the completion.
    expect(page.locator(".status-slot .badge")).to_have_text("Completed")
    output = page.locator("[data-panel=output]")
    expect(output).to_contain_text("lee@shop.example")
    expect(output).to_contain_text("TRK100400")
    expect(
        page.locator(".tl-bar[data-kind=suborchestration][data-outcome=completed]")
    ).to_have_count(1)
    expect(page.locator("table.history")).to_contain_text("EventRaised")
    assert "COMPLETED" == hub.client.get_orchestration_state(waiting).runtime_status.value
    page.screenshot(path=str(tmp_path / "instance.png"), full_page=True)

    # A failed instance: its failure and all three attempts with the delays between them.
    page.goto(f"{hub.url}/#/instances/order-1002")
    expect(page.locator(".panel-failure")).to_contain_text("card declined by issuer")
    expect(page.locator(".tl-bar[data-kind=retry]")).to_have_count(2)
    expect(page.locator(".tl-bar[data-kind=activity][data-outcome=failed]")).to_have_count(3)
    expect(page.get_by_role("button", name="Rewind")).to_be_enabled()
    page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)

    # Entities: the stock entity that restock holds the lock of.
    page.get_by_role("link", name="Entities").click()
    locked = page.locator("table.entities tr", has_text="sku-7")
    expect(locked.locator("a.lock")).to_have_text("restock-sku-7")
    page.screenshot(path=str(tmp_path / "entities.png"), full_page=True)

    # Partitions: one row per partition with its counters.
    page.get_by_role("link", name="Partitions").click()
    expect(page.locator("table.partitions tbody tr")).to_have_count(
        hub.client.hub_runtime.partition_count
    )
    page.screenshot(path=str(tmp_path / "partitions.png"), full_page=True)

    # The list as an operator first sees it: newest first, the totals by status.
    page.get_by_role("link", name="Instances").click()
    expect(page.locator(f"tr[data-instance-id='{waiting}'] .badge")).to_have_text("Completed")
    total = sum(hub.client.count_instances().values())
    expect(page.locator(".total")).to_have_attribute("data-total", str(total))
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)


def test_page_asks_for_the_token_once_and_sends_it(secured_hub: Hub, page):
    """With a token-protected API the page asks for the token, then loads with it."""
    secured_hub.client.schedule_new_orchestration(
        restock, input="sku-9", instance_id="restock-sku-9"
    )

    page.goto(secured_hub.url + "/")
    token_dialog = page.locator("#token-dialog")
    expect(token_dialog).to_be_visible()
    token_dialog.get_by_label("Token").fill("s3cret")
    token_dialog.get_by_role("button", name="Use token").click()

    expect(page.locator("tr[data-instance-id='restock-sku-9']")).to_be_visible()
    expect(token_dialog).to_be_hidden()
    assert "s3cret" == page.evaluate("sessionStorage.getItem('duraray.token')")


def test_refused_action_shows_the_api_error_and_purge_returns_to_the_list(hub: Hub, page):
    """An action the instance's state forbids shows the API's 410; purge removes the instance."""
    instance = hub.client.schedule_new_orchestration(
        restock, input="sku-3", instance_id="restock-sku-3"
    )
    assert hub.client.hub_runtime.wait_idle(timeout=10)
    page.goto(f"{hub.url}/#/instances/{instance}")
    expect(page.locator(".status-slot .badge")).to_have_text("Running")

    # Terminated behind the page's back (auto-refresh off, so the page still offers Suspend).
    page.get_by_label("Auto-refresh").uncheck()
    hub.client.terminate_orchestration(instance, output="replaced")
    hub.client.wait_for_orchestration_completion(instance, timeout=10)
    page.get_by_role("button", name="Suspend").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Suspend").click()
    expect(page.locator(".notice-error")).to_contain_text("410")

    # Refreshed by the failed action, the page shows the new state; purge it from there.
    expect(page.locator(".status-slot .badge")).to_have_text("Terminated")
    page.get_by_role("button", name="Purge").click()
    page.locator("#confirm-dialog").get_by_role("button", name="Purge").click()
    expect(page.locator("h1")).to_have_text("Instances")
    expect(page.locator(".empty")).to_contain_text("No instances match")
    assert hub.client.get_orchestration_state(instance) is None


def _statuses(client: dr.Client, ids: list[str]) -> list[str | None]:
    states = [client.get_orchestration_state(iid) for iid in ids]
    return [None if s is None else s.runtime_status.value for s in states]


def test_bulk_actions_on_a_selection_confirm_the_count_and_report_failures(hub: Hub, page):
    """Selected rows are suspended, then (select all on the page) the unfinished ones
    terminated and the finished ones purged, each after a dialog naming how many; a
    refusal by the API is reported per instance. Tags show as text."""
    client = hub.client
    running = [f"restock-sku-{n}" for n in (1, 2, 3)]
    markup = "<img src=x onerror=alert(1)>"
    for iid in running:
        client.schedule_new_orchestration(
            restock, input=iid[8:], instance_id=iid, tags={"note": markup}
        )
    done = ["ship-1", "ship-2"]
    for number, iid in enumerate(done):
        client.schedule_new_orchestration(ship_order, input=_order(number), instance_id=iid)
        client.wait_for_orchestration_completion(iid, timeout=10).raise_if_failed()
    assert client.hub_runtime.wait_idle(timeout=10)
    page.goto(hub.url + "/")
    page.get_by_label("Auto-refresh").uncheck()
    dialog = page.locator("#confirm-dialog")
    # A tag is shown as text, never as markup.
    expect(page.locator("tr[data-instance-id='restock-sku-1'] .tag")).to_have_text(f"note:{markup}")
    expect(page.locator("table.instances img")).to_have_count(0)

    # Two running rows: suspend them.
    page.get_by_label("Select restock-sku-1").check()
    page.get_by_label("Select restock-sku-2").check()
    expect(page.locator(".selected-count")).to_have_text("2 selected")
    expect(page.locator("[data-bulk=resume]")).to_be_disabled()
    page.locator("[data-bulk=suspend]").click()
    expect(dialog).to_contain_text("Suspend 2 instances?")
    dialog.get_by_role("button", name="Suspend 2").click()
    expect(page.locator(".notice-success").last).to_contain_text("Suspended 2 instances.")
    assert ["SUSPENDED", "SUSPENDED", "RUNNING"] == _statuses(client, running)

    # Everything on the page: terminate applies to the three unfinished ones only.
    page.get_by_label("Select all on this page").check()
    expect(page.locator(".selected-count")).to_have_text("5 selected")
    page.locator("[data-bulk=terminate]").click()
    expect(dialog).to_contain_text(
        "Terminate 3 instances? 2 of the 5 selected are already finished and left out."
    )
    dialog.get_by_role("button", name="Terminate 3").click()
    expect(page.locator(".notice-success").last).to_contain_text("Terminated 3 instances.")
    assert 3 * ["TERMINATED"] == _statuses(client, running)

    # What succeeded left the selection: the two finished ones remain; purge them.
    expect(page.locator(".selected-count")).to_have_text("2 selected")
    page.locator("[data-bulk=purge]").click()
    expect(dialog).to_contain_text("Purge 2 instances?")
    dialog.get_by_role("button", name="Purge 2").click()
    expect(page.locator(".notice-success").last).to_contain_text("Purged 2 instances.")
    assert [None, None] == _statuses(client, done)
    expect(page.locator("table.instances tbody tr")).to_have_count(3)

    # Purged behind the page's back: the API's 404 is reported for that instance.
    page.get_by_label("Select restock-sku-3").check()
    client.purge_orchestration("restock-sku-3")
    page.locator("[data-bulk=purge]").click()
    dialog.get_by_role("button", name="Purge 1").click()
    expect(page.locator(".notice-error")).to_contain_text(
        "Purged 0 of 1; 1 failed: restock-sku-3 (404"
    )
    expect(page.locator(".selected-count")).to_have_text("1 selected")


def test_a_page_of_another_site_cannot_drive_the_hub(hub: Hub, page):
    """A foreign page's fetches to the loopback hub are refused: the instance keeps running.

    The page is served as https://evil.example (Playwright answers for it); its no-cors
    POSTs (text/plain, no preflight) carry ``Origin: https://evil.example``. Chromium itself
    asks before a public page reaches loopback (Local Network Access); the permission is
    granted here, as a user may click it away or another browser not ask at all.
    """
    victim = hub.client.schedule_new_orchestration(restock, input="sku-9", instance_id="victim")
    assert hub.client.hub_runtime.wait_idle(timeout=10)
    page.context.grant_permissions(["local-network-access"], origin="https://evil.example")
    page.route(
        "https://evil.example/**",
        lambda route: route.fulfill(content_type="text/html", body="<h1>cute cats</h1>"),
    )
    page.goto("https://evil.example/")
    page.evaluate(
        """async (api) => {
            const post = (path) => fetch(api + path, {
                method: "POST", mode: "no-cors",
                headers: {"Content-Type": "text/plain"}, body: '"pwned"'});
            await post("/api/instances/victim/terminate");
            await post("/api/instances/victim/raiseEvent/delivery");
            await post("/api/orchestrations/restock?instance_id=intruder");
        }""",
        hub.url,
    )
    page.context.clear_permissions()
    state = hub.client.get_orchestration_state(victim)
    assert state is not None
    expected = (dr.OrchestrationStatus.RUNNING, None)
    assert expected == (state.runtime_status, hub.client.get_orchestration_state("intruder"))


def test_instance_page_shows_the_episode_that_blocked_its_partition(
    watched_hub: Hub, page, tmp_path
):
    """An orchestrator that blocked its partition's thread: its page says for how long and
    shows the stack the watchdog took while it blocked."""
    client = watched_hub.client
    with capture_logs() as logs:
        starter = threading.Thread(
            target=client.schedule_new_orchestration,
            args=("quote_price",),
            kwargs={"input": "sku-42", "instance_id": "quote-1"},
        )
        starter.start()
        deadline = time.monotonic() + WAIT_MS / 1000
        while not any(e["event"].startswith("orchestrator episode") for e in list(logs)):
            assert time.monotonic() < deadline, "the blocking episode was not reported"
            time.sleep(0.01)
        _pricing_answered.set()
        starter.join(timeout=10)
    client.wait_for_orchestration_completion("quote-1", timeout=10).raise_if_failed()

    page.goto(f"{watched_hub.url}/#/instances/quote-1")
    expect(page.locator(".status-slot .badge")).to_have_text("Completed")
    panel = page.locator("[data-panel=blocking]")
    expect(panel.locator("h2")).to_have_text("Blocking episode")
    expect(panel).to_contain_text("on partition")
    expect(panel.locator("pre")).to_contain_text("in call_pricing_service")
    expect(panel.locator("pre")).to_contain_text("_pricing_answered.wait(timeout=30)")

    page.screenshot(path=str(tmp_path / "blocking.png"), full_page=True)

    # An instance that never blocked has no such panel.
    done = client.schedule_new_orchestration(ship_order, input=_order(7), instance_id="ship-7")
    client.wait_for_orchestration_completion(done, timeout=10).raise_if_failed()
    page.goto(f"{watched_hub.url}/#/instances/ship-7")
    expect(page.locator(".status-slot .badge")).to_have_text("Completed")
    expect(page.locator("[data-panel=blocking]")).to_have_count(0)
