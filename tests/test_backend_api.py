"""The shop backend's API: the order feed (GET /api/orders) and resolving held orders
(POST /api/orders/<id>/resolve, `flask orders resolve`), behind API_KEYS."""

import base64
import getpass
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import select

from conftest import LiveClient
from models import OrderResolution, db
from support import (
    API_KEY,
    API_KEY_NAME,
    BEARER,
    ORDER_FEED_DELAY,
    WEBHOOK_PATH,
    across_both_workers,
    all_at_once,
    as_a_frontend,
    checkout,
    deliver,
    items,
    order,
    order_payload,
    signed_event,
    wait_for,
)

NOTE = "Payment confirmed by phone with the customer's bank"


def feed(api, headers=BEARER, **params):
    return api.get("/api/orders", query_string=params, headers=headers)


def follow(api, cursor=None, **params) -> tuple[list[dict], str | None]:
    """Every order the feed has after `cursor`, page by page; and the cursor to go on from."""
    seen = []
    while True:
        response = feed(api, **params, **({"after": cursor} if cursor else {}))
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        seen += page["data"]
        if page["next"] is None:
            return seen, cursor
        cursor = page["next"]


def feed_shows(api, count: int, **params) -> list[dict]:
    """The feed once it holds `count` orders: changes are served ORDER_FEED_DELAY seconds late."""
    return wait_for(
        lambda: (found := follow(api, **params)[0]) and len(found) >= count and found,
        ORDER_FEED_DELAY + 30,
        f"{count} orders in the feed ({params})",
        interval=0.1,
    )


def held_order(api) -> str:
    """An order held for review: its completion reports another amount. Its status stays pending."""
    body = checkout(api)
    return hold(api, body["orderId"], body["sessionId"])


def hold(api, order_id: str, session_id: str) -> str:
    mismatch = signed_event("checkout_session.completed", session_id, line_items=items(1))
    assert deliver(api, mismatch).get_json()["outcome"] == "held"
    assert order(api, order_id)["review"] is not None
    return order_id


def resolve(api, order_id: str, headers=BEARER, **body):
    return api.post(
        f"/api/orders/{order_id}/resolve", json={"action": "complete", "note": NOTE} | body, headers=headers
    )


def recorded(app, order_id: str) -> list[OrderResolution]:
    with app.app_context():
        return list(db.session.scalars(select(OrderResolution).where(OrderResolution.order_id == order_id)))


# --- API keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {API_KEY[:-1]}x"},  # one character off
        {"Authorization": f"Bearer {API_KEY_NAME}:{API_KEY}"},  # the pair, not the key
        {"Authorization": f"Basic {base64.b64encode(f'{API_KEY_NAME}:{API_KEY}'.encode()).decode()}"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "pair", "basic", "empty"],
)
def test_without_a_valid_key_the_feed_and_resolve_answer_401_and_change_nothing(api, headers):
    order_id = held_order(api)

    for response in (feed(api, headers=headers), resolve(api, order_id, headers=headers)):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert API_KEY not in response.data.decode()
    assert order(api, order_id)["review"] is not None


def test_either_configured_key_is_accepted(client):
    another = {"Authorization": "Bearer another-test-key-0123456789abcdef"}
    assert feed(client, headers=another).status_code == 200
    assert feed(client, headers={"Authorization": f"bearer {API_KEY}"}).status_code == 200  # RFC 7235: any case


# --- the feed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "paid"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after": "not-a-cursor"}, "after"),
        ({"after": base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", "a\\u0000b"]').decode()}, "after"),
        ({"after": base64.urlsafe_b64encode(b'["0001-01-01T00:00:00+05:00", "ord_1"]').decode()}, "after"),
        ({"after": base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", "ord_1"]').decode()}, "after"),
        ({"after": "\u00e9t\u00e9"}, "after"),
        ({"sort": "desc"}, "sort"),
    ],
)
def test_bad_feed_parameters_are_a_400_naming_the_field(api, params, field):
    response = feed(api, **params)

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed"
    assert field in error["fields"]


def test_the_feed_filters_by_status_and_shows_what_get_order_shows(api, simulator):
    paid, cancelled = checkout(api), checkout(api)
    deliver(api, simulator.complete(paid["sessionId"], deliver=False)["event"])
    deliver(api, simulator.cancel(cancelled["sessionId"], deliver=False)["event"])
    pending = checkout(api)

    everything = feed_shows(api, 3)
    completed = feed_shows(api, 1, status="completed")

    assert [o["orderId"] for o in completed] == [paid["orderId"]]
    assert [o["orderId"] for o in follow(api, status="cancelled")[0]] == [cancelled["orderId"]]
    assert follow(api, status="expired")[0] == []
    assert [o["orderId"] for o in everything] == [paid["orderId"], cancelled["orderId"], pending["orderId"]]
    for shown in everything:
        assert shown == order(api, shown["orderId"])


def test_an_order_that_changes_after_it_was_paged_past_comes_again_at_the_end(api, simulator):
    first, second = checkout(api), checkout(api)
    assert [o["orderId"] for o in feed_shows(api, 2, limit=1)] == [first["orderId"], second["orderId"]]
    _, cursor = follow(api, limit=1)

    deliver(api, simulator.complete(first["sessionId"], deliver=False)["event"])
    news = wait_for(lambda: follow(api, cursor)[0], ORDER_FEED_DELAY + 30, "the completion in the feed", interval=0.1)

    assert [(o["orderId"], o["status"]) for o in news] == [(first["orderId"], "completed")]
    caught_up = feed(api, after=follow(api, cursor)[1]).get_json()
    assert caught_up == {"data": [], "next": None}


def post(url: str, **kwargs) -> requests.Response:
    """A request on a connection of its own, for threads."""
    return requests.post(url, timeout=30, **kwargs)


def test_the_feed_pages_through_250_orders_without_gaps_or_repeats_while_orders_complete(live_server, app, simulator):
    api = LiveClient(live_server.url)
    with ThreadPoolExecutor(8) as pool:
        created = pool.map(
            lambda _: as_a_frontend(lambda: post(live_server.url + "/api/checkout", json=order_payload())), range(300)
        )
        bodies = [response.json() for response in created]
        events = [simulator.complete(body["sessionId"], deliver=False)["event"] for body in bodies]
        before, during = events[:250], events[250:]
        assert {response.json()["outcome"] for response in pool.map(webhook(live_server), before)} == {"applied"}
    feed_shows(api, 250, status="completed")
    outcomes, seen, cursor = [], [], None

    def complete_the_rest():  # through real webhooks, four at a time, while the feed is read
        with ThreadPoolExecutor(4) as pool:
            outcomes.extend(response.json()["outcome"] for response in pool.map(webhook(live_server), during))

    def read_on() -> bool:
        nonlocal cursor
        page = feed(api, status="completed", limit=25, **({"after": cursor} if cursor else {})).get_json()
        seen.extend(shown["orderId"] for shown in page["data"])
        cursor = page["next"] or cursor
        return len(set(seen)) >= len(bodies)

    completer = threading.Thread(target=complete_the_rest)
    completer.start()
    try:
        wait_for(read_on, 60, lambda: f"all 300 completed orders in the feed; seen {len(set(seen))}", interval=0.05)
    finally:
        completer.join()
    assert outcomes == ["applied"] * 50
    assert len(seen) == len(set(seen)), "an order that did not change came twice"
    assert set(seen) == {body["orderId"] for body in bodies}


def webhook(live_server):
    """Deliver a signed event to the gunicorn server, on a connection of its own."""
    return lambda event: post(live_server.url + WEBHOOK_PATH, data=event["body"], headers=event["headers"])


# --- resolving held orders ----------------------------------------------------------------


def test_completing_a_held_order_completes_it_clears_the_hold_and_records_who_and_why(api, app, runner):
    order_id = held_order(api)
    held = order(api, order_id)

    response = resolve(api, order_id, action="complete")

    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["order"] == order(api, order_id)
    assert (answer["order"]["status"], answer["order"]["review"]) == ("completed", None)
    assert answer["by"] == API_KEY_NAME and answer["action"] == "complete" and answer["note"] == NOTE
    assert (answer["previousStatus"], answer["previousReview"]) == ("pending", held["review"])
    [row] = recorded(app, order_id)
    assert (row.by, row.via, row.action, row.note) == (API_KEY_NAME, "api", "complete", NOTE)
    assert (row.previous_status, row.previous_review_reason) == ("pending", held["review"]["reason"])
    shown = runner.invoke(args=["orders", "show", order_id]).output
    assert f"resolved (complete) by {API_KEY_NAME} via api" in shown and NOTE in shown


def test_dismissing_a_hold_keeps_the_status(api, app):
    order_id = held_order(api)

    response = resolve(api, order_id, action="dismiss", note="Customer confirmed the lower amount was a test")

    assert response.status_code == 200
    assert (order(api, order_id)["status"], order(api, order_id)["review"]) == ("pending", None)
    assert [row.action for row in recorded(app, order_id)] == ["dismiss"]


def test_an_order_not_held_is_a_409_and_an_unknown_one_a_404(api, app):
    order_id = checkout(api)["orderId"]

    not_held = resolve(api, order_id)
    unknown = resolve(api, "ord_nobody")

    assert (not_held.status_code, not_held.get_json()["error"]["code"]) == (409, "not_held")
    assert (unknown.status_code, unknown.get_json()["error"]["code"]) == (404, "order_not_found")
    assert order(api, order_id)["status"] == "pending"
    assert recorded(app, order_id) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "refund"}, "action"),
        ({"note": ""}, "note"),
        ({"note": "x" * 501}, "note"),
        ({"note": None}, "note"),
        ({"note": "a\x00b"}, "note"),
        ({"by": "someone else"}, "by"),
    ],
)
def test_an_invalid_resolution_is_a_400_naming_the_field_and_changes_nothing(api, app, body, field):
    order_id = held_order(api)

    response = resolve(api, order_id, **body)

    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]
    assert order(api, order_id)["review"] is not None
    assert recorded(app, order_id) == []


def test_a_resolution_without_a_note_or_not_json_is_refused(api):
    order_id = held_order(api)
    missing = api.post(f"/api/orders/{order_id}/resolve", json={"action": "dismiss"}, headers=BEARER)
    text = api.post(f"/api/orders/{order_id}/resolve", data="action=dismiss", headers=BEARER)

    assert (missing.status_code, list(missing.get_json()["error"]["fields"])) == (400, ["note"])
    assert text.status_code == 415


def test_concurrent_resolutions_of_one_order_apply_exactly_once(live_server, app, simulator):
    """Bursts of 10 simultaneous resolutions of one held order, each burst after holding it
    again, until one burst is seen spread over both workers."""
    api = LiveClient(live_server.url)
    body = checkout(api)
    path = f"/api/orders/{body['orderId']}/resolve"

    def burst(number: int) -> int:
        hold(api, body["orderId"], body["sessionId"])
        responses = all_at_once(
            10, lambda: post(live_server.url + path, json={"action": "dismiss", "note": NOTE}, headers=BEARER)
        )

        assert sorted(r.status_code for r in responses) == [200] + [409] * 9
        assert len(recorded(app, body["orderId"])) == number
        assert order(api, body["orderId"])["review"] is None
        return len(responses)

    across_both_workers(live_server, path, burst)


def test_the_cli_resolves_under_the_shell_users_name(client, app, runner):
    order_id = held_order(client)

    result = runner.invoke(args=["orders", "resolve", order_id, "--complete", "--note", NOTE])

    assert result.exit_code == 0, result.output
    assert f"resolved (complete) by {getpass.getuser()}" in result.output
    assert order(client, order_id)["status"] == "completed"
    [row] = recorded(app, order_id)
    assert (row.by, row.via, row.previous_status) == (getpass.getuser(), "cli", "pending")
    again = runner.invoke(args=["orders", "resolve", order_id, "--dismiss", "--note", NOTE])
    assert again.exit_code == 1 and "is not held for review" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--complete", "--dismiss", "--note", NOTE], "exactly one of --complete or --dismiss"),
        (["--note", NOTE], "exactly one of --complete or --dismiss"),
        (["--dismiss"], "Missing option '--note'"),
        (["--dismiss", "--note", "x" * 501], "--note"),
    ],
)
def test_the_cli_refuses_what_it_cannot_do(client, app, runner, args, message):
    order_id = held_order(client)

    result = runner.invoke(args=["orders", "resolve", order_id, *args])

    assert result.exit_code == 2 and message in result.output
    assert recorded(app, order_id) == []
    unknown = runner.invoke(args=["orders", "resolve", "ord_nobody", "--dismiss", "--note", NOTE])
    assert unknown.exit_code == 1 and "no order 'ord_nobody'" in unknown.output


def test_reconcile_leaves_held_orders_to_a_person_until_resolved(client, runner, simulator):
    body = checkout(client)
    hold(client, body["orderId"], body["sessionId"])
    simulator.complete(body["sessionId"], deliver=False)  # Monime says paid; no webhook came

    skipped = runner.invoke(args=["orders", "reconcile", "--older-than", "0s"])

    assert skipped.output == "reconciled 0 orders: nothing to do\n"
    assert simulator.requests("GET") == []
    assert resolve(client, body["orderId"], action="dismiss").status_code == 200
    applied = runner.invoke(args=["orders", "reconcile", "--older-than", "0s"])
    assert applied.output == "reconciled 1 order: applied 1\n"
    assert order(client, body["orderId"])["status"] == "completed"
