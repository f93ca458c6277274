"""The bulkhead: at most MONIME_MAX_IN_FLIGHT calls to Monime in flight per process, and past it
every flow answers at once without asking Monime. The slots are held by real checkouts the
simulator answers slowly; in process (both databases) and under gunicorn with two workers."""

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests
from test_config import started
from test_webhooks import stored_events

import catalog
import checkout as checkout_flow
import monime
from conftest import LiveClient, gunicorn, make_app, service_settings
from models import Order, db
from support import checkout, deliver, items, metric, order, order_payload, scrape, signed_event, wait_for

CAP = 2  # MONIME_MAX_IN_FLIGHT of the service in process
HOLD = 3.0  # seconds the simulator holds each slow checkout: the slots stay taken that long
# Long enough for a held checkout to wait out the simulator's delay in one attempt.
PATIENT = {"MONIME_READ_TIMEOUT": "10", "MONIME_RETRY_DEADLINE": "10"}


@pytest.mark.parametrize(
    ("threads", "cap"), [(1, 1), (2, 1), (3, 1), (4, 2), (6, 4), (8, 6), (12, 9), (16, 12), (32, 24), (64, 48)]
)
def test_the_default_cap_keeps_a_reserve_of_threads_free(threads, cap):
    assert monime.derived_max_in_flight(threads) == cap
    if threads >= 3:
        assert threads - cap >= 2, "a webhook and a health check can always be served side by side"


def test_gunicorn_sizes_a_worker_from_its_threads_unless_the_setting_says(tmp_path, caplog):
    derived, given = started(tmp_path), started(tmp_path, MONIME_MAX_IN_FLIGHT="5")
    assert derived.extensions["monime"].bulkhead.limit is None, "outside gunicorn (flask commands) no cap"
    assert given.extensions["monime"].bulkhead.limit == 5

    assert (monime.fit_to_worker(derived, 8), derived.extensions["monime"].bulkhead.limit) == (6, 6)
    assert (monime.fit_to_worker(given, 8), given.extensions["monime"].bulkhead.limit) == (5, 5)
    assert "MONIME_MAX_IN_FLIGHT" not in caplog.text

    with caplog.at_level(logging.WARNING):
        assert monime.fit_to_worker(given, 4) == 5
    assert "leaves none of the worker's 4 threads free" in caplog.text


# --- in process, both databases: the slots held by slow checkouts -----------------------------


@pytest.fixture
def capped(app, database_url, simulator):
    """A test client of the service with MONIME_MAX_IN_FLIGHT=CAP (the tables emptied by `app`)."""
    settings = service_settings(database_url, simulator.url) | PATIENT
    return make_app(settings, MONIME_MAX_IN_FLIGHT=str(CAP)).test_client()


@contextmanager
def slots_held(client, simulator, count: int = CAP):
    """`count` checkouts in threads of their own, each answered by the simulator after HOLD
    seconds; yields once Monime has every one of them, so each holds its slot. On leaving,
    asserts that they were still in flight all along, and that each then made its session."""
    asked = len(simulator.requests("POST"))
    simulator.faults(delay=HOLD, slow=count)
    with ThreadPoolExecutor(count) as pool:
        send = client.application.test_client().post
        held = [pool.submit(send, "/api/checkout", json=order_payload()) for _ in range(count)]
        wait_for(lambda: len(simulator.requests("POST")) == asked + count, 10, f"{count} slow checkouts at Monime")
        yield
        assert not any(checkout.done() for checkout in held), "a slow checkout ended: the slots were not all held"
        assert [checkout.result().status_code for checkout in held] == [201] * count


def test_past_the_cap_a_checkout_is_503_monime_busy_at_once_and_nothing_is_stored(capped, simulator):
    cancelled = checkout(capped)
    deliver(capped, simulator.cancel(cancelled["sessionId"], deliver=False)["event"])
    pending = checkout(capped)
    before, asked = scrape(capped), len(simulator.requests("POST"))

    fresh = order_payload()

    with slots_held(capped, simulator):
        asked += CAP
        new = capped.post("/api/checkout", json=fresh)
        again = capped.post("/api/checkout", json=order_payload(cancelled["orderId"]))
        replay = capped.post("/api/checkout", json=order_payload(pending["orderId"]))
        invalid = capped.post("/api/checkout", json=order_payload(lineItems=[]))
        # past the door, a slot is still needed
        with capped.application.test_request_context(), pytest.raises(monime.MonimeBusy):
            checkout_flow.start(catalog.checkout_schema().load(fresh))
        during = scrape(capped)
        assert len(simulator.requests("POST")) == asked, "no shed checkout reached Monime"

    for shed in (new, again, replay, invalid):  # shed before the body is read: its 400 comes with a slot
        assert shed.status_code == 503, shed.get_json()
        assert shed.get_json()["error"]["code"] == "monime_busy"
        assert shed.headers["Retry-After"] == "1", "our Retry-After, not the rate limiter's"
    assert capped.get(f"/api/orders/{fresh['orderId']}").status_code == 404, "the new order was not stored"
    assert order(capped, cancelled["orderId"])["status"] == "cancelled", "no new attempt was started"
    assert order(capped, cancelled["orderId"])["checkoutSessionId"] == cancelled["sessionId"]
    assert metric(during, "monime_calls_in_flight") == CAP
    # four refused at the door, one more by checkout.start itself (not an HTTP answer)
    for name, labels, count in (("monime_calls_shed_total", {"operation": "create_session"}, 5),
                                ("checkouts_total", {"result": "monime_busy"}, 4)):  # fmt: skip
        assert metric(during, name, **labels) - metric(before, name, **labels) == count, name

    resubmitted = capped.post("/api/checkout", json=order_payload(cancelled["orderId"]))
    assert resubmitted.status_code == 201, "with a slot free the same order goes through"
    assert metric(scrape(capped), "monime_calls_in_flight") == 0


def test_a_redirect_while_busy_skips_its_lookup_and_leaves_the_order_its_turn(capped, app, simulator):
    body = checkout(capped)
    simulator.complete(body["sessionId"], deliver=False)  # paid; only a lookup would tell
    before = scrape(capped)

    with slots_held(capped, simulator):
        response = capped.get("/api/checkout/success", query_string={"orderId": body["orderId"]})

    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/checkout/success?orderId={body['orderId']}")
    skipped = metric(scrape(capped), "redirect_lookups_skipped_total", reason="busy")
    assert skipped - metric(before, "redirect_lookups_skipped_total", reason="busy") == 1
    assert lookups(simulator, body["sessionId"]) == 0
    with app.app_context():
        assert db.session.get(Order, body["orderId"]).checked_at is None, "the order's turn was not taken"

    capped.get("/api/checkout/success", query_string={"orderId": body["orderId"]})

    assert lookups(simulator, body["sessionId"]) == 1, "with a slot free the next redirect asks at once"
    assert order(capped, body["orderId"])["status"] == "completed"


def test_a_completion_needing_a_lookup_while_busy_is_503_and_its_redelivery_applies_it(capped, app, simulator):
    needs_lookup, carries_amount = checkout(capped), checkout(capped)
    event = signed_event("checkout_session.completed", needs_lookup["sessionId"])  # no line items
    before = scrape(capped)

    with slots_held(capped, simulator):
        refused = deliver(capped, event)
        applied = deliver(
            capped, signed_event("checkout_session.completed", carries_amount["sessionId"], line_items=items(5150))
        )
        assert stored_events(app)[event["id"]].outcome == "failed"
        assert order(capped, needs_lookup["orderId"])["status"] == "pending"

    assert refused.status_code == 503
    assert refused.get_json()["error"]["code"] == "monime_unavailable"
    assert refused.headers["Retry-After"] == "30"
    assert lookups(simulator, needs_lookup["sessionId"]) == 0
    assert applied.get_json()["outcome"] == "applied", "a webhook that needs no lookup takes no slot"
    shed = metric(scrape(capped), "monime_calls_shed_total", operation="get_session")
    assert shed - metric(before, "monime_calls_shed_total", operation="get_session") == 1

    redelivered = deliver(capped, event)

    assert redelivered.get_json()["outcome"] == "applied"
    assert order(capped, needs_lookup["orderId"])["status"] == "completed"


def lookups(simulator, session_id: str) -> int:
    """How many times Monime was asked about the session."""
    return sum(r["path"] == f"/v1/checkout-sessions/{session_id}" for r in simulator.requests("GET"))


# --- under gunicorn: every slot of both workers held -----------------------------------------


def test_under_gunicorn_with_every_slot_held_webhooks_health_and_reads_still_answer(database_url, simulator, tmp_path):
    """Two workers of 4 threads: 2 slots each by default (derived_max_in_flight), so 4 slow
    checkouts fill them. Everything that needs no slot is answered while they are in flight."""
    settings = PATIENT | {"GUNICORN_THREADS": "4"}
    with gunicorn(database_url, simulator.url, tmp_path / "gunicorn.log", **settings) as server:
        api = LiveClient(server.url)
        slots = 2 * monime.derived_max_in_flight(4)
        wait_for(  # each worker sizes its slots as it boots; /healthz answers once the first has
            lambda: metric(scrape(api), "monime_calls_max_in_flight") == slots, 30, f"{slots} slots over both workers"
        )
        paid, read, looked_up = checkout(api), checkout(api), checkout(api)
        completion = signed_event("checkout_session.completed", paid["sessionId"], line_items=items(5150))
        unconfirmed = signed_event("checkout_session.completed", looked_up["sessionId"])
        asked = len(simulator.requests("POST"))
        simulator.faults(delay=HOLD * 2)

        with ThreadPoolExecutor(4 * slots) as pool:
            held, shed = fill_every_slot(server.url, simulator, pool, asked, slots)
            answers = {
                path: [requests.get(server.url + path, timeout=60).status_code for _ in range(6)]
                for path in ("/healthz", "/livez", f"/api/orders/{read['orderId']}")
            }
            webhook = deliver(api, completion)
            refused = deliver(api, unconfirmed)
            redirect = api.get("/api/checkout/success", query_string={"orderId": looked_up["orderId"]})
            busy = api.post("/api/checkout", json=order_payload())
            during = scrape(api)
            still_in_flight = not any(future.done() for future in held)
            results = [future.result().status_code for future in held]
        simulator.faults()

        assert still_in_flight, "every answer above came while the slow checkouts held every slot"
        assert answers == {path: [200] * 6 for path in answers}
        assert webhook.get_json()["outcome"] == "applied"
        assert (refused.status_code, redirect.status_code) == (503, 303)
        assert busy.status_code == 503 and busy.get_json()["error"]["code"] == "monime_busy"
        assert busy.headers["Retry-After"] == "1"
        assert len(simulator.requests("POST")) == asked + slots, "nothing shed reached Monime"
        assert lookups(simulator, looked_up["sessionId"]) == 0
        assert metric(during, "monime_calls_in_flight") == slots
        assert metric(during, "monime_calls_shed_total", operation="create_session") == len(shed) + 1
        assert metric(during, "redirect_lookups_skipped_total", reason="busy") == 1
        assert results == [201] * slots
        assert all(future.result().status_code == 503 for future in shed)

        assert deliver(api, unconfirmed).get_json()["outcome"] == "applied", "redelivered once the slots are free"
        assert order(api, looked_up["orderId"])["status"] == "completed"


def fill_every_slot(url: str, simulator, pool, asked: int, slots: int) -> tuple[list, list]:
    """Send checkouts, each on a connection of its own, until Monime has `slots` of them (past
    the `asked` it had before): which worker takes a connection is the kernel's choice, so
    some land on a full worker and are shed. Returns (the futures held at Monime, those shed)."""
    sent: list = []

    def send():
        return requests.post(f"{url}/api/checkout", json=order_payload(), timeout=60)

    def filled() -> bool:
        """Whether Monime has `slots` checkouts; else one more is sent once every checkout sent
        is either at Monime or answered (shed)."""
        at_monime = len(simulator.requests("POST")) - asked
        if at_monime >= slots:
            return True
        if sum(not future.done() for future in sent) <= at_monime:
            sent.append(pool.submit(send))
        return False

    wait_for(filled, 20, lambda: f"{slots} slow checkouts at Monime; sent {len(sent)}", interval=0.02)
    wait_for(
        lambda: sum(future.done() for future in sent) >= len(sent) - slots,
        20,
        "every checkout beyond the slots to be answered (shed)",
    )
    held = [future for future in sent if not future.done()]
    assert len(held) == slots
    return held, [future for future in sent if future.done()]
