"""The operator page in a real browser (Debian's Chromium driven by Playwright, as the shopper's
tests): the service under gunicorn with ADMIN_TOKEN, its notifications going to a real receiver.
An operator signs in, finds an order by its id, reads its timeline, resolves a held order from
the review queue and sees its status and audit line change, and redelivers a dead notification.
With SCREENSHOTS=1 each page is saved as docs/admin-*.png (the README's pictures)."""

import random
import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect
from sqlalchemy import insert
from test_admin import TOKEN, bulk_event, bulk_order, stored
from test_notifications import notify_settings, receiver  # noqa: F401  (the receiver fixture)

import notifications
import orders
from browser import chromium, snap
from conftest import gunicorn, make_app, service_settings
from models import Notification, NotificationStatus, Order, Outcome, Status, WebhookEvent, db, utcnow
from support import order_payload, wait_for

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # as `make dev` runs it


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def seed(database_url: str, simulator_url: str) -> dict:
    """A month of orders and two days of webhook events for the charts; an order held for an
    amount mismatch; a completed order with its session and event; an order whose notification
    died (NOTIFY_URL answered nothing within NOTIFY_RETRY_FOR). Returns their ids."""
    dead_end = notify_settings("http://127.0.0.1:9/", NOTIFY_RETRY_FOR="0.001", NOTIFY_RELAY="0")
    service = make_app(service_settings(database_url, simulator_url) | dead_end)
    pick = random.Random(14)
    with service.app_context():
        now = utcnow()
        history = [
            bulk_order(f"ord_{n:04d}", now - timedelta(days=pick.uniform(1, 29)), pick.choice(list(Status)))
            for n in range(400)
        ]
        db.session.execute(insert(Order.__table__), history)
        outcomes = [Outcome.APPLIED] * 12 + [Outcome.UNCHANGED] * 4 + [Outcome.HELD, Outcome.UNMATCHED]
        events = [
            bulk_event(f"evt-bulk-{n}", now - timedelta(hours=pick.uniform(0, 47)), pick.choice(outcomes))
            for n in range(300)
        ]
        unreachable = "Monime could not be asked to confirm the payment: no answer within 3 s"
        events += [
            bulk_event(f"evt-failed-{n}", now - timedelta(hours=n * 7 + 1), Outcome.FAILED, detail=unreachable)
            for n in range(3)
        ]
        db.session.execute(insert(WebhookEvent.__table__), events)
        ids = {}
        for name in ("held", "paid", "unlucky"):
            order = orders.place(order_payload(f"ord_{name}_{pick.getrandbits(32):08x}") | {"description": None})
            orders.record_session(order, f"scs-{order.id}", None)
            ids[name] = order.id
        mismatch = "amount mismatch: Monime reports SLE 100.00, the order is SLE 51.50"
        body = f'{{"event": {{"id": "evt-{ids["held"]}", "name": "checkout_session.completed"}}, "data": {{"…": "…"}}}}'
        db.session.execute(
            insert(WebhookEvent.__table__),
            [bulk_event(f"evt-{ids['held']}", utcnow(), Outcome.HELD, session_id=f"scs-{ids['held']}",
                        order_id=ids["held"], body=body, detail=mismatch)],
        )  # fmt: skip
        orders.hold(orders.lookup(ids["held"]), mismatch, f"evt-{ids['held']}")
        orders.hold(orders.lookup(ids["unlucky"]), "possible double payment: session scs-2 completed after scs-1", None)
        db.session.commit()
        wait_for(lambda: utcnow() > now + timedelta(seconds=0.01), 5, "NOTIFY_RETRY_FOR to pass")
        notifications.drain(notifications.new_http_session())  # each notification's one attempt fails: dead
        db.session.commit()
    return ids


@pytest.fixture
def operator(app, database_url, simulator, receiver, tmp_path):  # noqa: F811
    """The service under gunicorn with ADMIN_TOKEN, notifying `receiver`, over `seed`'s data."""
    ids = seed(database_url, simulator.url)
    settings = notify_settings(receiver.url) | {"ADMIN_TOKEN": TOKEN}
    with gunicorn(database_url, simulator.url, tmp_path / "gunicorn.log", **settings) as server:
        yield server.url, ids


def signed_in_page(browser, url: str, width: int = 1100, height: int = 760):
    """A new browser context signed in at /admin/ (through the sign-in page); every console error
    (a Content-Security-Policy violation is one) is kept in page.errors."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.goto(f"{url}/admin/")
    expect(page).to_have_url(re.compile(re.escape(f"{url}/admin/sign-in?next=/admin/")))
    snap(page, "admin-sign-in")
    page.get_by_label("Admin token (ADMIN_TOKEN)").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{url}/admin/")
    return context, page


def test_an_operator_finds_an_order_reads_its_timeline_and_resolves_it_from_the_queue(browser, operator):
    url, ids = operator
    context, page = signed_in_page(browser, url)
    expect(page.locator(".counts")).to_contain_text("2 held for review")
    expect(page.locator(".counts")).to_contain_text("3 failed webhook events")
    expect(page.locator("figure.chart svg rect").first).to_be_visible()
    snap(page, "admin-glance")

    page.get_by_role("link", name="Orders", exact=True).click()
    page.get_by_label("Order id, session id or Monime order number").fill(ids["held"])
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.list tbody tr")).to_have_count(1)
    snap(page, "admin-orders")
    page.get_by_role("link", name=ids["held"]).click()
    expect(page.locator("#status")).to_have_text("pending")
    expect(page.locator("#review")).to_contain_text("amount mismatch")
    expect(page.locator("#amount")).to_have_text("SLE 51.50")
    expect(page.locator(".timeline li .kind")).to_have_text(["order", "session", "event", "notification"])
    page.locator(".timeline li.k-event summary").click()  # the raw body
    expect(page.locator(".timeline li.k-event pre")).to_contain_text(f'"id": "evt-{ids["held"]}"')
    snap(page, "admin-order")

    page.get_by_role("link", name="Review").click()
    held = page.locator(f"#held-{ids['held']}")
    held.get_by_label("Note (why; kept in the audit)").fill("Bank statement shows SLE 51.50 received")
    snap(page, "admin-review")
    held.get_by_role("button", name="Complete (paid)").click()
    expect(page.locator(".flash.ok")).to_have_text(f"Order {ids['held']} resolved (complete): now completed.")
    expect(page.locator(f"#held-{ids['held']}")).to_have_count(0)
    expect(page.locator(f"#held-{ids['unlucky']}")).to_have_count(1)

    page.goto(f"{url}/admin/orders/{ids['held']}")
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#review")).to_have_text("no")
    audit = page.locator(".timeline li.k-resolution")
    expect(audit).to_contain_text("Resolved: complete by admin via admin")
    expect(audit).to_contain_text("Bank statement shows SLE 51.50 received")
    assert page.errors == []  # nothing the page uses was refused by its Content-Security-Policy
    context.close()


def test_an_operator_redelivers_a_dead_notification(browser, operator, receiver, app):  # noqa: F811
    url, ids = operator
    context, page = signed_in_page(browser, url)
    page.get_by_role("link", name="Deliveries").click()
    dead = page.locator("#dead-notifications tbody tr", has_text=ids["unlucky"])
    expect(dead).to_contain_text("connection failed")
    (notification,) = stored(app, Notification, Notification.order_id == ids["unlucky"])
    assert notification.status == NotificationStatus.DEAD
    snap(page, "admin-deliveries")

    dead.get_by_role("button", name="Redeliver").click()

    expect(page.locator(".flash.ok")).to_have_text(f"Notification {notification.id} will be delivered again.")
    wait_for(lambda: notification.id in [d["id"] for d in receiver.delivered()], 20, "the redelivered notification")
    page.goto(f"{url}/admin/orders/{ids['unlucky']}")
    expect(page.locator(".timeline li.k-notification .badge")).to_have_text("delivered")
    assert page.errors == []
    context.close()

    phone, page = signed_in_page(browser, url, width=390, height=844)
    page.goto(f"{url}/admin/orders/{ids['unlucky']}")
    expect(page.locator("#status")).to_have_text("pending")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    snap(page, "admin-phone")
    phone.close()
