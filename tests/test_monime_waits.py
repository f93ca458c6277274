"""POST /api/checkout when Monime asks it to wait: a 429 with Retry-After, and an
Idempotency-Key still in flight when two submissions of one order reach Monime together.
On both databases, in process and under gunicorn with two workers, against the simulator."""

import time

import pytest
import requests

from conftest import LiveClient, gunicorn, make_app, service_settings
from support import all_at_once, checkout, order, order_payload

DEADLINE = 4  # MONIME_RETRY_DEADLINE here, seconds: room for a 1 s Retry-After on a busy machine


@pytest.fixture(scope="module")
def patient_server(database_url, simulator_server, tmp_path_factory):
    """The service under gunicorn (two workers) with MONIME_RETRY_DEADLINE = DEADLINE."""
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with gunicorn(database_url, simulator_server.url, log, MONIME_RETRY_DEADLINE=str(DEADLINE)) as server:
        yield server


@pytest.fixture(params=["client", "gunicorn"])
def patient_api(request, app, database_url, simulator):
    """The service, in process and under gunicorn, with MONIME_RETRY_DEADLINE = DEADLINE."""
    if request.param == "client":
        settings = service_settings(database_url, simulator.url) | {"MONIME_RETRY_DEADLINE": str(DEADLINE)}
        return make_app(settings).test_client()
    return LiveClient(request.getfixturevalue("patient_server").url)


def test_a_checkout_during_a_429_with_retry_after_succeeds_after_the_wait(patient_api, simulator):
    simulator.faults(fail=1, fail_status=429, retry_after=1)

    started = time.monotonic()
    body = checkout(patient_api)
    took = time.monotonic() - started

    assert took >= 1.0, "Monime was asked again before the Retry-After it gave"
    assert took < DEADLINE + 1.0  # within the deadline, and some scheduling
    posts = simulator.requests("POST")
    assert len(posts) == 2
    assert len({p["idempotencyKey"] for p in posts}) == 1
    assert [s["id"] for s in simulator.sessions()] == [body["sessionId"]]
    assert order(patient_api, body["orderId"])["checkoutSessionId"] == body["sessionId"]


def test_a_checkout_whose_retry_after_passes_the_deadline_is_a_502_at_once(patient_api, simulator):
    simulator.faults(fail=1000, fail_status=429, retry_after=60)

    started = time.monotonic()
    response = patient_api.post("/api/checkout", json=order_payload("ord_later"))
    took = time.monotonic() - started

    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "monime_unavailable"
    assert "past the deadline" in error["message"]
    assert took < DEADLINE / 2, "no sleeping towards the deadline"
    assert len(simulator.requests("POST")) == 1


def test_two_submissions_of_one_order_meeting_at_monime_in_flight_share_one_session(patient_server, app, simulator):
    """Both reach Monime under the order's one key; the second is answered 409 while the first
    is being made, asks again, and gets the session the first made."""
    simulator.faults(in_flight=1.0)  # every create holds its key this long
    payload = order_payload()

    responses = all_at_once(
        2, lambda: requests.post(patient_server.url + "/api/checkout", json=payload, timeout=DEADLINE + 10)
    )

    assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
    [session] = simulator.sessions()
    assert {r.json()["sessionId"] for r in responses} == {session["id"]}
    posts = simulator.requests("POST")
    assert len({p["idempotencyKey"] for p in posts}) == 1
    assert len(posts) >= 3, "both submissions reached Monime and one was answered 409 and asked again"
    assert order(LiveClient(patient_server.url), payload["orderId"])["checkoutSessionId"] == session["id"]
