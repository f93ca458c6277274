"""The shopper's way back from Monime: /api/checkout/success and /api/checkout/cancel."""

import time
from datetime import timedelta

import pytest
import requests
from test_sqlite_readers import sqlite_only, write_lock_held

from conftest import APP_URL, LiveClient, make_app, service_settings
from models import Order, db, utcnow
from support import across_both_workers, all_at_once, checkout, deliver, metric, order, scrape
from sync import REDIRECT_LOOKUP_INTERVAL


def back(api, page: str, order_id: str | None, method: str = "GET", **query):
    if order_id is not None:
        query["orderId"] = order_id
    return api.open(f"/api/checkout/{page}", method=method, query_string=query)


def test_success_before_the_webhook_confirms_with_monime_and_completes_the_order(api, simulator):
    body = checkout(api, orderId="ord_back")
    paid = simulator.complete(body["sessionId"], deliver=False)["session"]  # paid; the webhook has not arrived

    response = back(api, "success", "ord_back")

    assert response.status_code == 303
    assert response.headers["Location"] == f"{APP_URL}/checkout/success?orderId=ord_back"
    stored = order(api, "ord_back")
    assert stored["status"] == "completed"
    assert stored["orderNumber"] == paid["orderNumber"] is not None, "the lookup's order number is kept"


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


# --- rationed lookups: the unauthenticated redirect cannot drain Monime -------------------


def lookups(simulator, session_id: str) -> int:
    """How many times Monime was asked about the session."""
    return sum(r["path"] == f"/v1/checkout-sessions/{session_id}" for r in simulator.requests("GET"))


def allowed_lookups(started: float) -> int:
    """One lookup per REDIRECT_LOOKUP_INTERVAL begun since `started` (a monotonic time)."""
    return 1 + int((time.monotonic() - started) // REDIRECT_LOOKUP_INTERVAL)


def test_a_hundred_hits_for_a_pending_order_ask_monime_once_per_interval(api, simulator):
    body = checkout(api)
    before = scrape(api)
    started = time.monotonic()

    responses = [back(api, ("success", "cancel")[hit % 2], body["orderId"]) for hit in range(100)]

    allowed = allowed_lookups(started)
    assert [r.status_code for r in responses] == [303] * 100
    assert 1 <= lookups(simulator, body["sessionId"]) <= allowed, f"at most {allowed} in the time the hits took"
    skipped = metric(scrape(api), "redirect_lookups_skipped_total", reason="recent")
    assert skipped - metric(before, "redirect_lookups_skipped_total", reason="recent") >= 100 - allowed


def test_concurrent_hits_across_both_workers_ask_monime_once_per_interval(live_server, simulator):
    api = LiveClient(live_server.url)

    def burst(_attempt: int) -> int:
        body = checkout(api)
        url = f"{live_server.url}/api/checkout/success"
        started = time.monotonic()

        responses = all_at_once(
            100, lambda: requests.get(url, params={"orderId": body["orderId"]}, allow_redirects=False, timeout=30)
        )

        assert [r.status_code for r in responses] == [303] * 100
        assert 1 <= lookups(simulator, body["sessionId"]) <= allowed_lookups(started)
        return len(responses)

    across_both_workers(live_server, "/api/checkout/success", burst)


@pytest.mark.parametrize("ending", ["complete", "cancel", "expire"])
def test_a_final_order_makes_no_lookup(api, simulator, ending):
    body = checkout(api)
    deliver(api, simulator.finish(body["sessionId"], ending, deliver=False)["event"])
    simulator.complete(body["sessionId"], deliver=False, force=True)  # were Monime asked, it would say paid

    responses = [back(api, page, body["orderId"]) for page in ("success", "cancel") * 5]

    assert {r.status_code for r in responses} == {303}
    assert lookups(simulator, body["sessionId"]) == 0
    assert order(api, body["orderId"])["status"] == {"complete": "completed", "cancel": "cancelled"}.get(
        ending, "expired"
    ), "a late completion is the webhook's to bring"


@sqlite_only
def test_a_redirect_for_a_final_order_answers_while_another_process_holds_the_write_lock(client, simulator):
    body = checkout(client)
    deliver(client, simulator.complete(body["sessionId"], deliver=False)["event"])

    with write_lock_held(client.application.config["SQLALCHEMY_DATABASE_URI"]):
        response = back(client, "success", body["orderId"])

    assert response.status_code == 303, response.get_json()


def test_once_the_interval_has_passed_a_redirect_asks_again(app, client, simulator):
    body = checkout(client)
    back(client, "success", body["orderId"])
    simulator.complete(body["sessionId"], deliver=False)
    back(client, "success", body["orderId"])
    assert (lookups(simulator, body["sessionId"]), order(client, body["orderId"])["status"]) == (1, "pending")

    with app.app_context():  # the interval passes
        earlier = utcnow() - timedelta(seconds=REDIRECT_LOOKUP_INTERVAL)
        db.session.execute(db.update(Order).where(Order.id == body["orderId"]).values(checked_at=earlier))
        db.session.commit()
    back(client, "success", body["orderId"])

    assert (lookups(simulator, body["sessionId"]), order(client, body["orderId"])["status"]) == (2, "completed")


def test_past_the_per_client_limit_a_redirect_skips_its_lookup(app, database_url, simulator):
    limited = make_app(service_settings(database_url, simulator.url) | {"RATELIMIT_REDIRECT_LOOKUPS": "2/minute"})
    client = limited.test_client()
    sessions = [checkout(client) for _ in range(3)]
    before = scrape(client)

    responses = [back(client, "success", body["orderId"]) for body in sessions]

    assert [r.status_code for r in responses] == [303] * 3
    assert [lookups(simulator, body["sessionId"]) for body in sessions] == [1, 1, 0]
    elsewhere = client.get(
        "/api/checkout/success",
        query_string={"orderId": sessions[2]["orderId"]},
        environ_base={"REMOTE_ADDR": "10.9.8.7"},
    )
    assert elsewhere.status_code == 303
    assert lookups(simulator, sessions[2]["sessionId"]) == 1, "another client has its own allowance"
    skipped = metric(scrape(client), "redirect_lookups_skipped_total", reason="client_limit")
    assert skipped - metric(before, "redirect_lookups_skipped_total", reason="client_limit") == 1


def test_hits_that_would_not_ask_monime_do_not_use_up_the_clients_limit(database_url, simulator):
    """A shopper reloading the success page of a pending order: only hits that ask count."""
    limited = make_app(service_settings(database_url, simulator.url) | {"RATELIMIT_REDIRECT_LOOKUPS": "2/minute"})
    client = limited.test_client()
    reloaded, other = checkout(client), checkout(client)

    responses = [back(client, "success", reloaded["orderId"]) for _ in range(5)]
    responses.append(back(client, "success", other["orderId"]))

    assert [r.status_code for r in responses] == [303] * 6
    assert [lookups(simulator, body["sessionId"]) for body in (reloaded, other)] == [1, 1]


def test_when_the_limit_store_is_down_redirects_still_ask_once_per_order(app, database_url, simulator):
    settings = {"RATELIMIT_STORAGE_URI": "redis://127.0.0.1:9/0", "RATELIMIT_REDIRECT_LOOKUPS": "1/minute"}
    client = make_app(service_settings(database_url, simulator.url) | settings).test_client()
    sessions = [checkout(client) for _ in range(2)]

    responses = [back(client, "success", body["orderId"]) for body in sessions * 2]

    assert [r.status_code for r in responses] == [303] * 4
    assert [lookups(simulator, body["sessionId"]) for body in sessions] == [1, 1], "the interval still holds"


def test_reconcile_is_not_rationed_by_the_redirects(client, runner, simulator):
    body = checkout(client)
    back(client, "success", body["orderId"])  # takes the order's turn
    simulator.complete(body["sessionId"], deliver=False)

    result = runner.invoke(args=["orders", "reconcile", "--older-than", "0s"])

    assert result.output == "reconciled 1 order: applied 1\n"
    assert lookups(simulator, body["sessionId"]) == 2
    assert order(client, body["orderId"])["status"] == "completed"
