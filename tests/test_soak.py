"""Soak: 2,000 orders settled by shuffled, duplicated, concurrent webhooks end exactly in Monime's truth.

On Postgres it runs again against two service instances sharing the database, as replicas
behind a load balancer would. The figures are printed (run with -s to see them live).
"""

import itertools
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import gunicorn
from models import Order, WebhookEvent, db
from support import WEBHOOK_PATH, as_a_frontend, order_payload

ORDERS = 2_000
DUPLICATES = 0.20
CLIENTS = 8
ENDINGS = ["complete"] * 6 + ["cancel"] * 2 + ["expire"] * 2


class Clients:
    """CLIENTS threads, each with its own keep-alive connection, spreading requests over the instances."""

    def __init__(self, urls: list[str]):
        self.urls, self.local = itertools.cycle(urls), threading.local()
        self.lock = threading.Lock()

    def post(self, path: str, **kwargs) -> requests.Response:
        if not hasattr(self.local, "http"):
            self.local.http = requests.Session()
        with self.lock:
            url = next(self.urls)
        return self.local.http.post(url + path, timeout=60, **kwargs)

    def run(self, send, items) -> list:
        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(pool.map(send, items))


def soak(urls: list[str], app, simulator, label: str) -> None:
    rng = random.Random(20261126)
    clients = Clients(urls)
    started = time.monotonic()

    def submit(n):  # as a shop's frontend does: a checkout shed with 503 monime_busy is submitted again
        return as_a_frontend(lambda: clients.post("/api/checkout", json=order_payload(f"ord_soak_{n}")))

    created = clients.run(submit, range(ORDERS))
    assert Counter(r.status_code for r in created) == {201: ORDERS}
    sessions = [r.json()["sessionId"] for r in created]
    events = clients.run(lambda s: simulator.finish(s, rng.choice(ENDINGS), deliver=False)["event"], sessions)
    deliveries = events + rng.sample(events, int(len(events) * DUPLICATES))
    rng.shuffle(deliveries)

    answers = clients.run(lambda e: clients.post(WEBHOOK_PATH, data=e["body"], headers=e["headers"]), deliveries)
    seconds = time.monotonic() - started

    statuses = Counter(r.status_code for r in answers)
    outcomes = Counter(r.json()["outcome"] or "duplicate" for r in answers if r.status_code == 200)
    truth = {session["id"]: session["status"] for session in simulator.sessions()}
    with app.app_context():
        ours = dict(db.session.execute(db.select(Order.checkout_session_id, Order.status)).all())
        stored = db.session.scalar(db.select(db.func.count(db.distinct(WebhookEvent.id))))
    wrong = sum(ours.get(session) != status for session, status in truth.items())
    fives = sum(count for status, count in statuses.items() if status >= 500)
    print(
        f"\nsoak [{label}]: {ORDERS} orders, {len(deliveries)} deliveries "
        f"({len(deliveries) - len(events)} duplicates), "
        f"final {dict(Counter(truth.values()))}, outcomes {dict(outcomes)}, wrong final states {wrong}, "
        f"5xx {fives}, events stored {stored}, {seconds:.1f} s"
    )
    assert statuses == {200: len(deliveries)}, "no 5xx, no 4xx"
    assert wrong == 0
    assert stored == len(events) == ORDERS
    assert outcomes == {"applied": ORDERS, "duplicate": len(deliveries) - ORDERS}


# The simulator shares this process with the clients, so under load it may answer slower than
# the short timeouts the failure tests use; the soak is about webhooks, not Monime's latency.
PATIENT = {"MONIME_READ_TIMEOUT": "10", "MONIME_RETRY_DEADLINE": "20"}


def test_soak_on_one_instance(database_url, app, simulator, tmp_path, capsys):
    with gunicorn(database_url, simulator.url, tmp_path / "gunicorn.log", **PATIENT) as server, capsys.disabled():
        soak([server.url], app, simulator, f"{db_name(app)}, 1 instance")


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_soak_on_two_instances_sharing_postgres(database_url, app, simulator, tmp_path, capsys):
    with (
        gunicorn(database_url, simulator.url, tmp_path / "first.log", **PATIENT) as first,
        gunicorn(database_url, simulator.url, tmp_path / "second.log", **PATIENT) as second,
        capsys.disabled(),
    ):
        soak([first.url, second.url], app, simulator, "postgresql, 2 instances")


def db_name(app) -> str:
    return app.config["SQLALCHEMY_DATABASE_URI"].split(":")[0].split("+")[0]
