"""Order notifications: written in the transaction that changes the order, delivered to a real
HTTP receiver that verifies them with the standardwebhooks library, retried, never delivered
by two relays at once, surviving a restart; the README's example receiver is the tested file."""

import base64
import importlib
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.wrappers import Request, Response

import notifications
from conftest import ROOT, LiveClient, gunicorn, make_app, service_settings
from models import Notification, NotificationStatus, db
from support import BEARER, checkout, deliver, items, metric, order, scrape, serving, signed_event, wait_for

SECRET = "whsec_" + base64.b64encode(b"notifications: the current key").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"notifications: the key before").decode()


class Receiver:
    """A shop backend over real HTTP. Verifies every delivery with the standardwebhooks library
    (against `secret`), answers each status in `answers` once and then 200, and keeps every
    delivery; while `gate` is cleared, each delivery waits (up to 30 s) for it to be set."""

    def __init__(self, secret: str = SECRET, answers=()):
        self.webhook = Webhook(secret)
        self.answers = list(answers)
        self.lock = threading.Lock()
        self.deliveries: list[dict] = []  # {"id", "body", "status", "at": time.monotonic() of the answer}
        self.unverified = 0
        self.active: Counter = Counter()  # deliveries of each webhook-id in progress now
        self.most_at_once: Counter = Counter()
        self.waiting = 0  # deliveries waiting at the gate now
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, environ, start_response):
        request = Request(environ)
        try:
            body = self.webhook.verify(request.get_data(), dict(request.headers))
        except WebhookVerificationError:
            with self.lock:
                self.unverified += 1
            return Response("bad signature", 400)(environ, start_response)
        webhook_id = request.headers["webhook-id"]
        with self.lock:
            self.active[webhook_id] += 1
            self.most_at_once[webhook_id] = max(self.most_at_once[webhook_id], self.active[webhook_id])
            status = self.answers.pop(0) if self.answers else 200
            self.waiting += 1
        self.gate.wait(30)
        with self.lock:
            self.waiting -= 1
            self.active[webhook_id] -= 1
            self.deliveries.append({"id": webhook_id, "body": body, "status": status, "at": time.monotonic()})
        return Response(status=status)(environ, start_response)

    def delivered(self, status: int = 200) -> list[dict]:
        with self.lock:
            return [d for d in self.deliveries if d["status"] == status]

    def wait_for_delivered(self, count: int, deadline: float = 20) -> list[dict]:
        """The 2xx deliveries, once there are at least `count`."""
        wait_for(
            lambda: len(self.delivered()) >= count,
            deadline,
            lambda: f"{count} notifications delivered; got {[(d['id'], d['status']) for d in self.deliveries]}",
        )
        return self.delivered()


def notify_settings(url: str, **changes) -> dict[str, str]:
    """NOTIFY_* for a receiver at `url`, with retries fast enough for tests."""
    return {
        "NOTIFY_URL": url,
        "NOTIFY_SECRET": f"{SECRET},{OLD_SECRET}",
        "NOTIFY_FIRST_RETRY": "0.05",
        "NOTIFY_TIMEOUT": "2",
    } | changes


@pytest.fixture
def receiver():
    shop = Receiver()
    with serving(shop) as url:
        shop.url = url
        yield shop
        shop.gate.set()


@pytest.fixture
def notifying(app, database_url, simulator, receiver):
    """A factory of the service (in process) notifying `receiver`; each relay stops with the test.
    Depends on `app` for its emptied tables."""
    made = []

    def make(**changes):
        made.append(make_app(service_settings(database_url, simulator.url) | notify_settings(receiver.url, **changes)))
        return made[-1]

    yield make
    for one in made:
        notifications.stop_relay(one)


def stored(app) -> list[Notification]:
    with app.app_context():
        rows = list(db.session.scalars(db.select(Notification).order_by(Notification.created_at)))
        db.session.commit()  # ends the read; the rows stay readable
        return rows


def all_delivered(app, count: int) -> list[Notification]:
    """The stored notifications, once `count` of them are marked delivered (just after the receiver's 2xx)."""
    delivered = lambda: [row for row in stored(app) if row.status == NotificationStatus.DELIVERED]  # noqa: E731
    wait_for(lambda: len(delivered()) >= count, 10, lambda: f"{count} notifications marked delivered: {stored(app)}")
    return stored(app)


def completion(api, simulator) -> str:
    body = checkout(api)
    assert deliver(api, simulator.complete(body["sessionId"], deliver=False)["event"]).status_code == 200
    return body["orderId"]


# --- what is written, and when ------------------------------------------------------------------


def test_each_change_is_notified_once_signed_with_every_secret_and_showing_the_order(notifying, simulator, receiver):
    service = notifying()
    api = service.test_client()
    paid = checkout(api)
    completed, paid_event = paid["orderId"], simulator.complete(paid["sessionId"], deliver=False)["event"]
    assert [deliver(api, paid_event).get_json()["outcome"] for _ in range(2)] == ["applied", None]  # a repeat
    cancelled = checkout(api)
    deliver(api, simulator.cancel(cancelled["sessionId"], deliver=False)["event"])
    expired = checkout(api)
    deliver(api, simulator.expire(expired["sessionId"], deliver=False)["event"])
    held = checkout(api)
    mismatch = signed_event("checkout_session.completed", held["sessionId"], line_items=items(1))
    assert deliver(api, mismatch).get_json()["outcome"] == "held"

    delivered = receiver.wait_for_delivered(4)

    expected = {
        ("order.completed", completed),
        ("order.cancelled", cancelled["orderId"]),
        ("order.expired", expired["orderId"]),
        ("order.held", held["orderId"]),
    }
    assert {(d["body"]["type"], d["body"]["order"]["orderId"]) for d in delivered} == expected
    rows = all_delivered(service, 4)
    assert len(rows) == 4
    assert sorted(d["id"] for d in delivered) == sorted(row.id for row in rows)  # one id each, the row's
    for delivery in delivered:
        assert delivery["id"] == delivery["body"]["id"] and delivery["id"].startswith("msg_")
        assert delivery["body"]["createdAt"].endswith("Z"), "UTC, as the README shows"
        assert delivery["body"]["order"] == order(api, delivery["body"]["order"]["orderId"])  # as GET shows it
    held_notification = next(d["body"] for d in delivered if d["body"]["type"] == "order.held")
    assert held_notification["order"]["review"]["eventId"] == mismatch["id"]
    assert receiver.unverified == 0


def test_resolving_a_held_order_as_paid_is_notified_and_a_dismissal_is_not(notifying, simulator, receiver):
    """A person completing a held order changes its status: order.completed, like any other
    change. Dismissing the hold leaves the status, and no notification type says that."""
    service = notifying(NOTIFY_RELAY="0")
    api = service.test_client()
    confirmed, dismissed = checkout(api), checkout(api)
    for body in (confirmed, dismissed):
        mismatch = signed_event("checkout_session.completed", body["sessionId"], line_items=items(1))
        assert deliver(api, mismatch).get_json()["outcome"] == "held"
    for body, action in ((confirmed, "complete"), (dismissed, "dismiss")):
        resolution = {"action": action, "note": "checked with the bank"}
        assert api.post(f"/api/orders/{body['orderId']}/resolve", json=resolution, headers=BEARER).status_code == 200

    written = [(row.type, row.order_id) for row in stored(service)]
    assert written == [
        ("order.held", confirmed["orderId"]),
        ("order.held", dismissed["orderId"]),
        ("order.completed", confirmed["orderId"]),
    ]


def test_the_receiver_verifies_with_the_previous_secret_during_a_rotation(notifying, simulator):
    shop = Receiver(secret=OLD_SECRET)
    with serving(shop) as url:
        service = notifying(NOTIFY_URL=url)
        completion(service.test_client(), simulator)
        assert shop.wait_for_delivered(1)[0]["body"]["type"] == "order.completed"


def test_a_change_undone_is_never_notified(notifying, simulator, receiver):
    """`orders reconcile --dry-run` applies what Monime says and rolls it back: the notification
    goes with it, as it was written in the same transaction."""
    service = notifying(NOTIFY_RELAY="0")
    api = service.test_client()
    body = checkout(api)
    simulator.complete(body["sessionId"], deliver=False)

    result = service.test_cli_runner().invoke(args=["orders", "reconcile", "--older-than", "0s", "--dry-run"])

    assert "would reconcile 1 order: applied 1" in result.output, result.output
    assert order(api, body["orderId"])["status"] == "pending"
    assert stored(service) == []
    service.test_cli_runner().invoke(args=["orders", "reconcile", "--older-than", "0s"])
    assert [row.type for row in stored(service)] == ["order.completed"]


def test_without_notify_url_nothing_is_written(app, simulator):
    completion(app.test_client(), simulator)
    assert stored(app) == []


# --- retries, dead notifications, commands, metrics ---------------------------------------------


def test_a_receiver_failing_twice_gets_the_notification_three_times_under_one_id(notifying, simulator, receiver):
    receiver.answers = [500, 503]
    service = notifying()
    completion(service.test_client(), simulator)

    receiver.wait_for_delivered(1)

    assert [d["status"] for d in receiver.deliveries] == [500, 503, 200]
    assert len({d["id"] for d in receiver.deliveries}) == 1
    (row,) = all_delivered(service, 1)
    assert row.attempts == 3


def test_after_notify_retry_for_a_notification_is_dead_until_redelivered(notifying, simulator, receiver):
    receiver.answers = [500] * 1000
    service = notifying(NOTIFY_RETRY_FOR="1", NOTIFY_FIRST_RETRY="0.2")
    api, cli = service.test_client(), service.test_cli_runner()
    before = scrape(api)  # the counters are the test process's, shared by the tests before
    completion(api, simulator)
    wait_for(lambda: stored(service)[0].status == NotificationStatus.DEAD, 10, "the notification to die")
    (dead,) = stored(service)
    assert dead.attempts >= 2 and dead.last_error == "answered HTTP 500"
    assert dead.id in cli.invoke(args=["notifications", "list", "--status", "dead"]).output
    assert cli.invoke(args=["notifications", "list", "--status", "pending"]).output == "no pending notifications\n"
    dead_ones = metric(scrape(api), "notification_deliveries_total", result="dead")
    assert dead_ones - metric(before, "notification_deliveries_total", result="dead") == 1

    receiver.answers = []
    assert "1 notification to be delivered again" in cli.invoke(args=["notifications", "redeliver", "--dead"]).output
    delivered = receiver.wait_for_delivered(1)

    assert [d["id"] for d in delivered] == [dead.id]
    all_delivered(service, 1)
    metrics = scrape(api)
    delivered_ones = metric(metrics, "notification_deliveries_total", result="delivered")
    assert delivered_ones - metric(before, "notification_deliveries_total", result="delivered") == 1
    assert metric(metrics, "notifications_pending") == 0
    unknown = cli.invoke(args=["notifications", "redeliver", "msg_nope"])
    assert unknown.exit_code != 0 and "no notification 'msg_nope'" in unknown.output


def test_the_outbox_backlog_is_a_metric(notifying, simulator):
    service = notifying(NOTIFY_RELAY="0")
    api = service.test_client()
    completion(api, simulator)
    completion(api, simulator)
    metrics = scrape(api)
    assert metric(metrics, "notifications_pending") == 2
    assert metric(metrics, "notifications_oldest_pending_age_seconds") > 0


def test_a_hanging_receiver_is_given_up_on_at_the_time_limit(notifying, simulator, receiver):
    receiver.gate.clear()
    service = notifying(NOTIFY_TIMEOUT="0.5")
    completion(service.test_client(), simulator)
    wait_for(lambda: (stored(service)[0].last_error or "").startswith("no answer within 0.5 s"), 10, "a timeout")
    receiver.gate.set()
    assert receiver.wait_for_delivered(1)[0]["id"] == stored(service)[0].id


def test_the_relay_is_not_started_by_cli_commands(notifying):
    service = notifying()
    service.test_cli_runner().invoke(args=["notifications", "list"])
    assert "notifications_relay" not in service.extensions


# --- the example receiver in the README -----------------------------------------------------------


def test_the_readme_shows_the_example_receiver_file_verbatim():
    code = (ROOT / "examples" / "receiver.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert code in blocks


def test_the_example_receiver_verifies_prints_each_notification_once_and_refuses_forgeries(
    notifying, simulator, monkeypatch, capsys
):
    monkeypatch.setenv("NOTIFY_SECRET", SECRET)
    example = importlib.reload(importlib.import_module("examples.receiver"))
    with serving(example.app) as url:
        service = notifying(NOTIFY_URL=url)
        order_id = completion(service.test_client(), simulator)
        wait_for(lambda: stored(service)[0].status == NotificationStatus.DELIVERED, 10, "delivery to the example")
        service.test_cli_runner().invoke(args=["notifications", "redeliver", stored(service)[0].id])
        wait_for(lambda: stored(service)[0].attempts == 2, 10, "the redelivery to the example")
        forged = requests.post(url, data="{}", headers={"webhook-id": "msg_x", "webhook-timestamp": "1"}, timeout=5)

    assert capsys.readouterr().out.count(f"order.completed {order_id} completed") == 1
    assert forged.status_code == 400


# --- under gunicorn: two workers, their relays, a restart -------------------------------------------


def notifying_gunicorn(database_url, simulator, receiver, tmp_path, name="gunicorn.log", **changes):
    log = tmp_path / name
    return gunicorn(database_url, simulator.url, log, **notify_settings(receiver.url, **changes))


def test_two_workers_never_deliver_one_notification_at_once_and_webhooks_never_wait_for_the_receiver(
    database_url, app, simulator, receiver, tmp_path, capsys
):
    """Both workers' relays drain one outbox while 60 orders complete; each notification reaches
    the receiver once, never twice at the same moment. Then a receiver that hangs: webhooks are
    answered while it holds every delivery. Prints delivery figures (no timed assertion)."""
    with notifying_gunicorn(database_url, simulator, receiver, tmp_path) as server:
        api = LiveClient(server.url)
        started: dict[str, float] = {}
        for _ in range(60):
            body = checkout(api)
            event = simulator.complete(body["sessionId"], deliver=False)["event"]
            started[body["orderId"]] = time.monotonic()
            assert deliver(api, event).get_json()["outcome"] == "applied"
        delivered = receiver.wait_for_delivered(60, deadline=60)

        assert len(delivered) == 60 and len({d["id"] for d in delivered}) == 60
        assert max(receiver.most_at_once.values()) == 1
        assert {d["body"]["order"]["orderId"] for d in delivered} == set(started)
        latency = sorted(d["at"] - started[d["body"]["order"]["orderId"]] for d in delivered)

        receiver.gate.clear()  # the receiver now hangs
        hanging = [checkout(api) for _ in range(4)]
        for body in hanging:
            event = simulator.complete(body["sessionId"], deliver=False)["event"]
            assert deliver(api, event).get_json()["outcome"] == "applied"
        wait_for(lambda: receiver.waiting >= 1, 10, "a delivery to hang at the receiver")
        late = checkout(api)
        answered = deliver(api, simulator.complete(late["sessionId"], deliver=False)["event"])
        assert answered.status_code == 200 and receiver.waiting >= 1  # answered while the receiver hangs
        receiver.gate.set()
        receiver.wait_for_delivered(65, deadline=60)
    with capsys.disabled():
        print(
            f"\n[{database_url.split(':')[0]}] webhook -> receiver 2xx: p50 {statistics.median(latency) * 1000:.0f} ms,"
            f" p99 {latency[int(len(latency) * 0.99) - 1] * 1000:.0f} ms, max {latency[-1] * 1000:.0f} ms"
        )


def test_notifications_written_before_a_kill_are_delivered_after_a_restart(
    database_url, app, simulator, receiver, tmp_path, capsys
):
    """The service writes notifications with its relay off, is killed (SIGKILL, workers first),
    and started again with the relay on: every notification is delivered, once. Also measures
    the relay's throughput on the 200 notifications waiting at the restart."""
    count = 200
    with notifying_gunicorn(database_url, simulator, receiver, tmp_path, NOTIFY_RELAY="0") as server:
        api = LiveClient(server.url)
        orders = []
        for _ in range(count):
            body = checkout(api)
            assert deliver(api, simulator.complete(body["sessionId"], deliver=False)["event"]).status_code == 200
            orders.append(body["orderId"])
        for pid in [*server.worker_pids(), server.process.pid]:
            os.kill(pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    assert receiver.deliveries == []
    assert len(stored(app)) == count

    restarted = time.monotonic()
    with notifying_gunicorn(database_url, simulator, receiver, tmp_path, name="again.log"):
        delivered = receiver.wait_for_delivered(count, deadline=120)
        elapsed = delivered[-1]["at"] - restarted
        draining = delivered[-1]["at"] - delivered[0]["at"]

    assert sorted(d["body"]["order"]["orderId"] for d in delivered) == sorted(orders)
    assert len({d["id"] for d in delivered}) == count == len(receiver.deliveries)
    with capsys.disabled():
        print(
            f"\n[{database_url.split(':')[0]}] relay: {count} notifications in {elapsed:.2f} s after the restart"
            f" ({count / draining:.0f}/s from the first delivery to the last)"
        )


def test_a_separate_relay_process_delivers_with_the_workers_relays_off(
    database_url, app, simulator, receiver, tmp_path
):
    """`flask notifications run`, for deployments that prefer a relay process of its own."""
    environment = os.environ | service_settings(database_url, simulator.url) | notify_settings(receiver.url)
    with notifying_gunicorn(database_url, simulator, receiver, tmp_path, NOTIFY_RELAY="0") as server:
        order_id = completion(LiveClient(server.url), simulator)
        log = (tmp_path / "relay.log").open("w")
        relay = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "notifications", "run"],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            delivered = receiver.wait_for_delivered(1)
        finally:
            relay.send_signal(signal.SIGINT)
            relay.wait(timeout=10)
    assert delivered[0]["body"]["order"]["orderId"] == order_id
