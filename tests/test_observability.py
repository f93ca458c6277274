"""Observability: request ids, JSON log lines with their context, secrets kept out, Prometheus metrics."""

import json
import logging
import re
from datetime import datetime, timedelta

import pytest
import requests

import logs
from conftest import LiveClient
from simulator import ACCESS_TOKEN
from support import (
    PREVIOUS_WEBHOOK_SECRET,
    WEBHOOK_PATH,
    WEBHOOK_SECRET,
    checkout,
    deliver,
    items,
    metric,
    order_payload,
    scrape,
    signed,
    signed_event,
)


def json_lines(caplog) -> list[dict]:
    """The captured records as the service writes them: one JSON object each."""
    formatter = logs.JsonFormatter()
    return [json.loads(formatter.format(record)) for record in caplog.records]


def test_every_response_carries_a_request_id(api):
    first, second = api.get("/healthz"), api.get("/api/orders/nope")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def test_the_callers_request_id_is_kept_if_sane(api):
    kept = api.get("/healthz", headers={"X-Request-ID": "req-from-the-proxy:42"})
    replaced = api.get("/healthz", headers={"X-Request-ID": "bad id with spaces\t" + "x" * 200})
    assert kept.headers["X-Request-ID"] == "req-from-the-proxy:42"
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"])


def test_log_lines_carry_the_request_id_and_the_order_and_event_ids(client, simulator, caplog):
    caplog.set_level(logging.INFO)
    created = client.post("/api/checkout", json=order_payload("ord_logged"), headers={"X-Request-ID": "req-1"})
    event = simulator.complete(created.get_json()["sessionId"], deliver=False)["event"]
    client.post(WEBHOOK_PATH, data=event["body"], headers=event["headers"] | {"X-Request-ID": "req-2"})

    lines = json_lines(caplog)
    [created_line] = [line for line in lines if line["message"] == "checkout session created"]
    [processed_line] = [line for line in lines if line["message"] == "webhook event processed"]
    assert (created_line["requestId"], created_line["orderId"]) == ("req-1", "ord_logged")
    assert (processed_line["requestId"], processed_line["orderId"]) == ("req-2", "ord_logged")
    assert processed_line["eventId"] == event["id"]


def test_a_later_request_on_the_same_thread_does_not_inherit_the_last_ones_context(client, caplog):
    caplog.set_level(logging.WARNING)
    client.post("/api/checkout", json=order_payload("ord_first"))
    client.post(WEBHOOK_PATH, data=b"{}", headers={"X-Request-ID": "req-bad-signature"})

    [refused] = [line for line in json_lines(caplog) if line["message"] == "webhook signature refused"]
    assert refused["requestId"] == "req-bad-signature"
    assert "orderId" not in refused


def test_the_access_log_has_one_json_line_per_request_with_its_request_id(live_server):
    for number in range(3):
        requests.get(f"{live_server.url}/api/orders/ord_{number}", headers={"X-Request-ID": f"req-access-{number}"})

    lines = live_server.access_log(lambda line: line["requestId"].startswith("req-access-"), at_least=3)

    assert [line["requestId"] for line in lines][-3:] == ["req-access-0", "req-access-1", "req-access-2"]
    assert {line["status"] for line in lines} == {404}
    assert all(line["method"] == "GET" and line["duration_ms"] >= 0 for line in lines)


def test_every_line_gunicorn_and_the_service_write_is_json_with_a_utc_time(live_server):
    """gunicorn's own lines (starting, booting workers) too, not only the access log and the app's."""
    requests.post(f"{live_server.url}{WEBHOOK_PATH}", data="{}", headers={"Content-Type": "application/json"})
    live_server.access_log(lambda line: line["path"] == WEBHOOK_PATH, at_least=1)

    lines = [json.loads(text) for text in live_server.log.read_text().splitlines()]

    assert {line.get("logger") for line in lines} >= {"gunicorn.error", "api.webhooks"}
    assert any(line.get("message", "").startswith("Booting worker") for line in lines)
    for line in lines:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line


def test_timestamps_the_api_shows_are_utc_ending_in_z(api, simulator):
    body = checkout(api)
    shown = api.get(f"/api/orders/{body['orderId']}").get_json()
    for name in ("createdAt", "updatedAt"):
        assert shown[name].endswith("Z") and datetime.fromisoformat(shown[name]).utcoffset() == timedelta(0)


def test_no_log_line_of_the_running_service_holds_a_token_or_secret(live_server, simulator):
    api = LiveClient(live_server.url)
    body = checkout(api)
    simulator.faults(fail=1000)
    api.post("/api/checkout", json=order_payload())
    api.get("/api/checkout/success", query_string={"orderId": body["orderId"]})
    simulator.faults()
    deliver(api, signed("{}", secret="whsec_wrong"))
    deliver(api, signed_event("checkout_session.completed", body["sessionId"], line_items=items(1)))

    log = live_server.log.read_text()
    assert "webhook event processed" in log and "session lookup failed" in log, "the log was captured"
    for secret in (ACCESS_TOKEN, WEBHOOK_SECRET, "whsec_wrong", PREVIOUS_WEBHOOK_SECRET):
        assert secret not in log


def test_metrics_count_checkouts_webhooks_monime_calls_and_orders(api, simulator):
    before = scrape(api)
    body = checkout(api)
    api.post("/api/checkout", json=order_payload(body["orderId"]))  # replayed
    api.post("/api/checkout", json=order_payload(name=""))  # invalid
    event = simulator.complete(body["sessionId"], deliver=False)["event"]
    deliver(api, event)
    deliver(api, event)
    deliver(api, signed("{}", secret="whsec_wrong"))
    deliver(api, signed_event("checkout_session.completed", "scs-x", line_items=items(1)))
    after = scrape(api)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("checkouts_total", result="created") == 1
    assert grew("checkouts_total", result="replayed") == 1
    assert grew("checkouts_total", result="validation_failed") == 1
    assert grew("webhook_signatures_total", result="verified") == 3
    assert grew("webhook_signatures_total", result="rejected") == 1
    assert grew("webhook_events_total", outcome="applied") == 1
    assert grew("webhook_events_total", outcome="duplicate") == 1
    assert grew("webhook_events_total", outcome="unmatched") == 1
    assert grew("monime_request_duration_seconds_count", operation="create_session", result="200") == 1
    assert metric(after, "orders", status="completed") == 1
    assert metric(after, "orders", status="pending") == 0


@pytest.mark.parametrize("status", ["pending", "completed", "cancelled", "expired"])
def test_orders_by_status_lists_every_status(client, status):
    assert f'orders{{status="{status}"}} 0.0' in scrape(client)
