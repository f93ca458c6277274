"""The Monime simulator itself, over real HTTP: the API as Monime documents it, the
control API and its signed webhooks, the faults, and the hosted checkout page."""

import copy
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import urljoin

import pytest
import requests
import urllib3
from werkzeug.wrappers import Request, Response

import signatures
from conftest import free_port
from simulator import openapi
from support import SESSION_REQUEST as BODY
from support import serving, wait_for

SESSIONS = "/v1/checkout-sessions"
API_VERSION = "caph.2025-08-23"
EVENT_NAMES = {
    "complete": ("completed", "checkout_session.completed"),
    "cancel": ("cancelled", "checkout_session.cancelled"),
    "expire": ("expired", "checkout_session.expired"),
}


def official_headers(simulator, key: str | None = "key-1") -> dict:
    headers = {"Authorization": f"Bearer {simulator.access_token}", "Monime-Space-Id": simulator.space_id}
    return headers | ({"Idempotency-Key": key} if key is not None else {})


def body_with(**changes) -> dict:
    body = copy.deepcopy(BODY)
    body.update(copy.deepcopy(changes))
    return {key: value for key, value in body.items() if value is not None}


def create(simulator, body=None, key: str | None = "key-1", headers: dict | None = None) -> requests.Response:
    headers = official_headers(simulator, key) if headers is None else headers
    return requests.post(simulator.url + SESSIONS, json=BODY if body is None else body, headers=headers, timeout=10)


def created(simulator, body=None, key: str = "key-1") -> dict:
    response = create(simulator, body, key)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def get(simulator, session_id: str, headers: dict | None = None) -> requests.Response:
    headers = official_headers(simulator, None) if headers is None else headers
    return requests.get(f"{simulator.url}{SESSIONS}/{session_id}", headers=headers, timeout=10)


def delete(simulator, session_id: str) -> requests.Response:
    return requests.delete(f"{simulator.url}{SESSIONS}/{session_id}", headers=official_headers(simulator), timeout=10)


def finish(simulator, session_id: str, action: str, **options) -> requests.Response:
    return requests.post(f"{simulator.url}/_sim/sessions/{session_id}/{action}", json=options, timeout=10)


def answered(delivery: dict) -> dict:
    """What a delivery attempt says the receiver answered."""
    return {key: delivery[key] for key in ("eventId", "status", "body", "error")}


def monime_error(response: requests.Response, status: int, reason: str) -> dict:
    """The error of an answer in Monime's error shape, checked."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "messages", "error"}
    assert (body["success"], body["messages"]) == (False, [])
    error = body["error"]
    assert set(error) == {"code", "reason", "message", "details"}
    assert (error["code"], error["reason"]) == (status, reason)
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    return error


@contextmanager
def receiver(status: int = 200):
    """A webhook endpoint of our own: records the raw body and headers of every POST."""
    received = []

    @Request.application
    def app(request: Request) -> Response:
        received.append({"method": request.method, "path": request.path, "body": request.get_data(),
                         "headers": dict(request.headers)})  # fmt: skip
        return Response('{"received": true}', status=status, content_type="application/json")

    with serving(app) as url:
        yield f"{url}/hooks/monime", received


# --- creating a session ---------------------------------------------------------------------


def test_a_create_answers_monimes_success_envelope_with_a_valid_pending_checkout_session(simulator):
    response = create(simulator)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "messages", "result"}
    assert (body["success"], body["messages"]) == (True, [])
    session = body["result"]
    assert openapi.errors(openapi.CHECKOUT_SESSION, session) == []
    assert session["id"].startswith("scs-")
    assert session["status"] == "pending"
    assert session["redirectUrl"] == f"{simulator.url}/checkout/{session['id']}"
    for field in ("name", "description", "reference", "successUrl", "cancelUrl", "metadata"):
        assert session[field] == BODY[field]
    items = session["lineItems"]["data"]
    assert [(item["name"], item["price"], item["quantity"]) for item in items] == [
        ("Starter bundle", {"currency": "SLE", "value": 2500}, 2),
        ("Gift wrap", {"currency": "SLE", "value": 150}, 1),
    ]
    assert all(item["id"].startswith("cli-") for item in items)
    assert simulator.sessions() == [session]


def test_callback_state_is_never_shown_by_a_create_a_get_or_the_control_api(simulator):
    session = created(simulator)

    assert "callbackState" not in session
    assert "callbackState" not in get(simulator, session["id"]).json()["result"]
    assert "callbackState" not in simulator.sessions()[0]
    assert "state_kept_from_read_apis" not in create(simulator).text  # nor in a replay
    assert "state_kept_from_read_apis" not in get(simulator, session["id"]).text


def test_every_request_to_the_api_is_recorded_with_its_key_and_body(simulator):
    created(simulator, key="key-recorded")
    get(simulator, "scs-whatever")

    assert simulator.requests() == [
        {"method": "POST", "path": SESSIONS, "idempotencyKey": "key-recorded", "body": BODY},
        {"method": "GET", "path": f"{SESSIONS}/scs-whatever", "idempotencyKey": None, "body": None},
    ]
    assert [r["method"] for r in simulator.requests("GET")] == ["GET"]


def without(headers: dict, name: str) -> dict:
    return {key: value for key, value in headers.items() if key != name}


BAD_HEADERS = {
    "no token": (lambda h: without(h, "Authorization"), 401, "unauthenticated"),
    "wrong token": (lambda h: h | {"Authorization": "Bearer mon_wrong"}, 401, "unauthenticated"),
    "token without Bearer": (lambda h: h | {"Authorization": h["Authorization"].split()[1]}, 401, "unauthenticated"),
    "no space": (lambda h: without(h, "Monime-Space-Id"), 400, "invalid_header"),
    "space without spc-": (lambda h: h | {"Monime-Space-Id": "simulator"}, 400, "invalid_header"),
    "space of 65 characters": (lambda h: h | {"Monime-Space-Id": "spc-" + "s" * 61}, 400, "invalid_header"),
    "another space": (lambda h: h | {"Monime-Space-Id": "spc-someone-else"}, 403, "forbidden"),
    "no idempotency key": (lambda h: without(h, "Idempotency-Key"), 400, "invalid_header"),
    "empty idempotency key": (lambda h: h | {"Idempotency-Key": ""}, 400, "invalid_header"),
    "idempotency key of 65 characters": (lambda h: h | {"Idempotency-Key": "k" * 65}, 400, "invalid_header"),
}


@pytest.mark.parametrize(("change", "status", "reason"), BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_a_create_with_bad_headers_is_refused_in_monimes_error_shape(simulator, change, status, reason):
    response = create(simulator, headers=change(official_headers(simulator)))

    monime_error(response, status, reason)
    assert simulator.sessions() == []


def test_an_idempotency_key_of_64_characters_is_accepted(simulator):
    assert created(simulator, key="k" * 64)["status"] == "pending"


@pytest.mark.parametrize("name", ["no token", "another space", "space without spc-"])
def test_a_get_is_refused_on_the_same_headers_as_a_create(simulator, name):
    session = created(simulator)
    change, status, reason = BAD_HEADERS[name]

    monime_error(get(simulator, session["id"], headers=change(official_headers(simulator, None))), status, reason)


def test_the_same_key_and_body_return_the_same_session(simulator):
    first = created(simulator, key="key-same")
    reordered = dict(reversed(list(BODY.items())))  # the same JSON, keys in another order
    second = created(simulator, reordered, key="key-same")

    assert second == first
    assert len(simulator.sessions()) == 1


def test_the_same_key_with_another_body_is_a_409_and_makes_nothing(simulator):
    first = created(simulator, key="key-conflict")

    response = create(simulator, body_with(name="Another order"), key="key-conflict")

    monime_error(response, 409, "idempotency_key_in_use")
    assert simulator.sessions() == [first]


def test_different_keys_make_different_sessions(simulator):
    assert created(simulator, key="key-a")["id"] != created(simulator, key="key-b")["id"]
    assert len(simulator.sessions()) == 2


def item(**overrides) -> dict:
    return {"type": "custom", "name": "Bundle", "price": {"currency": "SLE", "value": 100}, "quantity": 1} | overrides


INVALID_BODIES = {
    "name of 151 characters": (body_with(name="n" * 151), "name: ", "is too long"),
    "no name": (body_with(name=None), "(body): ", "'name' is a required property"),
    "no line items": (body_with(lineItems=None), "(body): ", "'lineItems' is a required property"),
    "empty line items": (body_with(lineItems=[]), "lineItems: ", "should be non-empty"),
    "17 line items": (body_with(lineItems=[item()] * 17), "lineItems: ", "is too long"),
    "unknown top-level field": (body_with(colour="red"), "(body): ", "'colour' was unexpected"),
    "quantity 0": (body_with(lineItems=[item(quantity=0)]), "lineItems.0: ", "'quantity': 0"),
    "price with an extra field": (
        body_with(lineItems=[item(), item(price={"currency": "SLE", "value": 1, "tax": 1})]),
        "lineItems.1: ",
        "'tax': 1",
    ),
    "value a string": (body_with(lineItems=[item(price={"currency": "SLE", "value": "1"})]), "lineItems.0: ", "'1'"),
    "not an object": ([BODY], "(body): ", "is not of type 'object'"),
}


@pytest.mark.parametrize(("body", "where", "what"), INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_an_invalid_body_is_a_400_validation_failed_naming_the_problem(simulator, body, where, what):
    response = create(simulator, body)

    error = monime_error(response, 400, "validation_failed")
    assert any(detail.startswith(where) and what in detail for detail in error["details"]), error["details"]
    assert simulator.sessions() == []


def test_a_body_that_is_not_json_is_a_400_validation_failed(simulator):
    headers = official_headers(simulator) | {"Content-Type": "application/json"}
    response = requests.post(simulator.url + SESSIONS, data=b"{not json", headers=headers, timeout=10)

    monime_error(response, 400, "validation_failed")
    assert simulator.sessions() == []


# --- reading and deleting ------------------------------------------------------------------


def test_get_returns_the_session_in_monimes_envelope(simulator):
    session = created(simulator)

    response = get(simulator, session["id"])

    assert response.status_code == 200
    assert response.json() == {"success": True, "messages": [], "result": session}


def test_get_of_an_unknown_session_is_a_404(simulator):
    error = monime_error(get(simulator, "scs-unknown"), 404, "not_found")
    assert "scs-unknown" in error["message"]


def test_a_pending_session_can_be_deleted_and_is_then_gone(simulator):
    session = created(simulator)

    response = delete(simulator, session["id"])

    assert response.status_code == 200
    assert response.json() == {"success": True, "messages": []}
    monime_error(get(simulator, session["id"]), 404, "not_found")
    assert simulator.sessions() == []
    monime_error(delete(simulator, session["id"]), 404, "not_found")


def test_a_completed_session_cannot_be_deleted(simulator):
    session = created(simulator)
    simulator.complete(session["id"], deliver=False)

    monime_error(delete(simulator, session["id"]), 409, "invalid_state")
    assert get(simulator, session["id"]).json()["result"]["status"] == "completed"


def test_replaying_a_create_whose_session_was_deleted_makes_a_new_session(simulator):
    session = created(simulator, key="key-deleted")
    assert delete(simulator, session["id"]).status_code == 200

    response = create(simulator, key="key-deleted")

    assert response.status_code == 200, response.text[:200]
    assert response.json()["result"]["id"] != session["id"]
    assert [s["id"] for s in simulator.sessions()] == [response.json()["result"]["id"]]


# --- the control API: finishing sessions and their signed events --------------------------------


@pytest.mark.parametrize("action", EVENT_NAMES)
def test_finishing_a_session_changes_its_status_and_returns_monimes_signed_event(simulator, action):
    session = created(simulator)
    status, name = EVENT_NAMES[action]

    result = simulator.finish(session["id"], action, deliver=False)

    assert get(simulator, session["id"]).json()["result"]["status"] == status
    assert result["session"] == get(simulator, session["id"]).json()["result"]
    assert result["delivery"] is None
    event = result["event"]
    envelope = json.loads(event["body"])
    assert set(envelope) == {"apiVersion", "event", "object", "data"}
    assert envelope["apiVersion"] == API_VERSION
    assert set(envelope["event"]) == {"id", "name", "timestamp"}
    assert envelope["event"]["id"] == event["id"] and event["id"].startswith("evt-")
    assert envelope["event"]["name"] == name
    assert datetime.fromisoformat(envelope["event"]["timestamp"]).tzinfo is not None
    assert envelope["object"] == {"id": session["id"], "type": "checkout_session"}
    assert envelope["data"] == result["session"]
    assert envelope["data"]["status"] == status
    assert "callbackState" not in envelope["data"]
    assert openapi.errors(openapi.CHECKOUT_SESSION, envelope["data"]) == []
    assert event["headers"]["Content-Type"] == "application/json"
    signatures.verify(event["body"].encode(), event["headers"][signatures.HEADER], [simulator.webhook_secret])
    with pytest.raises(signatures.SignatureError):
        signatures.verify(event["body"].encode(), event["headers"][signatures.HEADER], ["whsec_another"])


def test_a_completion_gives_the_session_monimes_order_number_once_and_an_unpaid_ending_none(simulator):
    paid, cancelled, expired = (created(simulator, key=key) for key in ("key-paid", "key-cancelled", "key-expired"))
    assert get(simulator, paid["id"]).json()["result"]["orderNumber"] is None, "null until paid (OpenAPI)"

    completion = simulator.complete(paid["id"], deliver=False)
    number = get(simulator, paid["id"]).json()["result"]["orderNumber"]

    assert isinstance(number, str) and 1 <= len(number) <= 20, "a receipt's orderNumber is at most 20 characters"
    assert (
        json.loads(completion["event"]["body"])["data"]["orderNumber"] == number == completion["session"]["orderNumber"]
    )
    again = simulator.complete(paid["id"], deliver=False, force=True)["event"]
    assert json.loads(again["body"])["data"]["orderNumber"] == number, "one payment, one order number"
    for session, action in ((cancelled, "cancel"), (expired, "expire")):
        ended = simulator.finish(session["id"], action, deliver=False)["event"]
        assert json.loads(ended["body"])["data"]["orderNumber"] is None
        assert get(simulator, session["id"]).json()["result"]["orderNumber"] is None
    other = created(simulator, key="key-other")
    simulator.complete(other["id"], deliver=False)
    assert get(simulator, other["id"]).json()["result"]["orderNumber"] != number, "each payment has its own"


def test_every_event_has_its_own_id(simulator):
    session = created(simulator)
    first = simulator.complete(session["id"], deliver=False)["event"]
    second = simulator.complete(session["id"], deliver=False, force=True)["event"]
    assert first["id"] != second["id"]


@pytest.mark.parametrize("action", EVENT_NAMES)
def test_finishing_a_session_that_is_no_longer_pending_is_a_409_unless_forced(simulator, action):
    session = created(simulator)
    simulator.complete(session["id"], deliver=False)

    refused = finish(simulator, session["id"], action)

    assert refused.status_code == 409
    assert "no longer pending" in refused.json()["error"]
    assert get(simulator, session["id"]).json()["result"]["status"] == "completed"

    forced = simulator.finish(session["id"], action, deliver=False, force=True)

    status, name = EVENT_NAMES[action]
    assert json.loads(forced["event"]["body"])["event"]["name"] == name
    assert get(simulator, session["id"]).json()["result"]["status"] == status


def test_finishing_an_unknown_session_or_with_an_unknown_action_is_a_404(simulator):
    session = created(simulator)

    assert finish(simulator, "scs-unknown", "complete").status_code == 404
    assert finish(simulator, session["id"], "refund").status_code == 404
    assert get(simulator, session["id"]).json()["result"]["status"] == "pending"


def test_the_webhook_secret_can_be_configured(simulator):
    simulator.configure(webhook_secret="whsec_rotated")
    event = simulator.complete(created(simulator)["id"], deliver=False)["event"]

    signatures.verify(event["body"].encode(), event["headers"][signatures.HEADER], ["whsec_rotated"])
    with pytest.raises(signatures.SignatureError):
        signatures.verify(event["body"].encode(), event["headers"][signatures.HEADER], [simulator.webhook_secret])


# --- delivering webhooks ---------------------------------------------------------------------


def test_a_finished_session_posts_exactly_the_returned_event_to_the_webhook_url(simulator):
    session = created(simulator)
    with receiver() as (url, received):
        simulator.configure(webhook_url=url)
        result = simulator.complete(session["id"])

    event = result["event"]
    [post] = received
    assert (post["method"], post["path"]) == ("POST", "/hooks/monime")
    assert post["body"] == event["body"].encode()
    assert post["headers"][signatures.HEADER] == event["headers"][signatures.HEADER]
    assert post["headers"]["Content-Type"] == "application/json"
    signatures.verify(post["body"], post["headers"][signatures.HEADER], [simulator.webhook_secret])
    assert answered(result["delivery"]) == {
        "eventId": event["id"],
        "status": 200,
        "body": '{"received": true}',
        "error": None,
    }
    assert (result["delivery"]["attempt"], result["delivery"]["reason"]) == (1, "first")
    assert result["delivery"]["eventName"] == "checkout_session.completed"
    assert (result["delivery"]["sessionId"], result["delivery"]["url"]) == (session["id"], url)
    assert simulator.deliveries() == [result["delivery"]]


def test_a_failed_delivery_is_retried_with_growing_backoff_each_attempt_signed_anew_and_recorded(simulator):
    session = created(simulator)
    simulator.configure(retry_backoff=0.1, retry_attempts=3)
    with receiver(status=500) as (url, received):
        simulator.configure(webhook_url=url)
        result = simulator.cancel(session["id"])
        attempts = simulator.wait_for_deliveries(3)

    assert result["delivery"] == attempts[0]
    assert [(d["attempt"], d["reason"], d["status"]) for d in attempts] == [
        (1, "first", 500),
        (2, "retry", 500),
        (3, "retry", 500),
    ]
    assert {d["eventId"] for d in attempts} == {result["event"]["id"]}
    assert [post["body"] for post in received[:3]] == [result["event"]["body"].encode()] * 3
    for post in received[:3]:
        signatures.verify(post["body"], post["headers"][signatures.HEADER], [simulator.webhook_secret])
    times = [datetime.fromisoformat(d["time"]) for d in attempts]
    assert (times[1] - times[0]).total_seconds() >= 0.1  # the backoff
    assert (times[2] - times[1]).total_seconds() >= 0.2  # doubled


def test_a_retry_stops_at_the_first_2xx(simulator):
    session = created(simulator)
    simulator.configure(retry_backoff=0.05)
    answers = iter([503, 502, 200])

    @Request.application
    def flaky(request: Request) -> Response:
        return Response("{}", status=next(answers, 200))

    with serving(flaky) as url:
        simulator.configure(webhook_url=url)
        simulator.complete(session["id"])
        attempts = simulator.wait_for_deliveries(3)

    assert [d["status"] for d in attempts] == [503, 502, 200]
    assert [d["attempt"] for d in attempts] == [1, 2, 3]


def test_a_delivery_to_an_unreachable_url_is_recorded_as_failed(simulator):
    simulator.configure(webhook_url=f"http://127.0.0.1:{free_port()}/hooks")

    result = simulator.complete(created(simulator)["id"])

    assert answered(result["delivery"]) == {
        "eventId": result["event"]["id"],
        "status": None,
        "body": "",
        "error": "ConnectionError",
    }
    assert simulator.deliveries()[0] == result["delivery"]
    assert get(simulator, result["session"]["id"]).json()["result"]["status"] == "completed"


def test_deliver_false_posts_nothing(simulator):
    session = created(simulator)
    with receiver() as (url, received):
        simulator.configure(webhook_url=url)
        result = simulator.complete(session["id"], deliver=False)

    assert received == []
    assert result["delivery"] is None
    assert simulator.deliveries() == []


def test_without_a_webhook_url_nothing_is_delivered(simulator):
    result = simulator.expire(created(simulator)["id"])

    assert result["delivery"] is None
    assert simulator.deliveries() == []


# --- faults ---------------------------------------------------------------------------------


def test_fail_answers_503_that_many_times_without_doing_the_work_then_succeeds(simulator):
    simulator.faults(fail=2)

    first, second, third = (create(simulator, key="key-fail") for _ in range(3))

    for failed in (first, second):
        monime_error(failed, 503, "unavailable")
    assert third.status_code == 200
    assert simulator.sessions() == [third.json()["result"]]
    assert len(simulator.requests("POST")) == 3


def test_fail_status_chooses_the_status_of_the_failures(simulator):
    simulator.faults(fail=1, fail_status=500)

    monime_error(create(simulator), 500, "unavailable")
    assert create(simulator).status_code == 200


def test_a_failure_is_answered_before_the_credentials_are_checked(simulator):
    simulator.faults(fail=1)
    monime_error(create(simulator, headers={}), 503, "unavailable")
    monime_error(create(simulator, headers={}), 401, "unauthenticated")


def fault_headers(response: requests.Response) -> dict:
    return {name: response.headers.get(name) for name in ("Retry-After", "Monime-Rate-Limit")}


FAULT_HEADERS = {
    "429": ({"fail_status": 429}, {"Retry-After": "1", "Monime-Rate-Limit": "space-requests-per-second"}),
    "429 named": (
        {"fail_status": 429, "retry_after": 7, "rate_limit": "writes"},
        {"Retry-After": "7", "Monime-Rate-Limit": "writes"},
    ),
    "429 dated": (
        {"fail_status": 429, "retry_after": "Wed, 21 Oct 2026 07:28:00 GMT"},
        {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT", "Monime-Rate-Limit": "space-requests-per-second"},
    ),
    "503": ({}, {"Retry-After": "1", "Monime-Rate-Limit": None}),
    "503 without": ({"retry_after": None}, {"Retry-After": None, "Monime-Rate-Limit": None}),
    "500": ({"fail_status": 500}, {"Retry-After": None, "Monime-Rate-Limit": None}),
}  # fmt: skip


@pytest.mark.parametrize(("faults", "headers"), FAULT_HEADERS.values(), ids=FAULT_HEADERS.keys())
def test_a_429_or_503_fail_carries_retry_after_and_a_429_monime_rate_limit(simulator, faults, headers):
    simulator.faults(fail=1, **faults)

    response = create(simulator)

    status = faults.get("fail_status", 503)
    monime_error(response, status, "rate_limit_exceeded" if status == 429 else "unavailable")
    assert fault_headers(response) == headers


@pytest.mark.parametrize("retry_after", [-1, 1.5, "soon", True, [1]])
def test_a_retry_after_that_is_neither_whole_seconds_nor_a_date_is_refused(simulator, retry_after):
    response = requests.post(f"{simulator.url}/_sim/faults", json={"fail": 1, "retryAfter": retry_after}, timeout=10)
    assert response.status_code == 400
    assert "retryAfter" in response.json()["error"]


def test_in_flight_answers_a_create_with_a_key_still_being_made_409_and_then_the_session(simulator):
    simulator.faults(in_flight=1.0)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(create, simulator, None, "key-busy")
        wait_for(lambda: len(simulator.requests("POST")) == 1, 10, "the first create to reach the simulator")
        meanwhile = create(simulator, key="key-busy")
        other_body = create(simulator, body_with(name="Another order"), key="key-busy")
        made = first.result(timeout=10)

    monime_error(meanwhile, 409, "idempotency_request_in_progress")
    monime_error(other_body, 409, "idempotency_key_in_use")
    assert made.status_code == 200
    assert create(simulator, key="key-busy").json()["result"] == made.json()["result"]  # the replay, at once
    assert simulator.sessions() == [made.json()["result"]]


def test_drop_does_the_work_and_closes_the_connection_unanswered(simulator):
    simulator.faults(drop=1)

    with pytest.raises(requests.ConnectionError):
        create(simulator, key="key-drop")

    [session] = simulator.sessions()
    assert create(simulator, key="key-drop").json()["result"] == session  # the retry gets what was made
    assert len(simulator.sessions()) == 1


def test_delay_with_slow_1_delays_only_the_next_request(simulator):
    simulator.faults(delay=0.4, slow=1)

    started = time.monotonic()
    first = create(simulator, key="key-delay-1")
    first_took = time.monotonic() - started
    second = requests.post(
        simulator.url + SESSIONS, json=BODY, headers=official_headers(simulator, "key-delay-2"), timeout=(2, 0.35)
    )  # would time out if it were delayed too

    assert first.status_code == second.status_code == 200
    assert first_took >= 0.4


def test_delay_without_slow_delays_every_request(simulator):
    simulator.faults(delay=0.2)

    for key in ("key-every-1", "key-every-2"):
        started = time.monotonic()
        assert create(simulator, key=key).status_code == 200
        assert time.monotonic() - started >= 0.2


def test_a_trickle_sends_the_status_line_headers_and_body_one_byte_at_a_time(simulator):
    interval = 0.005
    simulator.faults(trickle={"interval": interval, "count": 1})
    request = f"GET {SESSIONS}/scs-unknown HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {simulator.access_token}\r\n"
    request += f"Monime-Space-Id: {simulator.space_id}\r\n\r\n"
    host, port = simulator.url.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request.encode())
        started, pieces = time.monotonic(), []
        while piece := connection.recv(65536):
            pieces.append(piece)
        took = time.monotonic() - started

    raw = b"".join(pieces)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 NOT FOUND\r\n")
    assert b"\r\nConnection: close" in head
    assert json.loads(body)["error"]["reason"] == "not_found"  # the whole answer, unchanged
    assert len(pieces) > len(raw) / 2  # it came in (about) as many pieces as bytes...
    assert took >= len(raw) * interval  # ... each one `interval` after the last


def test_a_trickle_of_count_1_slows_only_the_next_answer_and_delays_its_headers(simulator):
    simulator.faults(trickle={"interval": 0.5, "count": 1})

    with pytest.raises(requests.ReadTimeout):  # not even the status line within 0.35 s
        requests.post(simulator.url + SESSIONS, json=BODY, headers=official_headers(simulator), timeout=(2, 0.35))
    response = requests.post(
        simulator.url + SESSIONS, json=BODY, headers=official_headers(simulator), timeout=(2, 0.35)
    )  # would time out if it were trickled too

    assert response.status_code == 200


def test_a_trickle_without_headers_sends_the_headers_at_once_and_the_body_slowly(simulator):
    session = created(simulator)
    simulator.faults(trickle={"interval": 0.5, "headers": False})

    with requests.get(
        f"{simulator.url}{SESSIONS}/{session['id']}", headers=official_headers(simulator, None), timeout=(2, 0.35),
        stream=True,
    ) as response:  # fmt: skip
        assert response.status_code == 200  # the headers came within the 0.35 s read timeout
        assert int(response.headers["Content-Length"]) > 100
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):  # the body's first byte did not
            response.raw.read(1)


@pytest.mark.parametrize("trickle", [{"interval": -1}, {"interval": "slow"}, {"count": -1}, 0.5, [1]])
def test_a_trickle_that_makes_no_sense_is_a_400(simulator, trickle):
    response = requests.post(f"{simulator.url}/_sim/faults", json={"trickle": trickle}, timeout=10)
    assert response.status_code == 400
    assert "trickle" in response.json()["error"]


def test_faults_without_arguments_clears_every_fault(simulator):
    simulator.faults(delay=5, fail=5, drop=5, trickle={"interval": 5})

    simulator.faults()

    response = requests.post(simulator.url + SESSIONS, json=BODY, headers=official_headers(simulator), timeout=(2, 2))
    assert response.status_code == 200


def test_reset_forgets_sessions_keys_requests_deliveries_and_faults(simulator):
    session = created(simulator, key="key-reset")
    simulator.configure(webhook_url=f"http://127.0.0.1:{free_port()}/hooks")
    simulator.complete(session["id"])
    simulator.faults(fail=5)

    simulator.reset()

    assert simulator.sessions() == []
    assert simulator.requests() == []
    assert simulator.deliveries() == []
    monime_error(get(simulator, session["id"]), 404, "not_found")
    again = created(simulator, body_with(name="Another order"), key="key-reset")  # no 409: the key is forgotten
    assert again["id"] != session["id"]
    assert simulator.complete(again["id"])["delivery"] is None  # and so is the webhook URL


# --- the hosted checkout page ----------------------------------------------------------------


def hosted(url: str, method: str = "GET") -> requests.Response:
    return requests.request(method, url, allow_redirects=False, timeout=10)


def test_the_hosted_page_shows_the_name_each_line_item_and_the_total(simulator):
    session = created(simulator)

    response = hosted(session["redirectUrl"])

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert "<h1>Order #1001</h1>" in page
    assert "2 × Starter bundle" in page and "SLE 50.00" in page
    assert "1 × Gift wrap" in page and "SLE 1.50" in page
    assert "<strong>SLE 51.50</strong>" in page  # 2 × 25.00 + 1.50


def test_the_hosted_page_buttons_post_to_pay_and_cancel(simulator):
    session = created(simulator)

    actions = re.findall(r'formaction="([^"]+)"', hosted(session["redirectUrl"]).text)

    assert [urljoin(session["redirectUrl"], action) for action in actions] == [
        f"{session['redirectUrl']}/pay",
        f"{session['redirectUrl']}/cancel",
    ]


def test_the_hosted_page_escapes_the_session_name(simulator):
    session = created(simulator, body_with(name="<script>alert(1)</script>"))

    page = hosted(session["redirectUrl"]).text

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize(
    ("choice", "back_to", "status"), [("pay", "successUrl", "completed"), ("cancel", "cancelUrl", "cancelled")]
)
def test_the_shoppers_choice_redirects_back_and_delivers_the_signed_webhook(simulator, choice, back_to, status):
    session = created(simulator)
    with receiver() as (url, received):
        simulator.configure(webhook_url=url)
        response = hosted(f"{session['redirectUrl']}/{choice}", "POST")

    assert response.status_code == 303
    assert response.headers["Location"] == BODY[back_to]
    assert get(simulator, session["id"]).json()["result"]["status"] == status
    [post] = received
    envelope = json.loads(post["body"])
    assert envelope["event"]["name"] == f"checkout_session.{status}"
    assert envelope["object"]["id"] == session["id"]
    assert envelope["data"]["orderNumber"] == get(simulator, session["id"]).json()["result"]["orderNumber"]
    assert (envelope["data"]["orderNumber"] is not None) == (choice == "pay"), "paying gives the order number"
    signatures.verify(post["body"], post["headers"][signatures.HEADER], [simulator.webhook_secret])
    [delivery] = simulator.deliveries()
    assert answered(delivery) == {
        "eventId": envelope["event"]["id"],
        "status": 200,
        "body": '{"received": true}',
        "error": None,
    }


def test_paying_without_a_webhook_url_still_completes(simulator):
    session = created(simulator)

    assert hosted(f"{session['redirectUrl']}/pay", "POST").status_code == 303
    assert get(simulator, session["id"]).json()["result"]["status"] == "completed"
    assert simulator.deliveries() == []
    assert "This session is completed." in hosted(session["redirectUrl"]).text
    assert "formaction" not in hosted(session["redirectUrl"]).text


@pytest.mark.parametrize("first", ["pay", "cancel"])
def test_a_session_that_is_no_longer_pending_cannot_be_paid_or_cancelled(simulator, first):
    session = created(simulator)
    assert hosted(f"{session['redirectUrl']}/{first}", "POST").status_code == 303
    status = get(simulator, session["id"]).json()["result"]["status"]

    assert hosted(f"{session['redirectUrl']}/pay", "POST").status_code == 409
    assert hosted(f"{session['redirectUrl']}/cancel", "POST").status_code == 409
    assert get(simulator, session["id"]).json()["result"]["status"] == status


def test_the_hosted_page_of_an_unknown_session_is_a_404(simulator):
    page = f"{simulator.url}/checkout/scs-unknown"
    assert hosted(page).status_code == 404
    assert hosted(f"{page}/pay", "POST").status_code == 404
    assert hosted(f"{page}/cancel", "POST").status_code == 404


def test_an_unknown_choice_on_the_hosted_page_is_a_404_and_changes_nothing(simulator):
    session = created(simulator)

    assert hosted(f"{session['redirectUrl']}/refund", "POST").status_code == 404
    assert get(simulator, session["id"]).json()["result"]["status"] == "pending"


def test_the_hosted_page_of_a_session_without_line_items_is_shown(simulator):
    session = created(simulator, {"name": "Nothing to buy", "lineItems": None})

    assert hosted(session["redirectUrl"]).status_code == 200


def test_the_hosted_page_of_an_item_without_a_price_shows_nothing_to_pay(simulator):
    session = created(simulator, {"name": "Free sample", "lineItems": [{"type": "custom", "name": "x", "price": {}}]})

    page = hosted(session["redirectUrl"])

    assert page.status_code == 200
    assert "0.00" in page.text


def test_paying_a_session_made_without_a_success_url_shows_the_page_instead_of_redirecting(simulator):
    body = {key: value for key, value in BODY.items() if key != "successUrl"}
    session = created(simulator, body)

    paid = hosted(f"{session['redirectUrl']}/pay", "POST")

    assert paid.status_code == 200
    assert "This session is completed." in paid.text
    assert get(simulator, session["id"]).json()["result"]["status"] == "completed"


ALL_METHODS = ["momo:m17", "momo:m18", "card", "bank:slb001", "bank:slb004", "bank:slb007", "wallet:dw001"]


def offered(page: str) -> list[str]:
    return re.findall(r'name="method" value="([^"]+)"', page)


def test_the_hosted_page_offers_every_payment_method_the_first_chosen(simulator):
    page = hosted(created(simulator)["redirectUrl"]).text

    assert offered(page) == ALL_METHODS
    assert 'value="momo:m17" checked' in page
    for label in ("Mobile Money", "Orange Money", "Africell Money", "Card", "Bank", "SLCB", "Wallet", "SafulPay"):
        assert label in page


def test_the_hosted_page_honours_the_sessions_payment_options(simulator):
    options = {
        "momo": {"enabledProviders": ["m18"], "disabledProviders": ["m18"]},  # both: enabled wins
        "card": {"disable": True},
        "bank": {"disabledProviders": ["slb004", "slb007"]},
        "wallet": {"disable": True},
    }
    session = created(simulator, body_with(paymentOptions=options))

    assert offered(hosted(session["redirectUrl"]).text) == ["momo:m18", "bank:slb001"]
    assert "paymentOptions" not in session  # not part of Monime's CheckoutSession


def test_paying_records_the_chosen_method_and_refuses_one_not_offered(simulator):
    session = created(simulator, body_with(paymentOptions={"card": {"disable": True}}))
    pay = f"{session['redirectUrl']}/pay"

    refused = requests.post(pay, data={"method": "card"}, allow_redirects=False, timeout=10)
    assert refused.status_code == 400
    assert get(simulator, session["id"]).json()["result"]["status"] == "pending"

    paid = requests.post(pay, data={"method": "wallet:dw001"}, allow_redirects=False, timeout=10)
    assert paid.status_code == 303
    dashboard = requests.get(f"{simulator.url}/_sim/", timeout=10).text
    assert "wallet:dw001" in dashboard


def test_cancelling_needs_no_payment_method(simulator):
    session = created(
        simulator, body_with(paymentOptions={key: {"disable": True} for key in ("momo", "card", "bank", "wallet")})
    )

    assert "allows no payment method" in hosted(session["redirectUrl"]).text
    assert hosted(f"{session['redirectUrl']}/pay", "POST").status_code == 400
    assert hosted(f"{session['redirectUrl']}/cancel", "POST").status_code == 303


@pytest.mark.parametrize(("color", "accent"), [("#0a7c3e", "#0a7c3e"), ("red; } body { display: none", "#f97316")])
def test_the_hosted_page_takes_a_hex_brand_colour_and_nothing_else(simulator, color, accent):
    session = created(simulator, body_with(brandingOptions={"primaryColor": color}))

    assert f"--accent: {accent} }}" in hosted(session["redirectUrl"]).text


# --- settings, expiry and the dashboard ---------------------------------------------------------


def test_the_settings_can_be_read_changed_and_are_restored_by_a_reset(simulator):
    config = f"{simulator.url}/_sim/config"
    defaults = requests.get(config, timeout=10).json()
    assert defaults["retryAttempts"] == 6 and defaults["twice"] is False and defaults["sessionLifetime"] == 1800

    changed = simulator.configure(twice=True, retryBackoff="0.5", session_lifetime=60)

    assert (changed["twice"], changed["retryBackoff"], changed["sessionLifetime"]) == (True, 0.5, 60)
    assert requests.get(config, timeout=10).json() == changed
    simulator.reset()
    assert requests.get(config, timeout=10).json() == defaults | {"webhookSecret": simulator.webhook_secret}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"retryAttempts": "many"}, "must be a whole number"),
        ({"deliveryDelay": -1}, "deliveryDelay must not be negative"),
    ],
)
def test_an_unknown_setting_or_a_bad_value_is_a_400_and_changes_nothing(simulator, change, message):
    before = requests.get(f"{simulator.url}/_sim/config", timeout=10).json()

    response = requests.post(f"{simulator.url}/_sim/config", json=change, timeout=10)

    assert response.status_code == 400 and message in response.json()["error"]
    assert requests.get(f"{simulator.url}/_sim/config", timeout=10).json() == before


def test_a_session_expires_at_its_expire_time_and_its_expired_event_is_delivered(simulator):
    simulator.configure(session_lifetime=0.3)
    with receiver() as (url, received):
        simulator.configure(webhook_url=url)
        session = created(simulator)
        [delivery] = simulator.wait_for_deliveries(1)

    envelope = json.loads(received[0]["body"])
    assert (envelope["event"]["name"], envelope["object"]["id"]) == ("checkout_session.expired", session["id"])
    assert envelope["data"]["status"] == "expired" and delivery["status"] == 200
    assert get(simulator, session["id"]).json()["result"]["status"] == "expired"
    assert "This session is expired." in hosted(session["redirectUrl"]).text
    assert hosted(f"{session['redirectUrl']}/pay", "POST").status_code == 409


def test_a_session_read_after_its_expire_time_is_expired_at_once(simulator):
    simulator.configure(session_lifetime=0)

    session = created(simulator)

    assert session["expireTime"] == session["createTime"]
    assert get(simulator, session["id"]).json()["result"]["status"] == "expired"


def test_the_session_lifetime_sets_the_expire_time(simulator):
    simulator.configure(session_lifetime=600)
    session = created(simulator)

    lifetime = datetime.fromisoformat(session["expireTime"]) - datetime.fromisoformat(session["createTime"])
    assert lifetime.total_seconds() == 600


def test_the_dashboard_lists_sessions_and_deliveries_and_its_forms_drive_the_simulator(simulator):
    session = created(simulator)
    dashboard = f"{simulator.url}/_sim/"
    with receiver(status=500) as (url, _):
        simulator.configure(webhook_url=url, retry_attempts=1)
        switched = requests.post(f"{simulator.url}/_sim/config", data={"twice": "true"}, timeout=10)
        assert switched.url == dashboard  # a form goes back to the dashboard
        finished = requests.post(
            f"{simulator.url}/_sim/sessions/{session['id']}/complete", data={"deliver": "true"}, timeout=10
        )
        assert finished.url == dashboard
        page = requests.get(dashboard, timeout=10)
        [redeliver] = set(re.findall(r'action="(/_sim/events/[^"]+/redeliver)"', page.text))
        assert requests.post(f"{simulator.url}{redeliver}", data={"from": "dashboard"}, timeout=10).url == dashboard

    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert session["id"] in page.text and "completed" in page.text
    assert re.findall(r'class="failed status">(\d+)<', page.text) == ["500", "500"]
    assert "Deliver every event twice: <strong>on</strong>" in page.text
    first, second, again = simulator.deliveries()
    assert [d["reason"] for d in (first, second, again)] == ["first", "twice", "redeliver"]
    assert redeliver == f"/_sim/events/{first['eventId']}/redeliver" and again["eventId"] == first["eventId"]
