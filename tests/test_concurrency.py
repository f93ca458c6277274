"""Concurrency across two gunicorn workers: each event applied once, one session per order."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from conftest import LiveClient
from models import WebhookEvent, db
from support import ORDER_TOTAL, WEBHOOK_PATH, checkout, items, order, order_payload, signed_event


def all_at_once(count: int, send) -> list[requests.Response]:
    """Run `send` from `count` threads released together, each on its own connection."""
    start = threading.Barrier(count)

    def go(_):
        start.wait()
        return send()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(go, range(count)))


def workers_that_answered(live_server, path: str, expected: int) -> set[str]:
    """The worker pids the access log shows for `path`, once all `expected` lines are written."""
    give_up = time.monotonic() + 10
    while True:
        lines = [entry for entry in live_server.access_log() if entry["path"] == path]
        if len(lines) >= expected or time.monotonic() > give_up:
            return {entry["pid"] for entry in lines}
        time.sleep(0.05)  # the worker writes its log line just after answering


def test_twenty_concurrent_deliveries_of_one_event_apply_it_once(live_server, app, simulator):
    api = LiveClient(live_server.url)
    body = checkout(api)
    event = simulator.complete(body["sessionId"], deliver=False)["event"]
    already_logged = len([e for e in live_server.access_log() if e["path"] == WEBHOOK_PATH])

    responses = all_at_once(
        20, lambda: requests.post(live_server.url + WEBHOOK_PATH, data=event["body"], headers=event["headers"])
    )

    assert [r.status_code for r in responses] == [200] * 20
    outcomes = sorted(str(r.json()["outcome"]) for r in responses)
    assert outcomes == ["None"] * 19 + ["applied"]
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookEvent)) == 1
    assert order(api, body["orderId"])["status"] == "completed"
    assert len(workers_that_answered(live_server, WEBHOOK_PATH, already_logged + 20)) == 2


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
        return requests.post(live_server.url + WEBHOOK_PATH, data=event["body"], headers=event["headers"])

    responses = all_at_once(len(events), send_next)

    assert [r.status_code for r in responses] == [200] * len(events)
    assert order(api, body["orderId"])["status"] == "completed"
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookEvent)) == len(events)


def test_ten_concurrent_submissions_of_one_order_make_one_session(live_server, app, simulator):
    payload = order_payload("ord_rush")

    responses = all_at_once(10, lambda: requests.post(live_server.url + "/api/checkout", json=payload))

    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.json()["sessionId"] for r in responses}) == 1
    assert len(simulator.sessions()) == 1
    assert len({r["idempotencyKey"] for r in simulator.requests("POST")}) == 1
