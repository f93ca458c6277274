"""The shopper's way back from Monime: /api/checkout/success and /api/checkout/cancel."""

import pytest

from conftest import APP_URL
from support import checkout, deliver, order


def back(api, page: str, order_id: str | None, method: str = "GET", **query):
    if order_id is not None:
        query["orderId"] = order_id
    return api.open(f"/api/checkout/{page}", method=method, query_string=query)


def test_success_before_the_webhook_confirms_with_monime_and_completes_the_order(api, simulator):
    body = checkout(api, orderId="ord_back")
    simulator.complete(body["sessionId"], deliver=False)  # paid; the webhook has not arrived

    response = back(api, "success", "ord_back")

    assert response.status_code == 303
    assert response.headers["Location"] == f"{APP_URL}/checkout/success?orderId=ord_back"
    assert order(api, "ord_back")["status"] == "completed"


def test_success_after_the_webhook_redirects_without_asking_monime(api, simulator):
    body = checkout(api, orderId="ord_known")
    deliver(api, simulator.complete(body["sessionId"], deliver=False)["event"])
    asked_before = len(simulator.requests("GET"))

    response = back(api, "success", "ord_known")

    assert response.status_code == 303
    assert response.headers["Location"] == f"{APP_URL}/checkout/success?orderId=ord_known"
    assert len(simulator.requests("GET")) == asked_before
    assert order(api, "ord_known")["status"] == "completed"


def test_success_also_answers_post_as_in_the_seed_guide(api, simulator):
    body = checkout(api, orderId="ord_post")
    simulator.complete(body["sessionId"], deliver=False)
    response = back(api, "success", "ord_post", method="POST")
    assert response.status_code == 303
    assert order(api, "ord_post")["status"] == "completed"


def test_success_while_monime_says_pending_leaves_the_order_pending(api, simulator):
    body = checkout(api)
    response = back(api, "success", body["orderId"])
    assert response.status_code == 303
    assert order(api, body["orderId"])["status"] == "pending"


@pytest.mark.parametrize("faults", [{"fail": 1000}, {"delay": 0.8}, {"drop": 1000}], ids=["5xx", "timeout", "drop"])
def test_success_still_redirects_when_monime_cannot_be_reached(api, simulator, faults):
    body = checkout(api, orderId="ord_down")
    simulator.complete(body["sessionId"], deliver=False)
    simulator.faults(**faults)

    response = back(api, "success", "ord_down")

    assert response.status_code == 303
    assert response.headers["Location"] == f"{APP_URL}/checkout/success?orderId=ord_down"
    assert order(api, "ord_down")["status"] == "pending", "the webhook stays authoritative"


def test_a_redirect_applies_the_same_rules_as_the_webhook(api, simulator):
    body = checkout(api)
    deliver(api, simulator.complete(body["sessionId"], deliver=False)["event"])
    simulator.expire(body["sessionId"], deliver=False, force=True)  # Monime now, wrongly, says expired

    back(api, "cancel", body["orderId"])

    assert order(api, body["orderId"])["status"] == "completed"


def test_cancel_confirmed_by_monime_cancels_the_order(api, simulator):
    body = checkout(api, orderId="ord_cancel")
    simulator.cancel(body["sessionId"], deliver=False)

    response = back(api, "cancel", "ord_cancel")

    assert response.status_code == 303
    assert response.headers["Location"] == f"{APP_URL}/checkout/cancelled?orderId=ord_cancel"
    assert order(api, "ord_cancel")["status"] == "cancelled"


def test_cancel_never_cancels_on_the_redirects_word_alone(api, simulator):
    checkout(api, orderId="ord_not_cancelled")  # still pending at Monime
    response = back(api, "cancel", "ord_not_cancelled")
    assert response.status_code == 303
    assert order(api, "ord_not_cancelled")["status"] == "pending"


@pytest.mark.parametrize("page", ["success", "cancel"])
def test_without_an_order_id_the_answer_is_400(api, page):
    response = back(api, page, None)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "missing_order_id"


@pytest.mark.parametrize("page", ["success", "cancel"])
def test_an_unknown_order_is_404(api, page):
    response = back(api, page, "ord_unknown")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "order_not_found"


HOSTILE_ORDER_IDS = [
    "https://evil.example",
    "//evil.example",
    "/\\evil.example",
    "x\r\nLocation: https://evil.example",
    "../../evil",
    "@evil.example",
    "ord\x00nul",
    "ord_1\n",
]


@pytest.mark.parametrize("order_id", HOSTILE_ORDER_IDS)
@pytest.mark.parametrize("page", ["success", "cancel"])
def test_a_hostile_order_id_redirects_nowhere(api, page, order_id):
    response = back(api, page, order_id)
    assert response.status_code == 404
    assert "Location" not in response.headers


@pytest.mark.parametrize("page", ["success", "cancel"])
def test_redirect_parameters_from_the_query_are_ignored(api, simulator, page):
    body = checkout(api, orderId="ord:with.odd-chars_1")

    response = back(
        api, page, body["orderId"], next="https://evil.example", redirect="//evil.example", url="https://evil.example"
    )

    expected_page = {"success": "success", "cancel": "cancelled"}[page]
    assert response.headers["Location"] == f"{APP_URL}/checkout/{expected_page}?orderId=ord%3Awith.odd-chars_1"
