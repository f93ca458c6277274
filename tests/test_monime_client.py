"""MonimeClient against the simulator over real HTTP: headers, idempotent retries,
typed errors, the deadline, token redaction, and session_amount."""

import email.utils
import json
import math
import threading
import time

import pytest
from werkzeug.wrappers import Request, Response

from conftest import free_port
from monime import (
    API_VERSION,
    MonimeClient,
    MonimeError,
    MonimeNotFound,
    MonimeRejected,
    MonimeTimeout,
    MonimeUnavailable,
    session_amount,
)
from support import SESSION_REQUEST as BODY
from support import serving, wait_for

MARGIN = 0.5  # seconds allowed beyond a deadline: scheduling, not performance


def monime_client(url, token, space_id, **timeouts) -> MonimeClient:
    """Generous timeouts unless a test is about them, so a busy machine causes no stray retry."""
    settings = {"connect_timeout": 2, "read_timeout": 2, "retry_deadline": 5, "verify_timeout": 2}
    return MonimeClient(url, token, space_id, **(settings | timeouts))


def client_for(simulator, **timeouts) -> MonimeClient:
    return monime_client(simulator.url, simulator.access_token, simulator.space_id, **timeouts)


def answering(status: int, body) -> tuple[list, callable]:
    """A WSGI app that records each request and answers `body` (a dict, or a function of the request)."""
    seen = []

    @Request.application
    def app(request: Request) -> Response:
        seen.append({"method": request.method, "path": request.path, "headers": dict(request.headers),
                     "body": request.get_data()})  # fmt: skip
        answer = body(request) if callable(body) else body
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return Response(text, status=status, content_type="application/json")

    return seen, app


def timed(call):
    """(what call raised or returned, seconds it took)."""
    started = time.monotonic()
    try:
        outcome = call()
    except MonimeError as exc:
        outcome = exc
    return outcome, time.monotonic() - started


# --- create_session ----------------------------------------------------------------


def test_create_session_returns_the_checkout_session_monime_made(simulator):
    session = client_for(simulator).create_session(BODY, "key-create-1")

    assert simulator.sessions() == [session]
    assert session["id"].startswith("scs-")
    assert session["status"] == "pending"
    assert session["name"] == "Order #1001"
    assert session["redirectUrl"] == f"{simulator.url}/checkout/{session['id']}"
    assert [item["quantity"] for item in session["lineItems"]["data"]] == [2, 1]


def test_create_session_is_accepted_by_the_simulators_header_checks_and_sends_the_key_and_body(simulator):
    client_for(simulator).create_session(BODY, "key-headers-1")

    [sent] = simulator.requests()
    assert (sent["method"], sent["path"]) == ("POST", "/v1/checkout-sessions")
    assert sent["idempotencyKey"] == "key-headers-1"
    assert sent["body"] == BODY


def test_create_session_sends_the_bearer_token_space_version_and_idempotency_key():
    seen, app = answering(200, {"success": True, "messages": [], "result": {"id": "scs-recorded"}})
    with serving(app) as url:
        session = monime_client(url, "tok_secret", "spc-mine").create_session(BODY, "key-headers-2")

    assert session == {"id": "scs-recorded"}
    [request] = seen
    assert (request["method"], request["path"]) == ("POST", "/v1/checkout-sessions")
    headers = request["headers"]
    assert headers["Authorization"] == "Bearer tok_secret"
    assert headers["Monime-Space-Id"] == "spc-mine"
    assert headers["Monime-Version"] == API_VERSION == "caph.2025-08-23"
    assert headers["Idempotency-Key"] == "key-headers-2"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == BODY


RECORDED = {"success": True, "messages": [], "result": {"id": "scs-recorded"}}


def test_a_netrc_entry_for_monimes_host_never_replaces_the_access_token(tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password theirs\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    seen, app = answering(200, RECORDED)
    with serving(app) as url:
        monime_client(url, "tok_secret", "spc-mine").create_session(BODY, "key-netrc")

    [request] = seen
    assert request["headers"]["Authorization"] == "Bearer tok_secret"


def test_the_http_proxy_named_in_the_environment_carries_the_calls_unless_no_proxy_names_monime(simulator, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    seen, proxy = answering(200, RECORDED)
    with serving(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        proxied = client_for(simulator).create_session(BODY, "key-proxied")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = client_for(simulator).create_session(BODY, "key-direct")

    assert proxied == {"id": "scs-recorded"}
    [request] = seen  # the first client's call, sent to the proxy
    assert (request["method"], request["path"]) == ("POST", "/v1/checkout-sessions")
    assert request["headers"]["Idempotency-Key"] == "key-proxied"
    assert simulator.sessions() == [direct]  # the second client's, straight to Monime


def test_the_same_key_twice_returns_the_same_session(simulator):
    client = client_for(simulator)

    first = client.create_session(BODY, "key-twice")
    second = client.create_session(BODY, "key-twice")

    assert first == second
    assert len(simulator.sessions()) == 1
    assert [r["idempotencyKey"] for r in simulator.requests("POST")] == ["key-twice", "key-twice"]


def test_different_keys_make_different_sessions(simulator):
    client = client_for(simulator)
    assert client.create_session(BODY, "key-a")["id"] != client.create_session(BODY, "key-b")["id"]
    assert len(simulator.sessions()) == 2


@pytest.mark.parametrize("status", [503, 500, 502, 504, 429])
def test_a_retryable_status_is_retried_with_the_same_key_making_one_session(simulator, status):
    simulator.faults(fail=2, fail_status=status, retry_after=None)  # Retry-After: tests below

    session = client_for(simulator).create_session(BODY, f"key-retry-{status}")

    assert simulator.sessions() == [session]
    posts = simulator.requests("POST")
    assert len(posts) == 3
    assert {r["idempotencyKey"] for r in posts} == {f"key-retry-{status}"}


def test_a_dropped_connection_after_monime_did_the_work_is_retried_into_the_same_session(simulator):
    simulator.faults(drop=1)

    session = client_for(simulator).create_session(BODY, "key-dropped")

    assert simulator.sessions() == [session]
    posts = simulator.requests("POST")
    assert len(posts) == 2
    assert {r["idempotencyKey"] for r in posts} == {"key-dropped"}


def test_a_read_timeout_is_retried_with_the_same_key_making_one_session(simulator):
    simulator.faults(delay=0.6, slow=1)

    client = client_for(simulator, read_timeout=0.3, retry_deadline=1.5)
    session, took = timed(lambda: client.create_session(BODY, "key-slow"))

    assert isinstance(session, dict), session
    assert took >= 0.3  # the first attempt was waited out, not answered
    assert simulator.sessions() == [session]
    posts = simulator.requests("POST")
    assert len(posts) == 2
    assert {r["idempotencyKey"] for r in posts} == {"key-slow"}


# --- refusals: raised at once, never retried -------------------------------------------


def test_a_wrong_token_is_a_401_rejection_raised_without_retrying(simulator):
    client = monime_client(simulator.url, "mon_wrong_token", simulator.space_id)

    with pytest.raises(MonimeRejected) as raised:
        client.create_session(BODY, "key-401")

    error = raised.value
    assert type(error) is MonimeRejected
    assert (error.status, error.reason) == (401, "unauthenticated")
    assert error.message == "The access token is missing or invalid."
    assert "401 unauthenticated" in str(error)
    assert len(simulator.requests()) == 1
    assert simulator.sessions() == []


def test_another_space_is_a_403_rejection_raised_without_retrying(simulator):
    client = monime_client(simulator.url, simulator.access_token, "spc-someone-else")

    with pytest.raises(MonimeRejected) as raised:
        client.create_session(BODY, "key-403")

    assert (raised.value.status, raised.value.reason) == (403, "forbidden")
    assert len(simulator.requests()) == 1


def test_an_invalid_body_is_a_400_rejection_carrying_monimes_reason_without_retrying(simulator):
    with pytest.raises(MonimeRejected) as raised:
        client_for(simulator).create_session(BODY | {"name": "n" * 151}, "key-400")

    error = raised.value
    assert (error.status, error.reason, error.message) == (400, "validation_failed", "The request body is invalid.")
    [sent] = simulator.requests()
    assert sent["body"]["name"] == "n" * 151
    assert simulator.sessions() == []


def test_the_same_key_with_another_body_is_a_409_rejection_without_retrying(simulator):
    client = client_for(simulator)
    client.create_session(BODY, "key-conflict")

    with pytest.raises(MonimeRejected) as raised:
        client.create_session(BODY | {"name": "Another order"}, "key-conflict")

    assert (raised.value.status, raised.value.reason) == (409, "idempotency_key_in_use")
    assert len(simulator.requests("POST")) == 2
    assert len(simulator.sessions()) == 1


def test_an_unknown_session_is_monime_not_found_raised_without_retrying(simulator):
    with pytest.raises(MonimeNotFound) as raised:
        client_for(simulator).get_session("scs-unknown")

    error = raised.value
    assert isinstance(error, MonimeRejected)
    assert (error.status, error.reason, error.message) == (404, "not_found", "No checkout session scs-unknown.")
    assert [(r["method"], r["path"]) for r in simulator.requests()] == [("GET", "/v1/checkout-sessions/scs-unknown")]


def test_a_session_id_cannot_reach_another_path(simulator):
    with pytest.raises(MonimeNotFound):
        client_for(simulator).get_session("../checkout-sessions")
    assert [r["path"] for r in simulator.requests()] == []  # %2F kept it off the API's routes


def test_get_session_returns_the_session_and_is_retried_after_a_5xx(simulator):
    client = client_for(simulator)
    created = client.create_session(BODY, "key-get")
    simulator.faults(fail=1)

    assert client.get_session(created["id"]) == created
    assert len(simulator.requests("GET")) == 2


def test_a_success_without_a_readable_result_is_monime_unavailable():
    for answer in ("not json", {"success": True, "messages": []}, {"success": True, "result": ["scs-1"]}):
        _seen, app = answering(200, answer)
        with serving(app) as url, pytest.raises(MonimeUnavailable) as raised:
            monime_client(url, "tok", "spc-x").get_session("scs-1")
        assert type(raised.value) is MonimeUnavailable


# --- the deadline and the final error ------------------------------------------------------


def test_5xx_until_the_deadline_ends_in_monime_unavailable_within_the_deadline(simulator):
    simulator.faults(fail=1000, fail_status=503, retry_after=None)  # backing off, not waiting as asked

    error, took = timed(lambda: client_for(simulator, retry_deadline=0.6).create_session(BODY, "key-down"))

    assert type(error) is MonimeUnavailable
    assert took < 0.6 + MARGIN
    posts = simulator.requests("POST")
    assert len(posts) >= 2  # it did retry
    assert {r["idempotencyKey"] for r in posts} == {"key-down"}
    assert simulator.sessions() == []
    assert simulator.access_token not in str(error)


def test_timeouts_until_the_deadline_end_in_monime_timeout_within_the_deadline(simulator):
    simulator.faults(delay=0.4)  # every request

    client = client_for(simulator, read_timeout=0.25, retry_deadline=0.6)
    error, took = timed(lambda: client.create_session(BODY, "key-hung"))

    assert type(error) is MonimeTimeout
    assert isinstance(error, MonimeUnavailable)
    assert took < 0.6 + MARGIN
    assert len(simulator.requests("POST")) >= 2
    assert simulator.access_token not in str(error)


def test_a_refused_connection_ends_in_monime_unavailable_within_the_deadline():
    client = monime_client(f"http://127.0.0.1:{free_port()}", "tok_refused", "spc-x", retry_deadline=0.5)

    error, took = timed(lambda: client.create_session(BODY, "key-refused"))

    assert type(error) is MonimeUnavailable
    assert "could not be reached" in str(error)
    assert took < 0.5 + MARGIN
    assert "tok_refused" not in str(error)


def test_get_session_gives_up_after_the_short_verify_timeout_not_the_create_deadline(simulator):
    client = client_for(simulator, read_timeout=5, retry_deadline=10, verify_timeout=0.3)
    created = client.create_session(BODY, "key-verify")
    simulator.faults(delay=0.5)

    error, took = timed(lambda: client.get_session(created["id"]))

    assert type(error) is MonimeTimeout
    assert took < 0.3 + MARGIN


def test_create_session_waits_for_the_read_timeout_that_get_session_does_not(simulator):
    client = client_for(simulator, read_timeout=5, retry_deadline=10, verify_timeout=0.3)
    simulator.faults(delay=0.5, slow=1)

    session, took = timed(lambda: client.create_session(BODY, "key-patient"))

    assert isinstance(session, dict), session
    assert took >= 0.5
    assert len(simulator.requests("POST")) == 1  # answered on the first attempt


# --- a Monime that trickles: the budget is a hard wall-clock limit ------------------------------

TRICKLE = 0.2  # seconds between bytes: under the read timeout, so no single read ever times out
HARD_MARGIN = 1.0  # seconds allowed beyond a budget: a correctness bound, not a performance one
TRICKLES = {"headers and body": {"interval": TRICKLE}, "body only": {"interval": TRICKLE, "headers": False}}


def pooled_connections(client: MonimeClient) -> list:
    """The connections the client's pools keep for reuse."""
    pools = client.http.get_adapter(client.base_url).poolmanager.pools
    # urllib3 refuses to iterate its pools directly; keys() gives a copy
    return [conn for key in pools.keys() for conn in list(pools[key].pool.queue) if conn is not None]  # noqa: SIM118


@pytest.mark.parametrize("trickle", TRICKLES.values(), ids=TRICKLES.keys())
def test_a_create_trickled_byte_by_byte_ends_in_monime_timeout_within_the_retry_deadline(simulator, trickle):
    client = client_for(simulator, read_timeout=0.5, retry_deadline=1.0)
    simulator.faults(trickle=trickle)

    error, took = timed(lambda: client.create_session(BODY, "key-trickled"))

    assert type(error) is MonimeTimeout, error
    assert str(error) == "Monime did not answer within the 1.0 s budget"
    assert took < 1.0 + HARD_MARGIN
    simulator.faults()
    session = client.create_session(BODY, "key-trickled")  # the same key, once Monime answers
    assert simulator.sessions() == [session]
    assert {r["idempotencyKey"] for r in simulator.requests("POST")} == {"key-trickled"}


@pytest.mark.parametrize("trickle", TRICKLES.values(), ids=TRICKLES.keys())
def test_a_lookup_trickled_byte_by_byte_ends_in_monime_timeout_within_the_verify_timeout(simulator, trickle):
    client = client_for(simulator, read_timeout=0.5, retry_deadline=10, verify_timeout=0.5)
    created = client.create_session(BODY, "key-lookup")
    simulator.faults(trickle=trickle)

    error, took = timed(lambda: client.get_session(created["id"]))

    assert type(error) is MonimeTimeout, error
    assert "0.5 s budget" in str(error)
    assert took < 0.5 + HARD_MARGIN
    simulator.faults()
    assert client.get_session(created["id"]) == created  # a fresh connection: the cut one was not pooled


def test_a_connection_cut_by_the_deadline_is_never_pooled(simulator):
    client = client_for(simulator, read_timeout=0.5, verify_timeout=0.5)
    created = client.create_session(BODY, "key-pool")
    [kept] = pooled_connections(client)  # the create's connection, back in the pool
    simulator.faults(trickle={"interval": TRICKLE, "count": 1})

    assert type(timed(lambda: client.get_session(created["id"]))[0]) is MonimeTimeout

    assert kept.was_cut  # the lookup took the pooled connection, and the deadline cut it
    assert kept not in pooled_connections(client)
    assert all(not conn.was_cut for conn in pooled_connections(client))


def test_a_deadline_cuts_only_its_own_call_while_another_thread_shares_the_client(simulator):
    client = client_for(simulator, read_timeout=2, retry_deadline=5, verify_timeout=0.5)
    created = client.create_session(BODY, "key-shared")
    simulator.faults(delay=1.0)  # every answer: longer than the lookup's budget, within the create's
    outcomes = {}
    lookup = threading.Thread(target=lambda: outcomes.update(lookup=timed(lambda: client.get_session(created["id"]))))
    lookup.start()
    wait_for(lambda: len(simulator.requests("GET")) == 1, 10, "the lookup reached the simulator")

    outcomes["create"] = timed(lambda: client.create_session(BODY | {"name": "Another"}, "key-shared-2"))
    lookup.join(timeout=10)

    assert type(outcomes["lookup"][0]) is MonimeTimeout
    assert outcomes["lookup"][1] < 0.5 + HARD_MARGIN
    session, took = outcomes["create"]
    assert isinstance(session, dict), session
    assert took >= 1.0  # it outlived the lookup's deadline, on its own connection
    assert len(simulator.requests("POST")) == 2  # the first create and this one: no retry was needed


def test_a_shorter_deadline_begun_during_a_longer_one_still_cuts_its_call_in_time(simulator):
    """One watchdog thread expires every deadline: a call with a short budget that begins while
    one with a long budget is running is still cut at its own time, not at the other's."""
    client = client_for(simulator, read_timeout=0.5, retry_deadline=4, verify_timeout=0.5)
    created = client.create_session(BODY, "key-nested")
    simulator.faults(trickle={"interval": TRICKLE})
    outcomes = {}
    create = threading.Thread(
        target=lambda: outcomes.update(create=timed(lambda: client.create_session(BODY, "key-nested-2")))
    )
    create.start()
    wait_for(lambda: len(simulator.requests("POST")) == 2, 10, "the long create reached the simulator")

    error, took = timed(lambda: client.get_session(created["id"]))
    create.join(timeout=10)

    assert type(error) is MonimeTimeout, error
    assert took < 0.5 + HARD_MARGIN
    assert type(outcomes["create"][0]) is MonimeTimeout
    assert outcomes["create"][1] < 4 + HARD_MARGIN


def test_a_finished_calls_deadline_never_cuts_the_next_call(simulator):
    client = client_for(simulator, read_timeout=2, retry_deadline=5, verify_timeout=0.3)
    created = client.create_session(BODY, "key-after")
    client.get_session(created["id"])  # done at once, on the connection the next call reuses
    simulator.faults(delay=0.6, slow=1)

    session, took = timed(lambda: client.create_session(BODY, "key-after"))

    assert session == created
    assert took >= 0.6
    assert len(simulator.requests("POST")) == 2


def test_a_short_deadline_begun_after_a_longer_one_ended_still_cuts_its_call_in_time(simulator):
    """The watchdog sleeps until the earliest deadline it holds, the finished create's (4 s away):
    a lookup's shorter one, begun then, wakes it."""
    client = client_for(simulator, read_timeout=0.5, retry_deadline=4, verify_timeout=0.5)
    created = client.create_session(BODY, "key-ended")
    simulator.faults(trickle={"interval": TRICKLE})

    error, took = timed(lambda: client.get_session(created["id"]))

    assert type(error) is MonimeTimeout, error
    assert took < 0.5 + HARD_MARGIN


# --- Retry-After: waiting what Monime asks, within the deadline ------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_in_seconds_is_waited_before_asking_again_with_the_same_key(simulator, status):
    simulator.faults(fail=1, fail_status=status, retry_after=1)

    session, took = timed(lambda: client_for(simulator, retry_deadline=5).create_session(BODY, f"key-wait-{status}"))

    assert isinstance(session, dict), session
    assert took >= 1.0, "it asked again before the second Monime asked for"
    assert took < 5 + MARGIN
    assert simulator.sessions() == [session]
    assert [r["idempotencyKey"] for r in simulator.requests("POST")] == [f"key-wait-{status}"] * 2


def test_a_retry_after_http_date_is_waited_until_that_time(simulator):
    when = math.ceil(time.time()) + 2  # HTTP dates have whole seconds
    simulator.faults(fail=1, fail_status=429, retry_after=email.utils.formatdate(when, usegmt=True))

    session, took = timed(lambda: client_for(simulator, retry_deadline=5).create_session(BODY, "key-date"))

    assert isinstance(session, dict), session
    assert time.time() >= when, "it asked again before the date Monime gave"
    assert took < 5 + MARGIN
    assert len(simulator.requests("POST")) == 2


PAST_THE_DEADLINE = {"seconds": lambda: 30, "HTTP date": lambda: email.utils.formatdate(time.time() + 60, usegmt=True)}


@pytest.mark.parametrize("retry_after", PAST_THE_DEADLINE.values(), ids=PAST_THE_DEADLINE.keys())
def test_a_retry_after_past_the_deadline_ends_the_call_at_once(simulator, retry_after):
    simulator.faults(fail=1000, fail_status=429, retry_after=retry_after(), rate_limit="space-writes")

    error, took = timed(lambda: client_for(simulator, retry_deadline=3).create_session(BODY, "key-later"))

    assert type(error) is MonimeUnavailable
    assert took < 1.0, "it gave up at once rather than sleeping towards the deadline"
    assert "429 (rate limit space-writes)" in str(error)
    assert "past the deadline" in str(error)
    assert len(simulator.requests("POST")) == 1
    assert simulator.sessions() == []


def test_an_unreadable_retry_after_falls_back_to_the_backoff():
    answers = iter([(503, "soon"), (200, None)])

    @Request.application
    def app(request: Request) -> Response:
        status, retry_after = next(answers)
        body = {"success": status == 200, "messages": [], "result": {"id": "scs-after"}}
        headers = {"Retry-After": retry_after} if retry_after else {}
        return Response(json.dumps(body), status=status, headers=headers, content_type="application/json")

    with serving(app) as url:
        session, took = timed(lambda: monime_client(url, "tok", "spc-x").create_session(BODY, "key-soon"))

    assert session == {"id": "scs-after"}
    assert took < 1.0  # the first backoff (at most 0.1 s), not a wait read from "soon"


# --- an Idempotency-Key still in flight --------------------------------------------------------


def creating_in_the_background(client: MonimeClient, body: dict, key: str, simulator) -> tuple[threading.Thread, dict]:
    """Start a create in another thread and return once the simulator has it; (thread, outcome),
    outcome["first"] being (what it returned or raised, seconds) once the thread is done."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(first=timed(lambda: client.create_session(body, key))))
    thread.start()
    wait_for(lambda: len(simulator.requests("POST")) == 1, 10, "the first create reached the simulator")
    return thread, outcome


def test_a_409_for_a_key_still_in_flight_is_asked_again_until_monimes_one_session(simulator):
    simulator.faults(in_flight=1.0)  # each create holds its key this long
    client = client_for(simulator, retry_deadline=5)
    first, outcome = creating_in_the_background(client, BODY, "key-in-flight", simulator)

    second, took = timed(lambda: client.create_session(BODY, "key-in-flight"))
    first.join(timeout=10)

    assert isinstance(second, dict), second
    assert outcome["first"][0] == second
    assert simulator.sessions() == [second]
    posts = simulator.requests("POST")
    assert len(posts) >= 3, "the second create was answered 409 and asked again"
    assert {r["idempotencyKey"] for r in posts} == {"key-in-flight"}
    assert took < 5 + MARGIN


def test_a_key_in_flight_with_another_body_is_a_409_rejection_at_once(simulator):
    simulator.faults(in_flight=1.0)
    client = client_for(simulator, retry_deadline=5)
    first, outcome = creating_in_the_background(client, BODY, "key-in-flight-2", simulator)

    error, took = timed(lambda: client.create_session(BODY | {"name": "Another order"}, "key-in-flight-2"))
    first.join(timeout=10)

    assert type(error) is MonimeRejected
    assert (error.status, error.reason) == (409, "idempotency_key_in_use")
    assert took < 1.0
    assert len(simulator.requests("POST")) == 2
    assert simulator.sessions() == [outcome["first"][0]]


def test_a_key_in_flight_past_the_deadline_ends_in_monime_unavailable_within_it(simulator):
    simulator.faults(in_flight=3.0)
    patient = client_for(simulator, read_timeout=5, retry_deadline=8)
    first, _outcome = creating_in_the_background(patient, BODY, "key-in-flight-3", simulator)

    error, took = timed(lambda: client_for(simulator, retry_deadline=0.8).create_session(BODY, "key-in-flight-3"))
    first.join(timeout=10)

    assert type(error) is MonimeUnavailable
    assert "409" in str(error)
    assert took < 0.8 + MARGIN
    assert len(simulator.requests("POST")) >= 3  # the first create, and this one asked more than once
    assert len(simulator.sessions()) == 1


# --- the token never leaves the client ------------------------------------------------------


def echo_token_in(field: str, padding: str = ""):
    """A Monime that answers 400 and repeats the Authorization header it got in error.<field>."""

    def error(request: Request) -> dict:
        echoed = f"{padding}you sent {request.headers.get('Authorization')}"
        fields = {"code": 400, "reason": "bad_request", "message": "bad request", "details": []}
        return {"success": False, "messages": [], "error": fields | {field: echoed}}

    return answering(400, error)


@pytest.mark.parametrize("padding", ["", "x" * 280], ids=["short", "at the truncation limit"])
def test_a_token_echoed_in_monimes_message_is_redacted(padding):
    token = "mon_live_very_secret_token"
    seen, app = echo_token_in("message", padding)
    with serving(app) as url, pytest.raises(MonimeRejected) as raised:
        monime_client(url, token, "spc-x").create_session(BODY, "key-echo")

    error = raised.value
    assert seen[0]["headers"]["Authorization"] == f"Bearer {token}"  # the server did get it
    assert error.status == 400
    assert error.message == f"{padding}you sent Bearer [redacted]"[:300]
    assert token not in error.message
    assert token not in str(error)
    assert token not in repr(error)
    assert len(seen) == 1


def test_a_token_echoed_in_monimes_reason_is_redacted():
    token = "mon_live_very_secret_token"
    _seen, app = echo_token_in("reason")
    with serving(app) as url, pytest.raises(MonimeRejected) as raised:
        monime_client(url, token, "spc-x").create_session(BODY, "key-echo-reason")

    assert raised.value.reason == "you sent Bearer [redacted]"
    assert token not in str(raised.value)
    assert token not in repr(raised.value)


# --- session_amount -------------------------------------------------------------------------


def line(value, currency="SLE", **extra) -> dict:
    return {"type": "custom", "name": "x", "price": {"currency": currency, "value": value}} | extra


def session_with(*items) -> dict:
    return {"id": "scs-1", "lineItems": {"data": list(items)}}


def test_session_amount_totals_every_item_times_its_quantity():
    session = session_with(line(2500, quantity=2), line(150, quantity=1), line(1999, quantity=3))
    assert session_amount(session) == ("SLE", 2 * 2500 + 150 + 3 * 1999)


def test_session_amount_counts_an_item_without_quantity_once():
    assert session_amount(session_with(line(700, "USD"), line(5, "USD", quantity=4))) == ("USD", 720)


def test_session_amount_of_a_real_simulator_session(simulator):
    session = client_for(simulator).create_session(BODY, "key-amount")
    assert session_amount(session) == ("SLE", 2 * 2500 + 150)


@pytest.mark.parametrize(
    "session",
    [{}, {"lineItems": None}, {"lineItems": {}}, {"lineItems": {"data": None}}, {"lineItems": {"data": []}}],
    ids=["no lineItems", "lineItems null", "no data", "data null", "data empty"],
)
def test_session_amount_is_none_without_line_items(session):
    assert session_amount(session) is None


def test_session_amount_refuses_mixed_currencies():
    with pytest.raises(ValueError, match="mix currencies"):
        session_amount(session_with(line(100, "SLE"), line(100, "USD")))


NOT_INTEGERS = {
    "value float": line(100.0),
    "value fractional": line(10.5),
    "value string": line("100"),
    "value bool": line(True),
    "value null": line(None),
    "quantity float": line(100, quantity=2.0),
    "quantity string": line(100, quantity="2"),
    "quantity bool": line(100, quantity=True),
    "quantity null": line(100, quantity=None),
}


@pytest.mark.parametrize("item", NOT_INTEGERS.values(), ids=NOT_INTEGERS.keys())
def test_session_amount_refuses_a_value_or_quantity_that_is_not_an_integer(item):
    with pytest.raises(ValueError, match="not an integer"):
        session_amount(session_with(line(100), item))


UNREADABLE = {
    "item without price": {"id": "scs-1", "lineItems": {"data": [{"name": "x", "quantity": 1}]}},
    "price without value": {"id": "scs-1", "lineItems": {"data": [{"price": {"currency": "SLE"}}]}},
    "price without currency": {"id": "scs-1", "lineItems": {"data": [{"price": {"value": 100}}]}},
    "price not an object": {"id": "scs-1", "lineItems": {"data": [{"price": 100}]}},
    "item not an object": {"id": "scs-1", "lineItems": {"data": ["x"]}},
    "item null": {"id": "scs-1", "lineItems": {"data": [None]}},
    "lineItems a list": {"id": "scs-1", "lineItems": [line(100)]},
    "data an object": {"id": "scs-1", "lineItems": {"data": {"price": {"currency": "SLE", "value": 1}}}},
    "currency unhashable": {"id": "scs-1", "lineItems": {"data": [line(100, ["SLE"])]}},
    "session a list": [line(100)],
}


@pytest.mark.parametrize("session", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_session_amount_refuses_line_items_it_cannot_read(session):
    with pytest.raises(ValueError, match="cannot be read"):
        session_amount(session)
