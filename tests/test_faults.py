"""Faults under gunicorn: a worker killed mid-delivery, and Postgres restarted under a running service
(a throwaway cluster of the test's own, never the machine's)."""

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from conftest import LiveClient, gunicorn, make_app, migrate, service_settings
from models import Order, Outcome, WebhookEvent, db
from support import WEBHOOK_PATH, checkout, order, signed_event, wait_for

ENDINGS = ["complete", "cancel", "expire"]


def settled_orders(api, simulator, count: int) -> tuple[list[dict], dict[str, str]]:
    """`count` orders Monime has finished, the events it will deliver, and the truth by order id.
    Completions come without line items, so each one asks Monime for the amount while in flight."""
    events, truth = [], {}
    for number in range(count):
        body = checkout(api)
        ending = ENDINGS[number % len(ENDINGS)]
        result = simulator.finish(body["sessionId"], ending, deliver=False)
        name = json.loads(result["event"]["body"])["event"]["name"]
        events.append(signed_event(name, body["sessionId"]) if ending == "complete" else result["event"])
        truth[body["orderId"]] = result["session"]["status"]
    return events, truth


def serving_a_request(pid: int, port: int) -> bool:
    """Whether worker `pid` holds an open connection on the service's port: a request in flight."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            sockets.add(os.readlink(fd))
        except FileNotFoundError:  # closed while we looked
            continue
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, state, inode = int(fields[1].split(":")[1], 16), fields[3], fields[9]
        if local_port == port and state == "01" and f"socket:[{inode}]" in sockets:
            return True
    return False


def post(url: str, event: dict) -> int | None:
    """Deliver like Monime: the status code, or None when the connection broke."""
    try:
        return requests.post(url + WEBHOOK_PATH, data=event["body"], headers=event["headers"], timeout=30).status_code
    except requests.RequestException:  # reset, cut short or timed out: not acknowledged
        return None


def assert_nothing_half_applied(app, truth: dict[str, str], events: list[dict]) -> None:
    """Each event stored once and processed; a status moved only by an applied event."""
    with app.app_context():
        stored = dict(db.session.execute(db.select(WebhookEvent.id, WebhookEvent.outcome)).all())
        orders = dict(db.session.execute(db.select(Order.id, Order.status)).all())
        changed_by = set(
            db.session.scalars(db.select(WebhookEvent.order_id).where(WebhookEvent.outcome == Outcome.APPLIED))
        )
    assert stored.keys() == {event["id"] for event in events}
    assert set(stored.values()) == {Outcome.APPLIED}
    assert orders == truth
    assert {order_id for order_id, status in orders.items() if status != "pending"} == changed_by


def test_a_worker_killed_mid_delivery_loses_nothing_and_applies_nothing_twice(database_url, app, simulator, tmp_path):
    with gunicorn(database_url, simulator.url, tmp_path / "gunicorn.log") as server:
        events, truth = settled_orders(LiveClient(server.url), simulator, 120)
        simulator.faults(delay=0.2)  # each completion spends a while in the worker, asking Monime
        victim, port = server.worker_pids()[0], int(server.url.rsplit(":", 1)[1])
        killed = threading.Event()

        def killer():
            wait_for(lambda: serving_a_request(victim, port), 30, f"a request in flight in worker {victim}", 0.005)
            os.kill(victim, signal.SIGKILL)
            killed.set()

        watcher = threading.Thread(target=killer, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(8) as pool:
            first_round = list(pool.map(lambda event: post(server.url, event), events))
        simulator.faults()
        # Monime delivers again whatever was not acknowledged, until it is.
        pending = [event for event, status in zip(events, first_round, strict=True) if status != 200]
        for _ in range(5):
            pending = [event for event in pending if post(server.url, event) != 200]

        assert killed.is_set(), "the worker was killed"
        assert any(status is None or status >= 500 for status in first_round), "the kill hit requests in flight"
        assert pending == [], "every event acknowledged within five redeliveries"
        assert victim not in server.worker_pids()
    assert_nothing_half_applied(app, truth, events)


def test_the_service_survives_a_postgres_restart_and_accepts_refused_events_on_redelivery(
    throwaway_postgres, simulator, tmp_path
):
    migrate(throwaway_postgres.url)
    app = make_app(service_settings(throwaway_postgres.url, simulator.url))
    with gunicorn(throwaway_postgres.url, simulator.url, tmp_path / "gunicorn.log") as server:
        api = LiveClient(server.url)
        events, truth = settled_orders(api, simulator, 12)
        before, during = events[:6], events[6:]
        assert [post(server.url, event) for event in before] == [200] * 6

        throwaway_postgres.stop()
        try:
            refused = [post(server.url, event) for event in during]
            health = requests.get(server.url + "/healthz", timeout=10).status_code
        finally:
            throwaway_postgres.start()

        assert refused == [503] * 6, "never a 2xx for an event that was not stored"
        assert health == 503
        wait_for(
            lambda: requests.get(server.url + "/healthz", timeout=10).status_code == 200,
            30,
            "/healthz to answer 200 again once Postgres is back",
            0.1,
        )
        assert [post(server.url, event) for event in during] == [200] * 6
        assert {order_id: order(api, order_id)["status"] for order_id in truth} == truth
    assert_nothing_half_applied(app, truth, events)
