"""The simulator delivers like Monime, to the service over HTTP: retried after a failure,
redelivered by hand, delivered twice, out of order, late, and for a session left to expire.
Whatever arrives how often and in what order, each order ends right and each event is
stored once."""

import json
import threading
import time

import pytest
from sqlalchemy import select

from models import WebhookEvent, db
from support import WEBHOOK_PATH, checkout, order, serving


class FailFirst:
    """A WSGI proxy in front of the service: answers 500 to the first `failures` webhooks and
    hands everything else to the service."""

    def __init__(self, service, failures: int = 0):
        self.service, self.failures, self.lock = service, failures, threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            fail = environ["PATH_INFO"] == WEBHOOK_PATH and self.failures > 0
            self.failures -= fail
        if fail:
            start_response("500 INTERNAL SERVER ERROR", [("Content-Type", "text/plain")])
            return [b"down for a moment"]
        return self.service(environ, start_response)


@pytest.fixture
def proxy(app, simulator):
    """The service over HTTP behind the proxy, the simulator's webhooks sent to it, retries quick."""
    proxy = FailFirst(app)
    with serving(proxy) as url:
        simulator.configure(webhook_url=f"{url}{WEBHOOK_PATH}", retry_backoff=0.05)
        yield proxy


def answer(delivery: dict) -> dict:
    """What the service answered: {"received", "eventId", "duplicate", "outcome"}."""
    return json.loads(delivery["body"])


def stored(app, order_id: str) -> list[tuple[str, str]]:
    """(event name, outcome) of every event the service stored about the order."""
    with app.app_context():
        events = db.session.scalars(select(WebhookEvent).where(WebhookEvent.order_id == order_id)).all()
        return sorted((event.name, event.outcome) for event in events)


def test_a_webhook_answered_500_is_retried_and_applied_once(app, client, simulator, proxy):
    proxy.failures = 1
    body = checkout(client)

    result = simulator.complete(body["sessionId"])

    assert result["delivery"]["status"] == 500  # the first attempt, made before the call returned
    first, retry = simulator.wait_for_deliveries(2)
    assert [(d["attempt"], d["reason"], d["status"]) for d in (first, retry)] == [(1, "first", 500), (2, "retry", 200)]
    assert answer(retry) | {"eventId": None} == {
        "received": True,
        "eventId": None,
        "duplicate": False,
        "outcome": "applied",
    }
    assert order(client, body["orderId"])["status"] == "completed"
    assert stored(app, body["orderId"]) == [("checkout_session.completed", "applied")]


def test_a_redelivered_event_is_a_duplicate_and_changes_nothing(app, client, simulator, proxy):
    body = checkout(client)
    event = simulator.complete(body["sessionId"])["event"]

    again = simulator.redeliver(event["id"])

    assert (again["attempt"], again["reason"], again["status"]) == (2, "redeliver", 200)
    assert answer(again)["duplicate"] is True
    assert [d["eventId"] for d in simulator.deliveries()] == [event["id"], event["id"]]
    assert order(client, body["orderId"])["status"] == "completed"
    assert stored(app, body["orderId"]) == [("checkout_session.completed", "applied")]


def test_redelivering_an_unknown_event_is_a_404(simulator, proxy):
    response = simulator.http.post(f"{simulator.url}/_sim/events/evt-unknown/redeliver", timeout=10)

    assert response.status_code == 404
    assert simulator.deliveries() == []


def test_delivered_twice_the_second_is_a_duplicate(app, client, simulator, proxy):
    simulator.configure(twice=True)
    body = checkout(client)

    simulator.complete(body["sessionId"])

    first, second = simulator.deliveries()
    assert (first["reason"], second["reason"]) == ("first", "twice")
    assert [answer(first)["duplicate"], answer(second)["duplicate"]] == [False, True]
    assert answer(first)["outcome"] == "applied"
    assert stored(app, body["orderId"]) == [("checkout_session.completed", "applied")]


def test_delivered_out_of_order_a_late_expiry_arrives_first_and_the_order_still_ends_completed(
    app, client, simulator, proxy
):
    simulator.configure(out_of_order=True)
    body = checkout(client)

    held = simulator.complete(body["sessionId"])
    assert held["delivery"] is None  # held back for the next event
    assert order(client, body["orderId"])["status"] == "pending"
    simulator.expire(body["sessionId"], force=True)  # Monime's late news, sent first

    deliveries = simulator.deliveries()
    assert [d["eventName"] for d in deliveries] == ["checkout_session.expired", "checkout_session.completed"]
    assert [d["status"] for d in deliveries] == [200, 200]
    assert order(client, body["orderId"])["status"] == "completed"


def test_a_held_back_event_goes_out_after_the_hold_when_no_other_comes(client, simulator, proxy):
    simulator.configure(out_of_order=True, hold=0.2)
    body = checkout(client)

    assert simulator.complete(body["sessionId"])["delivery"] is None

    [delivery] = simulator.wait_for_deliveries(1)
    assert (delivery["eventName"], delivery["status"]) == ("checkout_session.completed", 200)
    assert order(client, body["orderId"])["status"] == "completed"


def test_a_delayed_delivery_arrives_after_the_delay(client, simulator, proxy):
    simulator.configure(delivery_delay=0.5)
    body = checkout(client)
    started = time.monotonic()

    assert simulator.complete(body["sessionId"])["delivery"] is None

    [delivery] = simulator.wait_for_deliveries(1)
    assert time.monotonic() - started >= 0.5
    assert (delivery["reason"], delivery["status"]) == ("first", 200)
    assert order(client, body["orderId"])["status"] == "completed"


def test_a_session_left_alone_expires_and_its_webhook_expires_the_order(app, client, simulator, proxy):
    simulator.configure(session_lifetime=0.5)
    body = checkout(client)

    [delivery] = simulator.wait_for_deliveries(1)

    assert (delivery["eventName"], delivery["sessionId"], delivery["status"]) == (
        "checkout_session.expired",
        body["sessionId"],
        200,
    )
    assert [s["status"] for s in simulator.sessions()] == ["expired"]
    assert order(client, body["orderId"])["status"] == "expired"
    assert stored(app, body["orderId"]) == [("checkout_session.expired", "applied")]
