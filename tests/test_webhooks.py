"""POST /api/webhooks/monime: signatures, storage, and the order state rules."""

import hashlib
import json
import logging
import time

import pytest
import requests

import logs
from conftest import PREVIOUS_WEBHOOK_SECRET, LiveClient
from models import Order, WebhookEvent, WebhookEventVariant, db
from support import (
    ORDER_TOTAL,
    WEBHOOK_PATH,
    WEBHOOK_SECRET,
    across_both_workers,
    all_at_once,
    checkout,
    deliver,
    items,
    metric,
    order,
    order_payload,
    scrape,
    signed,
    signed_event,
)


def stored_events(app) -> dict[str, WebhookEvent]:
    with app.app_context():
        return {event.id: event for event in db.session.scalars(db.select(WebhookEvent))}


def stored_variants(app) -> list[tuple[str, bytes]]:
    """(event id, body) of every other body kept for a stored event id, sorted."""
    with app.app_context():
        return sorted((v.event_id, v.body.encode()) for v in db.session.scalars(db.select(WebhookEventVariant)))


def test_a_completed_session_completes_the_order(api, app, simulator):
    body = checkout(api, orderId="ord_happy")
    assert order(api, "ord_happy")["orderNumber"] is None, "no order number before a payment"
    completion = simulator.complete(body["sessionId"], deliver=False)
    event = completion["event"]

    response = deliver(api, event)

    assert response.status_code == 200
    assert response.get_json() == {"received": True, "eventId": event["id"], "duplicate": False, "outcome": "applied"}
    stored_order = order(api, "ord_happy")
    assert stored_order["status"] == "completed"
    assert stored_order["orderNumber"] == completion["session"]["orderNumber"] is not None
    stored = stored_events(app)[event["id"]]
    assert (stored.outcome, stored.order_id, stored.session_id) == ("applied", "ord_happy", body["sessionId"])
    assert stored.body == event["body"]


def test_the_simulator_delivers_the_signed_webhook_to_the_running_service(live_server, app, simulator):
    from conftest import LiveClient

    api = LiveClient(live_server.url)
    simulator.configure(webhook_url=f"{live_server.url}{WEBHOOK_PATH}")
    body = checkout(api, orderId="ord_delivered")

    result = simulator.complete(body["sessionId"])

    assert result["delivery"]["status"] == 200
    assert order(api, "ord_delivered")["status"] == "completed"


@pytest.mark.parametrize("ending", ["cancel", "expire"])
def test_a_cancelled_or_expired_session_ends_the_pending_order(api, simulator, ending):
    body = checkout(api)
    deliver(api, simulator.finish(body["sessionId"], ending, deliver=False)["event"])
    stored = order(api, body["orderId"])
    assert stored["status"] == {"cancel": "cancelled", "expire": "expired"}[ending]
    assert stored["orderNumber"] is None


# --- signatures ------------------------------------------------------------------


def completion(api, simulator) -> tuple[str, dict]:
    body = checkout(api)
    return body["orderId"], simulator.complete(body["sessionId"], deliver=False)["event"]


def tamper_body(event):
    return event | {"body": event["body"].replace('"completed"', '"complete\\u0064"', 1)}


def header(event, value):
    return event | {"headers": {"Content-Type": "application/json", "Monime-Signature": value}}


SIGNATURE_FAILURES = {
    "missing header": lambda e: e | {"headers": {"Content-Type": "application/json"}},
    "empty header": lambda e: header(e, ""),
    "malformed header": lambda e: header(e, "sha256=abc"),
    "no v1": lambda e: header(e, f"t={int(time.time())}"),
    "wrong secret": lambda e: signed(e["body"], secret="whsec_someone_else"),
    "stale timestamp": lambda e: signed(e["body"], timestamp=int(time.time()) - 301),
    "future timestamp": lambda e: signed(e["body"], timestamp=int(time.time()) + 301),
    "tampered body": tamper_body,
    "signature of another body": lambda e: header(e, signed(b"{}")["headers"]["Monime-Signature"]),
}


@pytest.mark.parametrize("spoil", SIGNATURE_FAILURES.values(), ids=SIGNATURE_FAILURES.keys())
def test_a_bad_signature_is_401_and_changes_nothing(api, app, simulator, spoil):
    order_id, event = completion(api, simulator)

    response = deliver(api, spoil(event))

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_signature"
    assert order(api, order_id)["status"] == "pending"
    assert stored_events(app) == {}


def test_an_event_signed_with_the_previous_secret_is_accepted_during_rotation(api, simulator):
    order_id, event = completion(api, simulator)
    response = deliver(api, signed(event["body"], secret=PREVIOUS_WEBHOOK_SECRET))
    assert response.status_code == 200
    assert order(api, order_id)["status"] == "completed"


def test_a_body_over_one_mebibyte_is_413_and_changes_nothing(api, app):
    body = json.dumps({"padding": "x" * (1024 * 1024)})
    response = deliver(api, signed(body))
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"
    assert stored_events(app) == {}


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[]",
        '"event"',
        "{}",
        '{"event": {"name": "x"}}',
        '{"event": {"id": 1, "name": "x"}}',
        b"\xff\xfe",
        '{"event": {"id": "evt\\u0000", "name": "x"}}',
        '{"event": {"id": "e", "name": "x"}}'.encode("utf-16"),
    ],
)
def test_a_signed_body_that_is_not_an_event_is_400(api, app, body):
    response = deliver(api, signed(body))
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed_event"
    assert stored_events(app) == {}


# --- once per event ----------------------------------------------------------------


def test_a_redelivered_event_is_acknowledged_and_applied_once(api, app, simulator):
    order_id, event = completion(api, simulator)

    first, second = deliver(api, event), deliver(api, event)

    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.get_json()["duplicate"], second.get_json()["duplicate"]) == (False, True)
    assert list(stored_events(app)) == [event["id"]]
    assert stored_events(app)[event["id"]].attempts == 1
    assert order(api, order_id)["status"] == "completed"
    assert order(api, order_id)["review"] is None, "an identical body is a plain duplicate"
    assert stored_variants(app) == []


REDELIVERED = "was delivered again with a different body"


def test_an_event_id_delivered_again_with_a_different_body_is_acknowledged_kept_and_holds_the_order(
    api, app, simulator
):
    order_id, event = completion(api, simulator)
    session_id = order(api, order_id)["checkoutSessionId"]
    deliver(api, event)
    before = scrape(api)
    other = signed_event("checkout_session.cancelled", session_id, event_id=event["id"])
    third = signed_event("checkout_session.completed", session_id, line_items=items(1), event_id=event["id"])

    responses = [deliver(api, other), deliver(api, other), deliver(api, third)]

    assert [r.status_code for r in responses] == [200] * 3
    assert {(r.get_json()["duplicate"], r.get_json()["outcome"]) for r in responses} == {(True, "held")}
    stored = order(api, order_id)
    assert stored["status"] == "completed", "only the first body was applied"
    assert stored["review"] == {"reason": f"event {event['id']} {REDELIVERED}", "eventId": event["id"]}
    assert stored_events(app)[event["id"]].body == event["body"]
    assert stored_variants(app) == sorted([(event["id"], other["body"]), (event["id"], third["body"])])
    assert metric(scrape(api), "webhook_event_variants_total") - metric(before, "webhook_event_variants_total") == 3


def test_a_different_body_is_logged_as_a_warning_by_its_hash_never_its_content(client, simulator, caplog):
    order_id, event = completion(client, simulator)
    deliver(client, event)
    other = signed_event(
        "checkout_session.cancelled", order(client, order_id)["checkoutSessionId"], event_id=event["id"]
    )
    caplog.set_level(logging.INFO)

    deliver(client, other)

    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    line = logs.JsonFormatter().format(warning)
    assert json.loads(line)["eventId"] == event["id"]
    assert json.loads(line)["orderIds"] == [order_id]
    assert hashlib.sha256(other["body"]).hexdigest() in line
    assert "checkout_session.cancelled" not in line and WEBHOOK_SECRET not in line


def test_a_different_body_of_a_completion_without_line_items_is_caught_before_asking_monime(api, app, simulator):
    body = checkout(api)
    simulator.complete(body["sessionId"], deliver=False)
    first = signed_event("checkout_session.completed", body["sessionId"])
    assert deliver(api, first).get_json()["outcome"] == "applied"
    other = signed_event("checkout_session.completed", body["sessionId"], reference="ord_x", event_id=first["id"])

    response = deliver(api, other)

    assert (response.status_code, response.get_json()["outcome"]) == (200, "held")
    assert len(simulator.requests("GET")) == 1, "Monime was asked about the first body only"
    assert REDELIVERED in order(api, body["orderId"])["review"]["reason"]


def test_a_different_body_never_takes_over_an_event_whose_processing_failed(api, app, simulator):
    body = checkout(api)
    first = signed_event("checkout_session.completed", body["sessionId"])
    simulator.faults(fail=1000)
    assert deliver(api, first).status_code == 503
    simulator.faults()
    asked = len(simulator.requests("GET"))
    other = signed_event(
        "checkout_session.completed", body["sessionId"], line_items=items(ORDER_TOTAL), event_id=first["id"]
    )

    response = deliver(api, other)

    assert (response.status_code, response.get_json()["outcome"]) == (200, "held")
    stored = order(api, body["orderId"])
    assert (stored["status"], stored["review"]["eventId"]) == ("pending", first["id"])
    assert stored_events(app)[first["id"]].outcome == "failed", "the first body is still there to replay"
    assert len(simulator.requests("GET")) == asked, "nothing to confirm: the body is not processed"


def test_two_bodies_of_one_event_id_delivered_at_once_apply_once_and_hold_the_order(live_server, app, simulator):
    api = LiveClient(live_server.url)

    def burst(_attempt: int) -> int:
        body = checkout(api)
        first = simulator.complete(body["sessionId"], deliver=False)["event"]
        other = signed_event(
            "checkout_session.completed", body["sessionId"], line_items=items(ORDER_TOTAL), event_id=first["id"]
        )
        queue = iter([first, other] * 5)

        responses = all_at_once(10, lambda: requests.post(live_server.url + WEBHOOK_PATH, **as_post(next(queue))))

        assert [r.status_code for r in responses] == [200] * 10
        outcomes = sorted(str(r.json()["outcome"]) for r in responses)
        assert outcomes == ["None"] * 4 + ["applied"] + ["held"] * 5, outcomes
        stored = order(api, body["orderId"])
        assert (stored["status"], stored["review"]["eventId"]) == ("completed", first["id"])
        assert REDELIVERED in stored["review"]["reason"]
        assert len([v for v in stored_variants(app) if v[0] == first["id"]]) == 1
        return len(responses)

    across_both_workers(live_server, WEBHOOK_PATH, burst)


def as_post(event: dict) -> dict:
    return {"data": event["body"], "headers": event["headers"], "timeout": 30}


@pytest.mark.parametrize("late", ["checkout_session.expired", "checkout_session.cancelled"])
def test_a_completed_order_stays_completed_whatever_arrives_later(api, app, simulator, late):
    order_id, event = completion(api, simulator)
    deliver(api, event)
    session_id = order(api, order_id)["checkoutSessionId"]

    response = deliver(api, signed_event(late, session_id))

    assert response.get_json()["outcome"] == "unchanged"
    assert order(api, order_id)["status"] == "completed"


@pytest.mark.parametrize("early", ["checkout_session.expired", "checkout_session.cancelled"])
def test_a_completion_wins_over_an_earlier_expiry_or_cancellation(api, simulator, early):
    body = checkout(api)
    deliver(api, signed_event(early, body["sessionId"]))
    assert order(api, body["orderId"])["status"] != "pending"

    response = deliver(api, simulator.complete(body["sessionId"], deliver=False)["event"])

    assert response.get_json()["outcome"] == "applied"
    assert order(api, body["orderId"])["status"] == "completed"


def test_a_repeated_completion_under_a_new_event_id_changes_nothing(api, app, simulator):
    order_id, event = completion(api, simulator)
    deliver(api, event)
    session_id = order(api, order_id)["checkoutSessionId"]

    again = deliver(api, signed_event("checkout_session.completed", session_id, line_items=items(ORDER_TOTAL)))

    assert again.get_json()["outcome"] == "unchanged"
    assert order(api, order_id)["review"] is None


# --- amounts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line_items",
    [items(ORDER_TOTAL - 1), items(ORDER_TOTAL, currency="USD"), items(1, quantity=ORDER_TOTAL + 1)],
    ids=["amount lower", "other currency", "amount higher"],
)
def test_a_completion_for_another_amount_is_held_for_review(api, app, line_items):
    body = checkout(api)
    event = signed_event("checkout_session.completed", body["sessionId"], line_items=line_items)

    response = deliver(api, event)

    assert response.status_code == 200
    assert response.get_json()["outcome"] == "held"
    stored = order(api, body["orderId"])
    assert stored["status"] == "pending"
    assert stored["review"]["eventId"] == event["id"]
    assert "amount mismatch" in stored["review"]["reason"]
    assert stored_events(app)[event["id"]].outcome == "held"


@pytest.mark.parametrize(
    "line_items",
    [
        [{"name": "x", "price": {"currency": "SLE", "value": "5300"}, "quantity": 1}],
        [{"name": "x", "price": {"currency": "SLE", "value": 5300.0}}],
        items(100) + items(5200, currency="USD"),
        [{"name": "x"}],
        ["not an item"],
    ],
    ids=["value as string", "value as float", "mixed currencies", "no price", "not an object"],
)
def test_a_completion_whose_amount_cannot_be_read_is_held(api, line_items):
    body = checkout(api)
    response = deliver(api, signed_event("checkout_session.completed", body["sessionId"], line_items=line_items))
    assert response.get_json()["outcome"] == "held"
    assert order(api, body["orderId"])["status"] == "pending"


def test_a_completion_without_line_items_is_checked_against_monimes_session(api, simulator):
    body = checkout(api)
    simulator.complete(body["sessionId"], deliver=False)

    response = deliver(api, signed_event("checkout_session.completed", body["sessionId"]))

    assert response.get_json()["outcome"] == "applied"
    assert order(api, body["orderId"])["status"] == "completed"
    assert [r["path"] for r in simulator.requests("GET")] == [f"/v1/checkout-sessions/{body['sessionId']}"]


def test_a_completion_of_a_session_monime_does_not_know_is_held(api, simulator):
    body = checkout(api)
    simulator.reset()  # Monime forgets the session

    response = deliver(api, signed_event("checkout_session.completed", body["sessionId"]))

    assert response.get_json()["outcome"] == "held"
    assert "does not know" in order(api, body["orderId"])["review"]["reason"]


def test_when_monime_cannot_confirm_a_completion_the_event_is_kept_failed_and_redelivery_applies_it(
    api, app, simulator
):
    body = checkout(api)
    event = signed_event("checkout_session.completed", body["sessionId"])
    simulator.faults(fail=1000)

    refused = deliver(api, event)

    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert stored_events(app)[event["id"]].outcome == "failed"
    assert order(api, body["orderId"])["status"] == "pending"

    simulator.faults()
    accepted = deliver(api, event)

    assert accepted.get_json() == {"received": True, "eventId": event["id"], "duplicate": False, "outcome": "applied"}
    assert stored_events(app)[event["id"]].attempts == 2
    assert order(api, body["orderId"])["status"] == "completed"


# --- events that belong to no order, or to an earlier session ----------------------------


def test_an_unknown_event_name_is_stored_and_acknowledged(api, app):
    event = signed_event("payment.created", "pay-123")
    response = deliver(api, event)
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "ignored"
    assert stored_events(app)[event["id"]].name == "payment.created"


def test_an_event_for_an_unknown_session_is_stored_and_acknowledged(api, app):
    event = signed_event("checkout_session.completed", "scs-nobody", reference="ord_nobody", line_items=items(1))
    response = deliver(api, event)
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "unmatched"
    assert stored_events(app)[event["id"]].outcome == "unmatched"


def test_the_reference_finds_an_order_whose_session_was_never_recorded(api, simulator):
    simulator.faults(drop=1000)  # Monime makes the session; we never learn its id
    assert api.post("/api/checkout", json=order_payload("ord_by_reference")).status_code == 502
    simulator.faults()
    [session] = simulator.sessions()

    response = deliver(api, simulator.complete(session["id"], deliver=False)["event"])

    assert response.get_json()["outcome"] == "applied"
    assert order(api, "ord_by_reference")["status"] == "completed"
    assert order(api, "ord_by_reference")["checkoutSessionId"] == session["id"]


def test_the_reference_does_not_claim_an_order_that_has_its_own_session(api):
    body = checkout(api)
    event = signed_event(
        "checkout_session.completed", "scs-stranger", reference=body["orderId"], line_items=items(ORDER_TOTAL)
    )
    assert deliver(api, event).get_json()["outcome"] == "unmatched"
    assert order(api, body["orderId"])["status"] == "pending"


def cancelled_then_resubmitted(api, simulator, order_id: str) -> tuple[str, str]:
    """An order whose first session was cancelled and which got a second one: (first, second) session ids."""
    first = checkout(api, orderId=order_id)["sessionId"]
    deliver(api, simulator.cancel(first, deliver=False)["event"])
    second = api.post("/api/checkout", json=order_payload(order_id)).get_json()["sessionId"]
    return first, second


def test_a_late_completion_of_an_earlier_session_still_completes_the_order(api, simulator):
    first, second = cancelled_then_resubmitted(api, simulator, "ord_two_sessions")

    response = deliver(api, simulator.complete(first, deliver=False, force=True)["event"])

    assert response.get_json()["outcome"] == "applied"
    stored = order(api, "ord_two_sessions")
    assert stored["status"] == "completed"
    assert stored["checkoutSessionId"] == first != second


def test_a_late_expiry_of_an_earlier_session_changes_nothing(api, simulator):
    first, second = cancelled_then_resubmitted(api, simulator, "ord_newer")

    response = deliver(api, simulator.expire(first, deliver=False, force=True)["event"])

    assert response.get_json()["outcome"] == "unchanged"
    assert order(api, "ord_newer")["status"] == "pending"
    assert order(api, "ord_newer")["checkoutSessionId"] == second


def test_a_second_session_paid_for_a_completed_order_is_held_as_a_double_payment(api, simulator):
    first, second = cancelled_then_resubmitted(api, simulator, "ord_double")
    paying = simulator.complete(second, deliver=False)
    deliver(api, paying["event"])

    late = simulator.complete(first, deliver=False, force=True)
    response = deliver(api, late["event"])

    assert response.get_json()["outcome"] == "held"
    stored = order(api, "ord_double")
    assert (stored["status"], stored["checkoutSessionId"]) == ("completed", second)
    assert stored["orderNumber"] == paying["session"]["orderNumber"] != late["session"]["orderNumber"]
    assert "double payment" in stored["review"]["reason"]


def test_ids_no_database_can_store_in_an_event_are_not_matched_and_change_nothing(api, app):
    body = checkout(api)
    envelope = {
        "event": {"id": "evt-nul", "name": "checkout_session.completed"},
        "data": {"id": "scs-\ud800", "reference": "ord\x00", "lineItems": {"data": items(1)}},
    }

    response = deliver(api, signed(json.dumps(envelope)))

    assert response.status_code == 200
    assert response.get_json()["outcome"] == "unmatched"
    assert order(api, body["orderId"])["status"] == "pending"


def test_a_completion_without_a_session_id_is_unmatched_without_asking_monime(api, simulator):
    body = checkout(api, orderId="ord_no_session")
    envelope = {
        "event": {"id": "evt-no-session", "name": "checkout_session.completed"},
        "data": {"reference": "ord_no_session"},
    }

    response = deliver(api, signed(json.dumps(envelope)))

    assert response.get_json()["outcome"] == "unmatched"
    assert simulator.requests("GET") == []
    assert order(api, body["orderId"])["status"] == "pending"


@pytest.mark.parametrize("ending", ["checkout_session.cancelled", "checkout_session.expired"])
def test_an_ending_with_unreadable_line_items_still_ends_the_order(api, ending):
    body = checkout(api)
    event = signed_event(ending, body["sessionId"], line_items=["not an item"])
    assert deliver(api, event).get_json()["outcome"] == "applied"
    assert order(api, body["orderId"])["status"] != "pending"


# --- Monime's order number ------------------------------------------------------------------


def test_a_completion_without_line_items_stores_the_order_number_of_monimes_lookup(api, simulator):
    body = checkout(api)
    paid = simulator.complete(body["sessionId"], deliver=False)["session"]

    response = deliver(api, signed_event("checkout_session.completed", body["sessionId"]))  # no orderNumber either

    assert response.get_json()["outcome"] == "applied"
    assert len(simulator.requests("GET")) == 1, "the completion was confirmed with Monime"
    assert order(api, body["orderId"])["orderNumber"] == paid["orderNumber"] is not None


@pytest.mark.parametrize(
    "number",
    ["N" * 100_000, "AB\x00CD", "AB\ud800", "AB\nCD", "", 1234567890, 1.5, True, ["AB12"], {"value": "AB12"}],
    ids=["huge", "nul", "lone-surrogate", "newline", "empty", "integer", "float", "boolean", "list", "object"],
)
def test_an_order_number_no_one_should_store_completes_the_order_without_it(api, app, number):
    body = checkout(api)
    event = signed_event(
        "checkout_session.completed", body["sessionId"], line_items=items(ORDER_TOTAL), orderNumber=number
    )

    response = deliver(api, event)

    assert (response.status_code, response.get_json()["outcome"]) == (200, "applied")
    stored = order(api, body["orderId"])
    assert (stored["status"], stored["orderNumber"]) == ("completed", None)
    with app.app_context():
        assert db.session.get(Order, body["orderId"]).monime_order_number is None


def test_the_log_line_of_a_completion_carries_the_order_number_and_a_bad_one_is_logged_without_its_value(
    client, simulator, caplog
):
    caplog.set_level(logging.INFO)
    body = checkout(client)
    completion = simulator.complete(body["sessionId"], deliver=False)
    other = checkout(client)
    hostile = "\x00" + "evil" * 1000

    deliver(client, completion["event"])
    deliver(client, signed_event("checkout_session.completed", other["sessionId"], line_items=items(ORDER_TOTAL),
                                 orderNumber=hostile))  # fmt: skip

    lines = [json.loads(logs.JsonFormatter().format(record)) for record in caplog.records]
    processed = {line["orderId"]: line for line in lines if line["message"] == "webhook event processed"}
    assert processed[body["orderId"]]["orderNumber"] == completion["session"]["orderNumber"] is not None
    assert processed[other["orderId"]]["orderNumber"] is None
    [ignored] = [line for line in lines if line["message"].startswith("Monime's orderNumber ignored")]
    assert (ignored["sessionId"], ignored["type"], ignored["length"]) == (other["sessionId"], "str", len(hostile))
    assert "evil" not in caplog.text
