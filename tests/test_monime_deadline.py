"""A Monime that answers one byte at a time holds no path of the service beyond its budget:
the checkout (MONIME_RETRY_DEADLINE), the success redirect and a completion webhook that
needs a lookup (MONIME_VERIFY_TIMEOUT). On both databases, in process and under gunicorn,
against the simulator's trickle fault over real HTTP."""

import time

from conftest import APP_URL, service_settings
from models import WebhookEvent, db
from support import checkout, deliver, order, order_payload, signed_event

SETTINGS = service_settings("", "")
RETRY_DEADLINE = float(SETTINGS["MONIME_RETRY_DEADLINE"])  # seconds, as the service is configured in tests
VERIFY_TIMEOUT = float(SETTINGS["MONIME_VERIFY_TIMEOUT"])
TRICKLE = {"interval": 0.3}  # a byte every 0.3 s: under the 0.5 s read timeout, so no read ever times out
HARD_MARGIN = 1.0  # seconds allowed beyond a budget: a correctness bound, not a performance one
assert TRICKLE["interval"] < float(SETTINGS["MONIME_READ_TIMEOUT"])


def stored_outcome(app, event_id: str) -> str | None:
    with app.app_context():
        return db.session.get(WebhookEvent, event_id).outcome


def timed(call):
    """(what call returned, seconds it took)."""
    started = time.monotonic()
    return call(), time.monotonic() - started


def test_a_checkout_is_a_504_within_the_retry_deadline_and_its_retry_makes_one_session(api, simulator):
    simulator.faults(trickle=TRICKLE)

    response, took = timed(lambda: api.post("/api/checkout", json=order_payload("ord_trickled")))

    assert response.status_code == 504
    error = response.get_json()["error"]
    assert error["code"] == "monime_timeout"
    assert f"within the {RETRY_DEADLINE:.1f} s budget" in error["message"]
    assert took < RETRY_DEADLINE + HARD_MARGIN
    assert order(api, "ord_trickled")["checkoutSessionId"] is None

    simulator.faults()
    retried = checkout(api, orderId="ord_trickled")

    assert [s["id"] for s in simulator.sessions()] == [retried["sessionId"]]  # the trickled create's session
    assert len({p["idempotencyKey"] for p in simulator.requests("POST")}) == 1


def test_the_success_redirect_is_a_303_within_the_verify_timeout(api, simulator):
    body = checkout(api, orderId="ord_redirect")
    simulator.complete(body["sessionId"], deliver=False)
    simulator.faults(trickle=TRICKLE)

    response, took = timed(lambda: api.get("/api/checkout/success", query_string={"orderId": "ord_redirect"}))

    assert response.status_code == 303
    assert response.headers["Location"] == f"{APP_URL}/checkout/success?orderId=ord_redirect"
    assert took < VERIFY_TIMEOUT + HARD_MARGIN
    assert len(simulator.requests("GET")) >= 1, "the redirect did ask Monime"
    assert order(api, "ord_redirect")["status"] == "pending"  # nothing confirmed, nothing changed


def test_a_completion_needing_a_lookup_is_a_503_within_the_verify_timeout_and_kept_failed(api, app, simulator):
    body = checkout(api)
    simulator.complete(body["sessionId"], deliver=False)
    event = signed_event("checkout_session.completed", body["sessionId"])  # no line items: the amount is looked up
    simulator.faults(trickle=TRICKLE)

    response, took = timed(lambda: deliver(api, event))

    assert response.status_code == 503
    assert took < VERIFY_TIMEOUT + HARD_MARGIN
    assert stored_outcome(app, event["id"]) == "failed"
    assert order(api, body["orderId"])["status"] == "pending"

    simulator.faults()
    assert deliver(api, event).get_json()["outcome"] == "applied"  # Monime's redelivery, once it answers
    assert order(api, body["orderId"])["status"] == "completed"
