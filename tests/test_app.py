"""What every client sees: JSON errors, health, and logs that keep secrets."""

import logging

import pytest

from conftest import WEBHOOK_SECRET, make_app, service_settings
from simulator import ACCESS_TOKEN
from support import WEBHOOK_PATH, checkout, deliver, order_payload, signed


def test_healthz_answers_when_the_database_does(api):
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_healthz_is_503_when_the_database_does_not_answer(database_down):
    response = database_down.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "5"


def test_an_unknown_route_is_a_json_404(api):
    response = api.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/checkout"), ("PUT", WEBHOOK_PATH), ("DELETE", "/healthz")])
def test_a_wrong_method_is_a_json_405_with_allow(api, method, path):
    response = api.open(path, method=method)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"] or "GET" in response.headers["Allow"]


def test_a_checkout_body_over_one_mebibyte_is_a_json_413(api, simulator):
    payload = order_payload(description="d" * (1024 * 1024))
    response = api.post("/api/checkout", json=payload)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_entity_too_large"
    assert simulator.requests() == []


def test_an_unexpected_failure_is_a_json_500_without_details(app, caplog):
    @app.get("/explode")
    def explode():
        raise RuntimeError("internal detail that must not leak")

    response = app.test_client().get("/explode")

    assert response.status_code == 500
    assert response.get_json() == {
        "error": {"code": "internal_error", "message": "The service failed to handle the request."}
    }
    assert "internal detail" in caplog.text, "the detail is logged for the operator"


def test_the_order_view_is_404_for_an_unknown_order(api):
    response = api.get("/api/orders/ord_missing")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "order_not_found"


def test_logs_never_contain_the_token_or_the_webhook_secret(client, simulator, caplog):
    caplog.set_level(logging.DEBUG)
    body = checkout(client)
    simulator.faults(fail=1000)
    client.post("/api/checkout", json=order_payload())
    client.get(f"/api/checkout/success?orderId={body['orderId']}")
    deliver(client, signed("{}", secret="whsec_wrong"))
    deliver(client, signed('{"event":{"id":"e","name":"x"}}'))

    assert caplog.records, "the requests above were logged"
    assert ACCESS_TOKEN not in caplog.text
    assert WEBHOOK_SECRET not in caplog.text


@pytest.fixture
def cors_client(database_url, simulator):
    settings = service_settings(database_url, simulator.url) | {
        "CORS_ORIGINS": "https://shop.example, http://127.0.0.1:3000"
    }
    return make_app(settings).test_client()


@pytest.mark.parametrize("origin", ["https://shop.example", "http://127.0.0.1:3000"])
def test_an_allowed_origin_may_call_checkout_and_read_orders(cors_client, origin):
    preflight = cors_client.options(
        "/api/checkout",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    read = cors_client.get("/api/orders/ord_x", headers={"Origin": origin})

    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert read.headers["Access-Control-Allow-Origin"] == origin


def test_another_origin_gets_no_cors_headers(cors_client):
    response = cors_client.get("/api/orders/ord_x", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_without_cors_origins_no_origin_is_allowed(client):
    response = client.get("/api/orders/ord_x", headers={"Origin": "https://shop.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_webhooks_and_health_are_never_cross_origin(cors_client):
    for path in (WEBHOOK_PATH, "/healthz"):
        response = cors_client.open(path, method="OPTIONS", headers={"Origin": "https://shop.example"})
        assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("path", ["/api/orders", "/api/orders/ord_x/resolve"])
def test_the_backend_api_is_never_cross_origin(cors_client, path):
    """It takes an API key, which no browser should hold."""
    for method in ("OPTIONS", "GET", "POST"):
        response = cors_client.open(
            path,
            method=method,
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
        )
        assert "Access-Control-Allow-Origin" not in response.headers, (method, response.status_code)
