"""A shopper in a real browser: the demo storefront, the service under gunicorn, the
simulator's hosted checkout page, and back to the storefront, which polls the order until
it is final. Headless Chromium, driven by Playwright, waiting on what the page shows."""

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import expect

import simulator as simulator_package
import storefront
from browser import chromium, snap
from conftest import Simulator, free_port, gunicorn
from support import WEBHOOK_PATH, WEBHOOK_SECRET, serving

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # as `make dev` runs it


@dataclass
class Shop:
    url: str  # the storefront
    service: str
    simulator: Simulator


@pytest.fixture(scope="module")
def shop(database_url, tmp_path_factory):
    """The storefront, the service under gunicorn sending shoppers back to it, and a simulator
    delivering its webhooks to the service."""
    port = free_port()
    service_url = f"http://127.0.0.1:{port}"
    with (
        serving(simulator_package.create_app({"WEBHOOK_SECRET": WEBHOOK_SECRET})) as simulator_url,
        serving(storefront.create_app(service_url)) as shop_url,
    ):
        log = tmp_path_factory.mktemp("browser") / "gunicorn.log"
        urls = {"PUBLIC_BASE_URL": service_url, "APP_URL": shop_url, "CORS_ORIGINS": shop_url}
        with gunicorn(database_url, simulator_url, log, port=port, **urls) as service:
            simulator = Simulator(simulator_url)
            simulator.configure(webhook_url=f"{service.url}{WEBHOOK_PATH}")
            yield Shop(shop_url, service.url, simulator)


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 720})
    yield context.new_page()
    context.close()


def check_out(page, shop: Shop) -> None:
    """Two bundles and a gift wrap in the cart, checked out: the hosted page shows them."""
    page.goto(shop.url)
    for product in ("starter-bundle", "starter-bundle", "gift-wrap"):
        page.locator(f'.product[data-product="{product}"] button').click()
    expect(page.locator("#cart-lines .line")).to_have_text(["2 × Starter bundle", "1 × Gift wrap"])
    expect(page.locator("#cart-total")).to_have_text("SLE 51.50")
    snap(page, "storefront")
    page.get_by_role("button", name="Check out").click()
    expect(page).to_have_url(re.compile(re.escape(f"{shop.simulator.url}/checkout/scs-")))
    expect(page.locator("h1")).to_have_text("Salone Goods · 3 items")
    expect(page.locator("tr.total")).to_contain_text("SLE 51.50")


def the_order(page, shop: Shop) -> dict:
    order_id = parse_qs(urlsplit(page.url).query)["orderId"][0]
    return requests.get(f"{shop.service}/api/orders/{order_id}", timeout=10).json()


def test_a_shopper_pays_in_the_browser_and_sees_the_order_completed(page, shop):
    check_out(page, shop)
    page.get_by_label("Africell Money").check()
    snap(page, "hosted-checkout")

    page.get_by_role("button", name="Pay SLE 51.50").click()

    expect(page).to_have_url(re.compile(re.escape(f"{shop.url}/checkout/success?orderId=ord_")))
    expect(page.locator("#heading")).to_have_text("Thank you for your order")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#order-total")).to_have_text("SLE 51.50")
    order = the_order(page, shop)
    assert order["status"] == "completed"
    deliveries = [d for d in shop.simulator.deliveries() if d["sessionId"] == order["checkoutSessionId"]]
    assert [(d["eventName"], d["status"]) for d in deliveries] == [("checkout_session.completed", 200)]
    page.get_by_role("link", name="Back to the shop").click()
    expect(page.locator("#cart-total")).to_have_text("SLE 0.00")  # paid: the cart is emptied


def test_a_shopper_cancels_in_the_browser_and_sees_the_order_cancelled(page, shop):
    check_out(page, shop)

    page.get_by_role("button", name="Cancel").click()

    expect(page).to_have_url(re.compile(re.escape(f"{shop.url}/checkout/cancelled?orderId=ord_")))
    expect(page.locator("#heading")).to_have_text("Payment cancelled")
    expect(page.locator("#status")).to_have_text("cancelled")
    assert the_order(page, shop)["status"] == "cancelled"
    page.get_by_role("link", name="Back to the shop").click()
    expect(page.locator("#cart-total")).to_have_text("SLE 51.50")  # not paid: the cart is kept
