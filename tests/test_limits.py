"""Limits: per-client rate limits on checkout creation, body sizes, and security headers."""

import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from conftest import gunicorn, make_app, service_settings
from support import WEBHOOK_PATH, as_a_frontend, deliver, order_payload, signed

REDIS_URL = "redis://127.0.0.1:6379/0"


def limited_client(database_url, simulator, **settings):
    return make_app(service_settings(database_url, simulator.url) | settings).test_client()


def test_checkouts_past_the_limit_get_429_with_retry_after(database_url, simulator):
    client = limited_client(database_url, simulator, RATELIMIT_CHECKOUT="3/minute")

    statuses = [client.post("/api/checkout", json=order_payload()).status_code for _ in range(4)]
    refused = client.post("/api/checkout", json=order_payload())

    assert statuses == [201, 201, 201, 429]
    assert refused.get_json()["error"]["code"] == "too_many_requests"
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert len(simulator.sessions()) == 3


def test_the_limit_is_per_client_address(database_url, simulator):
    client = limited_client(database_url, simulator, RATELIMIT_CHECKOUT="1/minute", PROXY_HOPS="1")
    first = {"X-Forwarded-For": "203.0.113.1"}
    second = {"X-Forwarded-For": "203.0.113.2"}

    assert client.post("/api/checkout", json=order_payload(), headers=first).status_code == 201
    assert client.post("/api/checkout", json=order_payload(), headers=first).status_code == 429
    assert client.post("/api/checkout", json=order_payload(), headers=second).status_code == 201


def test_without_trusted_proxies_a_forwarded_for_header_cannot_dodge_the_limit(database_url, simulator):
    client = limited_client(database_url, simulator, RATELIMIT_CHECKOUT="1/minute")
    client.post("/api/checkout", json=order_payload(), headers={"X-Forwarded-For": "203.0.113.1"})
    dodging = client.post("/api/checkout", json=order_payload(), headers={"X-Forwarded-For": "203.0.113.9"})
    assert dodging.status_code == 429


def test_webhooks_and_reads_are_not_limited(database_url, simulator):
    client = limited_client(database_url, simulator, RATELIMIT_CHECKOUT="1/minute")
    for _ in range(5):
        assert client.get("/api/orders/nope").status_code == 404
        assert deliver(client, signed('{"event":{"id":"e1","name":"x"}}')).status_code == 200


def test_an_error_on_a_rate_limited_route_keeps_its_own_retry_after(database_down):
    """Flask-Limiter sets Retry-After on every answer of a limited route to the end of the
    client's window (here a minute); a 503 that asks for 5 s must say 5 s."""
    refused = database_down.post("/api/checkout", json=order_payload())

    assert refused.status_code == 503
    assert refused.headers["X-RateLimit-Limit"] == "100000", "the limiter counted it and added its headers"
    assert refused.headers["Retry-After"] == "5"


@pytest.fixture
def redis_limits():
    """Rate-limit storage in the machine's Redis, under a prefix of this test's own."""
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL}: {exc}")
    return {"RATELIMIT_STORAGE_URI": REDIS_URL, "RATELIMIT_KEY_PREFIX": f"test-{secrets.token_hex(4)}"}


def test_with_redis_the_limit_holds_across_two_workers(database_url, simulator, redis_limits, tmp_path):
    """Checkouts in concurrent waves until each worker has answered more than the limit: with a
    limit per worker twice as many would pass."""
    settings = redis_limits | {"RATELIMIT_CHECKOUT": "10/minute"}
    with gunicorn(database_url, simulator.url, tmp_path / "gunicorn.log", **settings) as server:

        def attempt(_):
            payload = order_payload()  # a shed checkout does not count against the limit: submitted again
            answer = as_a_frontend(lambda: requests.post(server.url + "/api/checkout", json=payload, timeout=30))
            return answer.status_code

        statuses, per_worker = [], Counter()
        with ThreadPoolExecutor(8) as pool:
            while min(per_worker.values(), default=0) <= 10 or len(per_worker) < 2:
                assert len(statuses) < 400, f"the workers did not share the load: {per_worker}"
                statuses += pool.map(attempt, range(8))
                checkouts = server.access_log(lambda line: line["path"] == "/api/checkout", len(statuses))
                per_worker = Counter(line["pid"] for line in checkouts)

    assert Counter(statuses) == {201: 10, 429: len(statuses) - 10}, "one limit for the service, not one per worker"


def test_when_the_limit_store_is_down_checkouts_still_go_through(database_url, simulator):
    client = limited_client(
        database_url, simulator, RATELIMIT_STORAGE_URI="redis://127.0.0.1:9/0", RATELIMIT_CHECKOUT="1/minute"
    )
    assert [client.post("/api/checkout", json=order_payload()).status_code for _ in range(2)] == [201, 201]


def test_a_checkout_body_over_64_kib_is_413(api, simulator):
    payload = order_payload(description="d" * 1000, metadata={"pad": "p" * 255})
    payload["padding"] = "x" * (65 * 1024)
    response = api.post("/api/checkout", json=payload)
    assert response.status_code == 413
    assert simulator.requests() == []


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/api/orders/nope"),
        ("DELETE", "/healthz"),
        ("POST", WEBHOOK_PATH),
        ("POST", "/api/checkout"),
        ("GET", "/api/checkout/success"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ],
)
def test_every_response_carries_the_security_headers(api, method, path):
    response = api.open(path, method=method)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_the_docs_page_may_use_its_own_scripts_and_styles_and_nothing_from_elsewhere(api):
    response = api.get("/docs")
    policy = dict(part.split(" ", 1) for part in response.headers["Content-Security-Policy"].split("; "))
    assert policy == {
        "default-src": "'none'",
        "script-src": "'self'",  # Swagger UI's bundle and docs.js, no inline script
        "style-src": "'self' 'unsafe-inline'",  # Swagger UI sets styles on elements
        "img-src": "'self' data:",  # its icons
        "connect-src": "'self'",  # it fetches /openapi.json
        "frame-ancestors": "'none'",
        "base-uri": "'none'",
        "form-action": "'none'",
    }


def test_hsts_is_sent_over_https_behind_a_trusted_proxy(database_url, simulator):
    client = limited_client(database_url, simulator, PROXY_HOPS="1")
    over_https = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    over_http = client.get("/healthz")
    assert over_https.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in over_http.headers
