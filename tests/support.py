"""Small helpers the tests share: payloads, checkouts, signed webhook deliveries."""

import copy
import json
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from signatures import HEADER, sign

# Of Monime's shape: 32-256 characters (OpenAPI, Webhook verificationMethod.secret).
WEBHOOK_SECRET = "whsec_test_current_0123456789abcdef0123456789"
PREVIOUS_WEBHOOK_SECRET = "whsec_test_previous_0123456789abcdef012345678"  # still accepted: a rotation in progress
PUBLIC_BASE_URL = "http://checkout.test"
APP_URL = "https://shop.example"
WEBHOOK_PATH = "/api/webhooks/monime"
# API_KEYS of the service under test: the shop backend's key, and another.
API_KEY_NAME = "shop-backend"
API_KEY = "test-key-0123456789abcdefghij"
API_KEYS = f"{API_KEY_NAME}:{API_KEY},ops:another-test-key-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {API_KEY}"}
ORDER_FEED_DELAY = 2.0  # seconds; the feed serves changes this old (tests/test_backend_api.py waits for them)


def wait_for(predicate: Callable, timeout: float, message: str | Callable[[], str], interval: float = 0.02):
    """Poll `predicate()` every `interval` seconds until it returns something truthy, and return that.

    The one polling loop of the tests: every wait has a deadline (`timeout`, seconds) and says what
    it awaited. On the deadline raises AssertionError with `message` (a string, or a function called
    then, e.g. for a log's tail). An exception `predicate` raises (a process that died) goes through.
    """
    give_up = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() >= give_up:
            text = message() if callable(message) else message
            raise AssertionError(f"waited {timeout:g} s for: {text}")
        time.sleep(interval)  # polling, bounded by the deadline above
    return result


def as_a_frontend(send: Callable, give_up_after: float = 60):
    """`send()` (a POST /api/checkout returning a requests.Response), again and again as the
    README asks a frontend to: while the answer is 503 monime_busy (every Monime slot of the
    worker that took it is busy), wait Retry-After seconds spread by 0.5-1.5x and submit the
    same order again. The first other answer, or AssertionError after `give_up_after` seconds."""
    give_up = time.monotonic() + give_up_after
    while (response := send()).status_code == 503 and response.json()["error"]["code"] == "monime_busy":
        assert time.monotonic() < give_up, f"still monime_busy after {give_up_after:g} s"
        time.sleep(float(response.headers["Retry-After"]) * random.uniform(0.5, 1.5))  # what Monime's 503 asks
    return response


def require(problem: str | None, tests: str, remedy: str) -> None:
    """Go on if `problem` is None. Otherwise the test fails under CI=true, where nothing may skip,
    and elsewhere skips loudly: "<TESTS> DID NOT RUN: <problem> (<remedy>)"."""
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the {tests} cannot run: {problem}", pytrace=False)
    if problem:
        pytest.skip(f"{tests.upper()} DID NOT RUN: {problem} ({remedy})")


def new_order_id() -> str:
    return f"ord_{secrets.token_hex(6)}"


def order_payload(order_id: str | None = None, **overrides) -> dict:
    """A valid POST /api/checkout body, as the frontend in Monime's guide sends it."""
    payload = {
        "name": "Order #1001",
        "orderId": order_id or new_order_id(),
        "lineItems": [
            {"type": "custom", "name": "Starter bundle", "price": {"currency": "SLE", "value": 2500}, "quantity": 2},
            {"type": "custom", "name": "Gift wrap", "price": {"currency": "SLE", "value": 150}, "quantity": 1},
        ],
        "metadata": {"cartId": "cart_123"},
        "callbackState": "state_cart_123",
    }
    payload.update(copy.deepcopy(overrides))
    return payload


ORDER_TOTAL = 2 * 2500 + 150

# A CreateCheckoutSession body as Monime documents it, for speaking to the simulator directly.
SESSION_REQUEST = {
    "name": "Order #1001",
    "description": "Two bundles and a wrap",
    "reference": "ord_1001",
    "successUrl": "https://shop.example/checkout/success?orderId=ord_1001",
    "cancelUrl": "https://shop.example/checkout/cancel?orderId=ord_1001",
    "lineItems": [
        {"type": "custom", "name": "Starter bundle", "price": {"currency": "SLE", "value": 2500}, "quantity": 2},
        {"type": "custom", "name": "Gift wrap", "price": {"currency": "SLE", "value": 150}},
    ],
    "metadata": {"orderId": "ord_1001"},
    "callbackState": "state_kept_from_read_apis",
}


def checkout(api, **overrides) -> dict:
    """Create a checkout that must succeed; returns the response body."""
    response = api.post("/api/checkout", json=order_payload(**overrides))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def order(api, order_id: str) -> dict:
    response = api.get(f"/api/orders/{order_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def deliver(api, event: dict):
    """POST a signed event the simulator produced, exactly as Monime would."""
    return api.post(WEBHOOK_PATH, data=event["body"], headers=event["headers"])


def signed_event(
    name: str,
    session_id: str,
    *,
    reference: str | None = None,
    line_items: list | None = None,
    event_id: str | None = None,
    **data_fields,
) -> dict:
    """A Monime event built by hand, for orders of arrival and contents the simulator would not produce;
    `data_fields` go into its data as they are (orderNumber=...)."""
    data = {"id": session_id, "status": name.rsplit(".", 1)[-1], "reference": reference, **data_fields}
    if line_items is not None:
        data["lineItems"] = {"data": line_items}
    envelope = {
        "apiVersion": "caph.2025-08-23",
        "event": {"id": event_id or f"evt-{secrets.token_hex(8)}", "name": name, "timestamp": "2026-01-01T00:00:00Z"},
        "object": {"id": session_id, "type": "checkout_session"},
        "data": data,
    }
    return signed(json.dumps(envelope), event_id=envelope["event"]["id"])


def signed(body: str | bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None, event_id=None) -> dict:
    raw = body.encode() if isinstance(body, str) else body
    header = sign(raw, secret, int(time.time()) if timestamp is None else timestamp)
    return {"id": event_id, "body": raw, "headers": {HEADER: header, "Content-Type": "application/json"}}


def items(value: int, currency: str = "SLE", quantity: int = 1) -> list:
    return [{"type": "custom", "name": "x", "price": {"currency": currency, "value": value}, "quantity": quantity}]


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample in (f"{name}{{{wanted}}}", name if not labels else None):
            return float(value)
    return 0.0


def scrape(api) -> str:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.data.decode() if hasattr(response, "data") else response.text


def all_at_once(count: int, send) -> list:
    """Run `send` from `count` threads released together, each on its own connection."""
    start = threading.Barrier(count)

    def go(_):
        start.wait()
        return send()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(go, range(count)))


def across_both_workers(live_server, path: str, burst, tries: int = 5) -> None:
    """Call `burst(attempt)`, which sends some requests to `path` at once and
    checks them, until one burst is seen spread over both gunicorn workers
    (the kernel decides which worker accepts a connection); `burst` returns
    how many requests it sent. Fails after `tries` bursts on one worker."""

    def to_path(line: dict) -> bool:
        return line["path"] == path

    for attempt in range(1, tries + 1):
        logged = len(live_server.access_log(to_path))
        sent = burst(attempt)
        if len({line["pid"] for line in live_server.access_log(to_path, at_least=logged + sent)[logged:]}) == 2:
            return
    raise AssertionError(f"no burst to {path} reached both workers in {tries} tries")


@contextmanager
def serving(wsgi_app):
    """Serve a WSGI app over real HTTP on a free local port, in a thread; yields its URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


# --- raw HTTP, for what a client library would not send ----------------------------------


def exchange(url: str, request: bytes) -> tuple[int, bytes]:
    """Send raw HTTP/1.1 bytes over a socket and read one answer by its Content-Length: the
    connection stays open (so gunicorn drains what was not read, rather than resetting it)."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(request)
        answer = connection.makefile("rb")
        status, length = int(answer.readline().split()[1]), 0
        while (line := answer.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, answer.read(length)


def chunked(path: str, body: bytes, **headers: str) -> bytes:
    """A POST whose body is sent in 64 KiB chunks, without Content-Length, as a proxy or a
    streaming client would."""
    head = [f"POST {path} HTTP/1.1", "Host: checkout.test", "Transfer-Encoding: chunked"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    return (
        "\r\n".join(head).encode()
        + b"\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
        + b"0\r\n\r\n"
    )
