"""Concurrency across two gunicorn workers: each event applied once, one session per order."""

import threading

import requests

from conftest import LiveClient
from models import WebhookEvent, db
from support import (
    ORDER_TOTAL,
    WEBHOOK_PATH,
    across_both_workers,
    all_at_once,
    as_a_frontend,
    checkout,
    items,
    order,
    order_payload,
    signed_event,
)


def deliver_raw(url: str, event: dict) -> requests.Response:
    return requests.post(url + WEBHOOK_PATH, data=event["body"], headers=event["headers"], timeout=30)


def test_twenty_concurrent_deliveries_of_one_event_apply_it_once(live_server, app, simulator):
    """Bursts of 20 simultaneous deliveries, each of a new event, until one burst is seen
    spread over both workers."""
    api = LiveClient(live_server.url)

    def burst(number: int) -> int:
        body = checkout(api)
        event = simulator.complete(body["sessionId"], deliver=False)["event"]

        responses = all_at_once(20, lambda: deliver_raw(live_server.url, event))

        assert [r.status_code for r in responses] == [200] * 20
        assert sorted(str(r.json()["outcome"]) for r in responses) == ["None"] * 19 + ["applied"]
        assert order(api, body["orderId"])["status"] == "completed"
        with app.app_context():
            assert db.session.scalar(db.select(db.func.count()).select_from(WebhookEvent)) == number
        return len(responses)

    across_both_workers(live_server, WEBHOOK_PATH, burst)


def test_completion_expiry_and_cancellation_racing_end_completed(live_server, app, simulator):
    api = LiveClient(live_server.url)
    body = checkout(api)
    names = ["checkout_session.completed", "checkout_session.expired", "checkout_session.cancelled"] * 5
    events = [signed_event(name, body["sessionId"], line_items=items(ORDER_TOTAL)) for name in names]
    queue = iter(events)
    lock = threading.Lock()

    def send_next():
        with lock:
            event = next(queue)
        return deliver_raw(live_server.url, event)

    responses = all_at_once(len(events), send_next)

    assert [r.status_code for r in responses] == [200] * len(events)
    assert order(api, body["orderId"])["status"] == "completed"
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookEvent)) == len(events)


def test_ten_concurrent_submissions_of_one_order_make_one_session(live_server, app, simulator):
    payload = order_payload("ord_rush")

    responses = all_at_once(
        10, lambda: as_a_frontend(lambda: requests.post(live_server.url + "/api/checkout", json=payload))
    )

    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.json()["sessionId"] for r in responses}) == 1
    assert len(simulator.sessions()) == 1
    assert len({r["idempotencyKey"] for r in simulator.requests("POST")}) == 1
