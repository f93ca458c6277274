"""Operations: reconcile for missed webhooks, replay of stored events, inspecting orders,
and a service that answers 503 (never a 2xx for an event not stored) when its database is down."""

import threading
from datetime import timedelta

import pytest
import requests

from conftest import make_app, service_settings
from models import Order, WebhookEvent, db
from support import WEBHOOK_PATH, checkout, deliver, order, order_payload, signed_event
from sync import reconcile

ENDINGS = ["complete", "cancel", "expire", None]  # None: the shopper has not decided yet
TRUTH = {"complete": "completed", "cancel": "cancelled", "expire": "expired", None: "pending"}


def missed_webhooks(api, simulator, count: int) -> dict[str, str]:
    """Orders whose sessions Monime finished while no webhook reached us: order id -> Monime's truth."""
    truth = {}
    for number in range(count):
        body = checkout(api)
        ending = ENDINGS[number % len(ENDINGS)]
        if ending:
            simulator.finish(body["sessionId"], ending, deliver=False)
        truth[body["orderId"]] = TRUTH[ending]
    return truth


def statuses(api, order_ids) -> dict[str, str]:
    return {order_id: order(api, order_id)["status"] for order_id in order_ids}


def test_reconcile_brings_every_order_to_monimes_truth_and_a_second_run_changes_nothing(client, runner, simulator):
    truth = missed_webhooks(client, simulator, 12)

    first = runner.invoke(args=["orders", "reconcile", "--older-than", "0s"])

    assert first.exit_code == 0, first.output
    assert first.output == "reconciled 12 orders: applied 9, unchanged 3\n"
    assert statuses(client, truth) == truth
    monimes_numbers = {session["reference"]: session["orderNumber"] for session in simulator.sessions()}
    assert {order_id: order(client, order_id)["orderNumber"] for order_id in truth} == monimes_numbers
    second = runner.invoke(args=["orders", "reconcile", "--older-than", "0s"])
    assert second.output == "reconciled 3 orders: unchanged 3\n"
    assert statuses(client, truth) == truth


def test_a_dry_run_reports_what_would_change_and_changes_nothing(client, runner, simulator):
    truth = missed_webhooks(client, simulator, 8)

    result = runner.invoke(args=["orders", "reconcile", "--older-than", "0s", "--dry-run"])

    assert result.output == "would reconcile 8 orders: applied 6, unchanged 2\n"
    assert set(statuses(client, truth).values()) == {"pending"}


def test_reconcile_leaves_recent_sessions_to_their_webhooks_and_asks_about_at_most_limit(client, runner, simulator):
    missed_webhooks(client, simulator, 6)

    assert runner.invoke(args=["orders", "reconcile"]).output == "reconciled 0 orders: nothing to do\n"
    assert simulator.requests("GET") == []
    limited = runner.invoke(args=["orders", "reconcile", "--older-than", "0s", "--limit", "2"])
    assert limited.output.startswith("reconciled 2 orders")
    assert len(simulator.requests("GET")) == 2


def test_reconcile_fails_loudly_when_monime_cannot_be_asked(client, runner, simulator):
    truth = missed_webhooks(client, simulator, 4)
    simulator.faults(fail=1000)

    result = runner.invoke(args=["orders", "reconcile", "--older-than", "0s"])

    assert result.exit_code == 1
    assert result.output == "reconciled 4 orders: failed 4\n"
    assert set(statuses(client, truth).values()) == {"pending"}


def test_an_order_whose_session_monime_does_not_know_is_held_and_left_to_a_person(client, runner, simulator):
    truth = missed_webhooks(client, simulator, 2)
    simulator.reset()  # Monime no longer knows either session

    first = runner.invoke(args=["orders", "reconcile", "--older-than", "0s"])
    second = runner.invoke(args=["orders", "reconcile", "--older-than", "0s"])

    assert (first.exit_code, first.output) == (0, "reconciled 2 orders: held 2\n")
    assert second.output == "reconciled 0 orders: nothing to do\n"
    for order_id in truth:
        assert "does not know" in order(client, order_id)["review"]["reason"]


@pytest.mark.parametrize("value", ["10", "10x", "m", "-5m"])
def test_reconcile_refuses_a_duration_it_cannot_read(runner, value):
    result = runner.invoke(args=["orders", "reconcile", "--older-than", value])
    if value == "10":  # plain seconds are fine
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2 and "is not a duration" in result.output


def test_two_reconcilers_and_late_webhooks_together_complete_each_order_exactly_once(
    live_server, app, database_url, simulator
):
    from conftest import LiveClient

    api = LiveClient(live_server.url)
    sessions = [checkout(api)["sessionId"] for _ in range(30)]
    late = [simulator.complete(session, deliver=False)["event"] for session in sessions]
    hosts = [make_app(service_settings(database_url, simulator.url)) for _ in range(2)]
    tallies, webhook_outcomes, start = [], [], threading.Barrier(3)

    def reconciler(host):
        with host.app_context():
            start.wait()
            tallies.append(reconcile(timedelta(0), limit=100))

    def webhooks():
        start.wait()
        for event in late:
            response = requests.post(live_server.url + WEBHOOK_PATH, data=event["body"], headers=event["headers"])
            webhook_outcomes.append(response.json()["outcome"])

    threads = [threading.Thread(target=reconciler, args=(host,)) for host in hosts] + [
        threading.Thread(target=webhooks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    applied = sum(tally["applied"] for tally in tallies) + webhook_outcomes.count("applied")
    assert applied == 30, (tallies, webhook_outcomes)
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count()).where(Order.status == "completed")) == 30
        assert db.session.scalar(db.select(db.func.count()).select_from(WebhookEvent)) == 30


# --- replay ---------------------------------------------------------------------------------


def failed_completion(client, simulator) -> tuple[str, dict]:
    """A completion that arrived while Monime could not confirm it: stored as failed."""
    body = checkout(client)
    event = signed_event("checkout_session.completed", body["sessionId"])
    simulator.faults(fail=1000)
    assert deliver(client, event).status_code == 503
    simulator.faults()
    return body["orderId"], event


def test_replaying_failed_events_processes_them_through_the_webhook_path(client, runner, simulator):
    order_id, event = failed_completion(client, simulator)

    result = runner.invoke(args=["events", "replay", "--failed"])

    assert result.exit_code == 0, result.output
    assert result.output == f"event {event['id']}: applied\n"
    assert order(client, order_id)["status"] == "completed"
    assert runner.invoke(args=["events", "list", "--outcome", "failed"]).output == "no failed events stored\n"


def test_replaying_a_processed_event_changes_nothing(client, runner, simulator):
    order_id, event = failed_completion(client, simulator)
    runner.invoke(args=["events", "replay", event["id"]])
    before = order(client, order_id)

    result = runner.invoke(args=["events", "replay", event["id"]])

    assert result.output == f"event {event['id']}: already processed, nothing changed\n"
    assert order(client, order_id) == before


def test_replay_while_monime_is_still_down_fails_loudly_and_keeps_the_event(client, runner, simulator):
    _, event = failed_completion(client, simulator)
    simulator.faults(fail=1000)

    result = runner.invoke(args=["events", "replay", "--failed"])

    assert result.exit_code == 1
    assert f"event {event['id']}: failed again" in result.output
    assert event["id"] in runner.invoke(args=["events", "list", "--outcome", "failed"]).output


@pytest.mark.parametrize(("args", "message"), [(["nope"], "no stored event 'nope'"), ([], "give one event id")])
def test_replay_refuses_what_it_cannot_do(runner, args, message):
    result = runner.invoke(args=["events", "replay", *args])
    assert result.exit_code != 0 and message in result.output


def test_events_list_filters_by_outcome(client, runner):
    body = checkout(client)
    held = signed_event("checkout_session.completed", body["sessionId"], line_items=[])
    stray = signed_event("payment.created", "pay-1")
    deliver(client, signed_event("checkout_session.completed", "scs-nobody"))
    deliver(client, stray)
    deliver(client, held)

    ignored = runner.invoke(args=["events", "list", "--outcome", "ignored"]).output.splitlines()
    everything = runner.invoke(args=["events", "list"]).output.splitlines()

    assert len(ignored) == 1 and ignored[0].startswith(f"event {stray['id']} payment.created [ignored]")
    assert len(everything) == 3


def test_orders_show_tells_an_orders_whole_story(client, runner, simulator):
    body = checkout(client, orderId="ord_story")
    completion = simulator.complete(body["sessionId"], deliver=False)
    event = completion["event"]
    deliver(client, event)
    deliver(client, signed_event("checkout_session.expired", body["sessionId"], event_id=event["id"]))

    output = runner.invoke(args=["orders", "show", "ord_story"]).output

    assert output.startswith("order ord_story [completed] SLE 51.50 'Order #1001'\n")
    assert f"\n  Monime order number {completion['session']['orderNumber']}\n" in output
    assert f"session {body['sessionId']} (current)" in output
    assert f"event {event['id']} checkout_session.completed [applied] order ord_story" in output
    assert "\n    delivered again with a different body (sha256 " in output
    assert f"held for review: event {event['id']} was delivered again with a different body" in output
    assert runner.invoke(args=["orders", "show", "ord_missing"]).exit_code == 1


# --- the database unavailable -------------------------------------------------------------------


def test_with_the_database_down_webhooks_and_checkouts_answer_503_and_nothing_is_acknowledged(database_down):
    webhook = deliver(database_down, signed_event("checkout_session.completed", "scs-1"))
    created = database_down.post("/api/checkout", json=order_payload())

    assert (webhook.status_code, created.status_code) == (503, 503)
    assert webhook.get_json()["error"]["code"] == "database_unavailable"
    assert webhook.headers["Retry-After"]
