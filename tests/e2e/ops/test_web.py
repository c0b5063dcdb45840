"""``saga-web`` in a real headless browser (Debian's ``chromium`` driven by Selenium through
Debian's ``chromium-driver``, both installed by ``./run test``), against the running system of
each topology: the list shows a new order without a reload, an order's page shows its events in
order with its compensation, a dead letter is marked, and the flow is drawn from what ran.

``SAGA_WEB_SCREENSHOTS=docs`` writes the screenshots docs/observability.md shows."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from shared.jetstream import MSG_ID_HEADER
from shared.ops import client
from shared.ops.harness import System
from tests.conftest import unique
from tests.e2e.conftest import new_customer, new_sku

WAIT_S = 30


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Debian's chromium and chromium-driver are not installed: ./run test installs them with apt-get")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    browser = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def web(system: System) -> str:
    return system.web_url if system.web and system.web.proc and system.web.proc.poll() is None else system.start_web()


def shoot(browser: webdriver.Chrome, name: str, tmp_path: Path, topology: str) -> None:
    """A screenshot of the whole page, into ``SAGA_WEB_SCREENSHOTS`` (unpartitioned only) or the test's dir."""
    target = os.environ.get("SAGA_WEB_SCREENSHOTS")
    directory = Path(target) if target and topology == "one_partition" else tmp_path
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(600, min(int(height) + 40, 1800)))
    assert browser.save_screenshot(str(directory / f"saga-web-{name}.png"))
    browser.set_window_size(1400, 1000)


def waiting(browser: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    """Polls until its condition holds or WAIT_S; a live row replaced mid-read is read again."""
    return WebDriverWait(browser, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])


def rows(browser: webdriver.Chrome) -> list[tuple[str, str]]:
    return [
        (tr.get_attribute("data-type") or "", tr.get_attribute("data-kind") or "")
        for tr in browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")
    ]


async def test_the_list_goes_live_and_an_orders_page_shows_its_saga_and_compensation(
    system: System, web: str, nc: Client, browser: webdriver.Chrome, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    topology = request.node.callspec.id
    wait = waiting(browser)
    browser.get(web)
    wait.until(lambda b: b.find_element(By.ID, "live").text == "live")

    # Placed while the page is open: it appears, then settles, with no reload.
    customer, sku = await new_customer(nc, 10_000), await new_sku(nc, 1)
    order_id = unique("web")
    browser.execute_script("window.notReloaded = true")
    await client.place_order(nc.jetstream(), order_id, customer, [{"sku": sku, "quantity": 2, "unit_price_cents": 300}])
    row = f"#orders tr[data-order-id='{order_id}']"
    wait.until(lambda b: b.find_element(By.CSS_SELECTOR, f"{row} td.status").text == "CANCELLED")
    assert browser.execute_script("return window.notReloaded") is True, "the page was reloaded"
    first = browser.find_element(By.CSS_SELECTOR, "#orders tr:not([hidden])")
    assert first.get_attribute("data-order-id") == order_id, "newest first"
    assert "out_of_stock" in browser.find_element(By.CSS_SELECTOR, row).text

    # The status filter hides and shows it.
    status = Select(browser.find_element(By.ID, "status"))
    status.select_by_value("CONFIRMED")
    assert not browser.find_element(By.CSS_SELECTOR, row).is_displayed()
    status.select_by_value("CANCELLED")
    assert browser.find_element(By.CSS_SELECTOR, row).is_displayed()
    status.select_by_value("")
    shoot(browser, "orders", tmp_path, topology)

    # Its page: the saga in the order it ran, the failure and the refund marked.
    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    wait.until(lambda b: "payments.refunded" in [t for t, _ in rows(b)])
    events = rows(browser)
    saga = [t for t, _ in events if t.partition(".")[0] in ("orders", "payments", "inventory")]
    assert saga == [
        "orders.requested",
        "orders.created",
        "payments.completed",
        "inventory.failed",
        "orders.cancelled",
        "payments.refunded",
    ], events
    kinds = dict(events)
    assert kinds["inventory.failed"] == "failure"
    assert kinds["orders.cancelled"] == kinds["payments.refunded"] == "compensation"

    def cause_of(event_type: str) -> str:
        cell = f"#timeline tr.event[data-type='{event_type}'] td:nth-child(5)"
        return str(browser.find_element(By.CSS_SELECTOR, cell).text)

    # The refund's cause is the cancel. Partitioned, it is the release order_svc sent with the
    # cancel, caused like the cancel by what order_svc was handling: the inventory.failed.
    refund_cause = cause_of("payments.refunded").removeprefix("↖ ")
    if refund_cause == "payment_svc.release_requested":
        assert cause_of(refund_cause).removeprefix("↖ ") == cause_of("orders.cancelled").removeprefix("↖ ")
        assert cause_of("orders.cancelled").removeprefix("↖ ") == "inventory.failed", events
    else:
        assert refund_cause == "orders.cancelled", events
    assert browser.find_element(By.ID, "order-status").text == "CANCELLED"
    held = {tr.get_attribute("data-service"): tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "#held tr.held")}
    assert '"status": "CANCELLED"' in held["order_svc"]
    assert '"status": "RELEASED"' in held["payment_svc"], held  # the held charge given back
    failing = browser.find_elements(By.CSS_SELECTOR, "svg.flow g.edge.failing")
    assert len(failing) >= 2, "the failure and its compensations are drawn red"
    shoot(browser, "order", tmp_path, topology)


async def test_a_dead_letter_is_marked_and_the_flow_counts_what_ran(
    system: System, web: str, nc: Client, browser: webdriver.Chrome, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    topology = request.node.callspec.id
    wait = waiting(browser)
    customer, sku = await new_customer(nc, 10_000), await new_sku(nc, 5)
    good = unique("web-ok")
    await client.place_order(nc.jetstream(), good, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 300}])
    short = unique("web-short")
    await client.place_order(nc.jetstream(), short, customer, [{"sku": sku, "quantity": 9, "unit_price_cents": 300}])
    assert (await client.wait_until_terminal(nc, good))["status"] == "CONFIRMED"
    assert (await client.wait_until_terminal(nc, short))["reason"] == "out_of_stock"
    bad = unique("web-bad")  # what `nats pub orders.requested.<id> 'not json'` sends
    await nc.jetstream().publish(f"orders.requested.{bad}", b"not json", headers={MSG_ID_HEADER: unique("evt")})

    def reloaded(b: webdriver.Chrome) -> webdriver.Chrome:
        b.refresh()  # these pages are drawn by the server, once
        return b

    empty = unique("web-empty")  # a request whose data is invalid: no items
    subject, payload, event_id = client.order_request(empty, customer, [])
    await nc.jetstream().publish(subject, payload, headers={MSG_ID_HEADER: event_id})

    browser.get(f"{web}orders/{bad}")
    wait.until(lambda b: ("orders.requested", "dead_letter") in rows(reloaded(b)))
    note = browser.find_element(By.CSS_SELECTOR, "#timeline tr.dead_letter").text
    assert "order_svc" in note and "invalid_json" in note, note
    browser.get(f"{web}orders/{empty}")
    wait.until(lambda b: ("orders.requested", "dead_letter") in rows(reloaded(b)))
    assert ("orders.requested", "request") in rows(browser), "the request as stored, and its dead letter"
    assert "invalid_data" in browser.find_element(By.CSS_SELECTOR, "#timeline tr.dead_letter").text

    # A refused request is no order: the list holds only what order_svc holds.
    browser.get(f"{web}api/orders")
    listed = {order["order_id"] for order in json.loads(browser.find_element(By.TAG_NAME, "body").text)}
    assert good in listed and short in listed and empty not in listed and bad not in listed

    def edge(b: webdriver.Chrome, source: str, target: str) -> str | None:
        found = b.find_elements(By.CSS_SELECTOR, f"svg.flow g.edge[data-source='{source}'][data-target='{target}']")
        return found[0].text if found else None

    browser.get(f"{web}flow")
    wait.until(lambda b: reloaded(b).find_elements(By.CSS_SELECTOR, "g.node[data-node='dead letter']"))
    for source, target in [("orders.requested", "orders.created"), ("inventory.reserved", "orders.confirmed")]:
        count = edge(browser, source, target)
        assert count is not None and int(count) >= 1, (source, target)
    assert "failing" in (
        browser.find_element(By.CSS_SELECTOR, "g.edge[data-target='orders.cancelled']").get_attribute("class") or ""
    )
    outcomes = browser.find_element(By.ID, "outcomes").text
    assert "CONFIRMED" in outcomes and "CANCELLED" in outcomes
    shoot(browser, "flow", tmp_path, topology)
