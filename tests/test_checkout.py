"""POST /api/checkout: validation, storage, Monime calls, retries and resubmissions."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import PUBLIC_BASE_URL, make_app, service_settings
from simulator import ACCESS_TOKEN, openapi
from support import ORDER_TOTAL, checkout, deliver, order, order_payload, wait_for


def test_a_checkout_creates_one_session_and_stores_the_order(api, simulator):
    body = checkout(api, orderId="ord_1001")

    [session] = simulator.sessions()
    assert body == {"orderId": "ord_1001", "sessionId": session["id"], "redirectUrl": session["redirectUrl"]}
    stored = order(api, "ord_1001")
    assert stored["status"] == "pending"
    assert stored["amount"] == {"currency": "SLE", "value": ORDER_TOTAL}
    assert stored["checkoutSessionId"] == session["id"]
    assert stored["review"] is None


def test_the_request_to_monime_is_the_official_create_checkout_session(api, simulator):
    checkout(api, orderId="ord:42", description="Two bundles")

    [sent] = simulator.requests("POST")
    assert openapi.errors(openapi.CREATE_SESSION, sent["body"]) == []
    assert 0 < len(sent["idempotencyKey"]) <= 64
    assert sent["body"]["successUrl"] == f"{PUBLIC_BASE_URL}/api/checkout/success?orderId=ord:42"
    assert sent["body"]["cancelUrl"] == f"{PUBLIC_BASE_URL}/api/checkout/cancel?orderId=ord:42"
    assert sent["body"]["reference"] == "ord:42"
    assert sent["body"]["metadata"] == {"cartId": "cart_123", "orderId": "ord:42"}
    assert sent["body"]["callbackState"] == "state_cart_123"
    assert sent["body"]["description"] == "Two bundles"
    assert [item["quantity"] for item in sent["body"]["lineItems"]] == [2, 1]


def test_the_total_is_computed_on_the_server_in_minor_units(api):
    line_items = [
        {"name": "a", "price": {"currency": "USD", "value": 1999}, "quantity": 3},
        {"name": "b", "price": {"currency": "USD", "value": 1}},
        {"name": "c", "price": {"currency": "USD", "value": 0}, "quantity": 100_000},
    ]
    body = checkout(api, lineItems=line_items)
    assert order(api, body["orderId"])["amount"] == {"currency": "USD", "value": 3 * 1999 + 1}


def test_a_client_metadata_order_id_is_overwritten_by_the_service(api, simulator):
    checkout(api, orderId="ord_real", metadata={"orderId": "ord_forged"})
    assert simulator.requests("POST")[0]["body"]["metadata"] == {"orderId": "ord_real"}


def price(value, currency="SLE"):
    return {"currency": currency, "value": value}


def item(**overrides):
    return {"type": "custom", "name": "Bundle", "price": price(100), "quantity": 1} | overrides


INVALID = {
    "name missing": ({"name": None}, "name"),
    "name too long": ({"name": "n" * 151}, "name"),
    "name empty": ({"name": ""}, "name"),
    "name not a string": ({"name": 7}, "name"),
    "name with a NUL": ({"name": "Order\x00 1"}, "name"),
    "name with an unpaired surrogate": ({"name": "Order \ud800"}, "name"),
    "orderId missing": ({"orderId": None}, "orderId"),
    "orderId too long": ({"orderId": "o" * 101}, "orderId"),
    "orderId with a slash": ({"orderId": "a/b"}, "orderId"),
    "orderId with a space": ({"orderId": "a b"}, "orderId"),
    "orderId empty": ({"orderId": ""}, "orderId"),
    "orderId with unicode": ({"orderId": "ordé"}, "orderId"),
    "orderId with a trailing newline": ({"orderId": "ord_1\n"}, "orderId"),
    "orderId with a NUL": ({"orderId": "ord\x00"}, "orderId"),
    "no line items": ({"lineItems": []}, "lineItems"),
    "line items missing": ({"lineItems": None}, "lineItems"),
    "line items not a list": ({"lineItems": {"name": "x"}}, "lineItems"),
    "17 line items": ({"lineItems": [item()] * 17}, "lineItems"),
    "item name too long": ({"lineItems": [item(name="i" * 101)]}, "lineItems"),
    "item name missing": ({"lineItems": [{"price": price(1)}]}, "lineItems"),
    "item type not custom": ({"lineItems": [item(type="catalog")]}, "lineItems"),
    "currency unsupported": ({"lineItems": [item(price=price(100, "EUR"))]}, "lineItems"),
    "currency lowercase": ({"lineItems": [item(price=price(100, "sle"))]}, "lineItems"),
    "two currencies": ({"lineItems": [item(), item(price=price(5, "USD"))]}, "lineItems"),
    "negative value": ({"lineItems": [item(price=price(-1))]}, "lineItems"),
    "fractional value": ({"lineItems": [item(price=price(10.5))]}, "lineItems"),
    "value as a float": ({"lineItems": [item(price=price(10.0))]}, "lineItems"),
    "value as a string": ({"lineItems": [item(price=price("100"))]}, "lineItems"),
    "value as a boolean": ({"lineItems": [item(price=price(True))]}, "lineItems"),
    "value absurdly large": ({"lineItems": [item(price=price(10**13))]}, "lineItems"),
    "price without value": ({"lineItems": [item(price={"currency": "SLE"})]}, "lineItems"),
    "price with extra field": ({"lineItems": [item(price=price(1) | {"tax": 1})]}, "lineItems"),
    "quantity zero": ({"lineItems": [item(quantity=0)]}, "lineItems"),
    "quantity too large": ({"lineItems": [item(quantity=100_001)]}, "lineItems"),
    "quantity fractional": ({"lineItems": [item(quantity=1.5)]}, "lineItems"),
    "item description too long": ({"lineItems": [item(description="d" * 101)]}, "lineItems"),
    "item reference too long": ({"lineItems": [item(reference="r" * 101)]}, "lineItems"),
    "item references repeated": ({"lineItems": [item(reference="r"), item(reference="r")]}, "lineItems"),
    "item unknown field": ({"lineItems": [item(images=["https://x"])]}, "lineItems"),
    "64 metadata pairs": ({"metadata": {f"k{i}": "v" for i in range(64)}}, "metadata"),
    "metadata value too long": ({"metadata": {"k": "v" * 256}}, "metadata"),
    "metadata key too long": ({"metadata": {"k" * 101: "v"}}, "metadata"),
    "metadata value not a string": ({"metadata": {"k": 1}}, "metadata"),
    "metadata not an object": ({"metadata": ["k"]}, "metadata"),
    "metadata value with a NUL": ({"metadata": {"k": "\x00"}}, "metadata"),
    "metadata key with an unpaired surrogate": ({"metadata": {"\udc00": "v"}}, "metadata"),
    "item name with a NUL": ({"lineItems": [item(name="a\x00")]}, "lineItems"),
    "callbackState with a NUL": ({"callbackState": "\x00"}, "callbackState"),
    "callbackState too long": ({"callbackState": "c" * 256}, "callbackState"),
    "description too long": ({"description": "d" * 1001}, "description"),
    "unknown field": ({"successUrl": "https://evil.example"}, "successUrl"),
    "status from the client": ({"status": "completed"}, "status"),
}


@pytest.mark.parametrize(("change", "field"), INVALID.values(), ids=INVALID.keys())
def test_an_invalid_order_is_refused_naming_the_field_and_changes_nothing(api, simulator, change, field):
    payload = order_payload(order_id="ord_invalid")
    payload.update(change)
    payload = {key: value for key, value in payload.items() if value is not None}

    response = api.post("/api/checkout", json=payload)

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed"
    assert field in error["fields"]
    assert simulator.requests() == []
    assert api.get("/api/orders/ord_invalid").status_code == 404


def test_the_limits_themselves_are_accepted(api, simulator):
    payload = order_payload(
        order_id="o" * 100,
        name="n" * 150,
        description="d" * 1000,
        callbackState="c" * 255,
        metadata={f"k{i:02}" + "k" * 96: "v" * 255 for i in range(63)},
        lineItems=[item(name="i" * 100, description="d" * 100, reference=f"r{i}" + "r" * 97) for i in range(16)],
    )
    response = api.post("/api/checkout", json=payload)
    assert response.status_code == 201, response.get_json()
    [sent] = simulator.requests("POST")
    assert openapi.errors(openapi.CREATE_SESSION, sent["body"]) == []
    assert len(sent["body"]["successUrl"]) <= 255


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ("[1, 2]", "application/json", 400),
        ('"a string"', "application/json", 400),
        ("name=x", "application/x-www-form-urlencoded", 415),
        ("", "text/plain", 415),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(api, simulator, data, content_type, status):
    response = api.post("/api/checkout", data=data, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.get_json()["error"]["message"]
    assert simulator.requests() == []


def test_the_same_order_again_while_pending_returns_the_same_session(api, simulator):
    first = checkout(api, orderId="ord_again")
    again = api.post("/api/checkout", json=order_payload("ord_again"))

    assert again.status_code == 200
    assert again.get_json() == first
    assert len(simulator.sessions()) == 1


def test_the_same_order_id_with_other_content_is_a_conflict(api, simulator):
    checkout(api, orderId="ord_conflict")
    other = order_payload("ord_conflict")
    other["lineItems"][0]["price"]["value"] = 1

    response = api.post("/api/checkout", json=other)

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "order_conflict"
    assert order(api, "ord_conflict")["amount"]["value"] == ORDER_TOTAL
    assert len(simulator.sessions()) == 1


def test_a_completed_order_cannot_be_submitted_again(api, simulator):
    body = checkout(api, orderId="ord_paid")
    deliver(api, simulator.complete(body["sessionId"], deliver=False)["event"])
    assert order(api, "ord_paid")["status"] == "completed"

    response = api.post("/api/checkout", json=order_payload("ord_paid"))

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "order_completed"
    assert len(simulator.sessions()) == 1


@pytest.mark.parametrize("ending", ["cancel", "expire"])
def test_after_a_cancelled_or_expired_session_the_order_gets_a_new_session(api, simulator, ending):
    first = checkout(api, orderId="ord_retry")
    assert deliver(api, simulator.finish(first["sessionId"], ending, deliver=False)["event"]).status_code == 200
    assert order(api, "ord_retry")["status"] in ("cancelled", "expired")

    second = api.post("/api/checkout", json=order_payload("ord_retry"))

    assert second.status_code == 201
    assert second.get_json()["sessionId"] != first["sessionId"]
    stored = order(api, "ord_retry")
    assert stored["status"] == "pending"
    assert stored["checkoutSessionId"] == second.get_json()["sessionId"]
    keys = [r["idempotencyKey"] for r in simulator.requests("POST")]
    assert len(keys) == 2 and keys[0] != keys[1]


# --- Monime failing -------------------------------------------------------------


def test_a_5xx_is_retried_with_the_same_key_and_makes_one_session(api, simulator):
    simulator.faults(fail=2, fail_status=503, retry_after=None)  # backing off; a Retry-After: below

    body = checkout(api)

    posts = simulator.requests("POST")
    assert len(posts) == 3
    assert len({p["idempotencyKey"] for p in posts}) == 1
    assert [s["id"] for s in simulator.sessions()] == [body["sessionId"]]


def test_a_dropped_connection_is_retried_with_the_same_key_and_makes_one_session(api, simulator):
    simulator.faults(drop=1)  # Monime makes the session, the answer is lost

    body = checkout(api)

    posts = simulator.requests("POST")
    assert len(posts) == 2
    assert posts[0]["idempotencyKey"] == posts[1]["idempotencyKey"]
    assert [s["id"] for s in simulator.sessions()] == [body["sessionId"]]


def test_a_timeout_is_retried_with_the_same_key_and_makes_one_session(api, simulator):
    simulator.faults(delay=0.8, slow=1)  # longer than the 0.5 s read timeout, once

    body = checkout(api)

    posts = simulator.requests("POST")
    assert len(posts) == 2
    assert posts[0]["idempotencyKey"] == posts[1]["idempotencyKey"]
    assert [s["id"] for s in simulator.sessions()] == [body["sessionId"]]


@pytest.mark.parametrize(("faults", "status", "code"), [
    ({"fail": 1000, "fail_status": 503, "retry_after": None}, 502, "monime_unavailable"),
    ({"fail": 1000, "fail_status": 500}, 502, "monime_unavailable"),
    ({"drop": 1000}, 502, "monime_unavailable"),
    ({"delay": 0.8}, 504, "monime_timeout"),
])  # fmt: skip
def test_monime_down_is_a_502_or_504_that_never_shows_the_token(api, simulator, faults, status, code):
    simulator.faults(**faults)

    response = api.post("/api/checkout", json=order_payload("ord_down"))

    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert ACCESS_TOKEN not in response.text
    posts = simulator.requests("POST")
    assert len(posts) >= 2, "the call is retried"
    assert len({p["idempotencyKey"] for p in posts}) == 1
    assert order(api, "ord_down")["checkoutSessionId"] is None


def test_after_monime_recovers_the_same_order_reuses_its_key(api, simulator):
    simulator.faults(drop=1000)  # every attempt makes a session whose answer is lost
    assert api.post("/api/checkout", json=order_payload("ord_recover")).status_code == 502
    simulator.faults()

    response = api.post("/api/checkout", json=order_payload("ord_recover"))

    assert response.status_code == 201
    assert len({p["idempotencyKey"] for p in simulator.requests("POST")}) == 1
    assert [s["id"] for s in simulator.sessions()] == [response.get_json()["sessionId"]]


def test_a_refusal_by_monime_is_a_502_naming_monimes_reason_without_the_token(database_url, simulator):
    settings = service_settings(database_url, simulator.url) | {"MONIME_ACCESS_TOKEN": "mon_test_wrong_token"}
    client = make_app(settings).test_client()

    response = client.post("/api/checkout", json=order_payload())

    assert response.status_code == 502
    error = response.get_json()["error"]
    assert (error["code"], error["monimeStatus"], error["monimeReason"]) == ("monime_rejected", 401, "unauthenticated")
    assert "mon_test_wrong_token" not in response.text
    assert len(simulator.requests("POST")) == 1, "a 4xx is not retried"


def test_an_order_paid_by_an_earlier_session_while_monime_makes_a_new_one_is_refused(database_url, simulator, app):
    """A late completion lands during the Monime call of a new attempt: no second payable session is handed out."""
    client = make_app(service_settings(database_url, simulator.url) | {"MONIME_READ_TIMEOUT": "5"}).test_client()
    first = checkout(client, orderId="ord_late_pay")["sessionId"]
    deliver(client, simulator.cancel(first, deliver=False)["event"])
    late_completion = simulator.complete(first, deliver=False, force=True)["event"]
    simulator.faults(delay=0.5, slow=1)  # the new attempt's create is slow

    with ThreadPoolExecutor(1) as pool:
        resubmitted = pool.submit(client.post, "/api/checkout", json=order_payload("ord_late_pay"))
        wait_for(lambda: len(simulator.requests("POST")) >= 2, 10, "the new attempt's create to reach Monime")
        assert deliver(client, late_completion).get_json()["outcome"] == "applied"
        response = resubmitted.result()

    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "order_completed"
    assert order(client, "ord_late_pay")["checkoutSessionId"] == first
