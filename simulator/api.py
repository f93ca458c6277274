"""Monime's checkout-session API, as the official document describes it."""

import base64
import binascii
import contextlib
import socket
import time

from flask import Blueprint, current_app, jsonify, request

from simulator import openapi
from simulator.store import public

bp = Blueprint("api", __name__, url_prefix="/v1")
SESSIONS = "/v1/checkout-sessions"
# The header is optional (the document marks it neither required nor, in a header, able to be
# null); a value outside its enum is refused. The enum is the same on every operation.
VERSIONS = [v for v in openapi.parameter(SESSIONS, "post", "Monime-Version")["enum"] if v is not None]
LIMIT = openapi.parameter(SESSIONS, "get", "limit")  # {"minimum": 1, "maximum": 50, "default": 10}
CURSOR = openapi.parameter(SESSIONS, "get", "after")  # {"maxLength": 2000}
IDEMPOTENCY_IN_FLIGHT = "idempotency_request_in_progress"  # see create_checkout_session


def store():
    return current_app.extensions["simulator"]


def ok(result=None, status: int = 200):
    body = {"success": True, "messages": []}
    if result is not None:
        body["result"] = result
    return jsonify(body), status


def error(status: int, reason: str, message: str, details: list | None = None):
    body = {"success": False, "messages": [], "error": {"code": status, "reason": reason, "message": message}}
    body["error"]["details"] = details or []
    return jsonify(body), status


@bp.before_request
def record_authenticate_and_misbehave():
    store().enter()
    store().sweep()  # sessions past their expireTime are expired before anyone reads them
    store().record(request.method, request.path, request.headers.get("Idempotency-Key"), request.get_json(silent=True))
    delay = store().take_delay()
    if delay:
        time.sleep(delay)
    if store().take_fault("fail"):
        return failure(store().faults)
    if request.headers.get("Authorization") != f"Bearer {current_app.config['ACCESS_TOKEN']}":
        return error(401, "unauthenticated", "The access token is missing or invalid.")
    space = request.headers.get("Monime-Space-Id", "")
    if not space.startswith("spc-") or len(space) > 64:
        return error(400, "invalid_header", "Monime-Space-Id is required and must look like spc-...")
    version = request.headers.get("Monime-Version")
    if version is not None and version not in VERSIONS:
        return error(400, "invalid_header", f"Monime-Version must be one of {', '.join(VERSIONS)}.")
    if space != current_app.config["SPACE_ID"]:
        return error(403, "forbidden", "The access token has no access to this space.")
    return None


def failure(faults):
    """The answer of the fail fault: its status, with Retry-After on a 429 or 503 and
    Monime-Rate-Limit on a 429, the headers Monime's "Standard headers" page names and both
    of its SDKs read (monimejs src/http-client.js #parse_retry_after, monime-go transport.go
    parseRetryAfter and docs/api-contract-caph-2025-08-23.md: seconds or an HTTP date)."""
    status, headers = faults.fail_status, {}
    if status in (429, 503) and faults.retry_after is not None:
        headers["Retry-After"] = str(faults.retry_after)
    if status == 429:
        headers["Monime-Rate-Limit"] = faults.rate_limit
        body, _ = error(429, "rate_limit_exceeded", "Too many requests: the simulator was told to refuse this one.")
    else:
        body, _ = error(status, "unavailable", "The simulator was told to fail this request.")
    return body, status, headers


@bp.teardown_request
def done(_exc):
    store().leave()


@bp.after_request
def misbehave_on_the_way_out(response):
    """The drop and trickle faults, switched on by POST /_sim/faults."""
    connection = request.environ.get("werkzeug.socket")  # only under Werkzeug's server
    if store().take_fault("drop"):
        if connection is not None:
            connection.shutdown(socket.SHUT_RDWR)  # the work is done; the answer never arrives
        return response
    interval = store().take_trickle()
    if interval and connection is not None and store().faults.trickle_headers:
        trickle_raw(response, connection, interval)
    elif interval:
        response.response = dribble(response.get_data(), interval)  # the headers at once, the body slowly
    return response


def dribble(data: bytes, interval: float):
    """`data` one byte at a time, `interval` seconds apart, after an empty piece (on which
    the server sends the status line and headers, at once)."""
    yield b""
    for byte in data:
        time.sleep(interval)  # the fault itself: a peer that sends slowly
        yield bytes([byte])


def trickle_raw(response, connection: socket.socket, interval: float) -> None:
    """Write the whole answer, status line and headers included, on the socket one byte every
    `interval` seconds, then close the connection; the server's own attempt to answer after it
    finds the socket closed and gives up. Stops as soon as the client hangs up."""
    head = [f"HTTP/1.1 {response.status}", *(f"{name}: {value}" for name, value in response.headers.items())]
    raw = "\r\n".join([*head, "Connection: close", "", ""]).encode("latin-1") + response.get_data()
    with contextlib.suppress(OSError):  # the client gave up waiting: what the fault is for
        for piece in dribble(raw, interval):
            connection.sendall(piece)
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


@bp.post("/checkout-sessions")
def create_checkout_session():
    key = request.headers.get("Idempotency-Key", "")
    if not key or len(key) > 64:
        return error(400, "invalid_header", "Idempotency-Key is required and at most 64 characters.")
    body = request.get_json(silent=True)
    problems = openapi.errors(openapi.CREATE_SESSION, body)
    if problems:
        return error(400, "validation_failed", "The request body is invalid.", problems)
    outcome, session = store().create_session(body, key, request.host_url)
    # Monime's reason for a key reused with another URL or body is idempotency_key_in_use
    # (docs.monime.io developer-resources/api-basics/idempotency; monime-go's
    # docs/api-contract-caph-2025-08-23.md). Neither names one for a key whose first request
    # is still being made; the IETF Idempotency-Key draft answers that 409 too, so the
    # simulator names it IDEMPOTENCY_IN_FLIGHT, the one 409 monime.py asks again after.
    if outcome == "in_use":
        return error(409, "idempotency_key_in_use", "This Idempotency-Key was used with a different request.")
    if outcome == "in_flight":
        return error(409, IDEMPOTENCY_IN_FLIGHT, "A request with this Idempotency-Key is still being processed.")
    return ok(public(session))  # Monime answers 200 for a new and a replayed create alike


@bp.get("/checkout-sessions")
def list_checkout_sessions():
    """A page of sessions, oldest first: ?limit=1-50 (default 10) and ?after=<the previous
    page's pagination.next>. pagination.next is null on the last page (OpenAPI, ListCheckoutSessions)."""
    limit, after = request.args.get("limit", str(LIMIT["default"])), request.args.get("after", "")
    if not (limit.isascii() and limit.isdigit() and LIMIT["minimum"] <= int(limit) <= LIMIT["maximum"]):
        message = f"limit must be a whole number from {LIMIT['minimum']} to {LIMIT['maximum']}"
        return error(400, "validation_failed", "The query is invalid.", [f"limit: {message}"])
    position = from_cursor(after) if after else 0
    if position is None:
        return error(400, "validation_failed", "The query is invalid.", ["after: not a cursor this API gave"])
    sessions, last = store().page(int(limit), position)
    pagination = {"count": len(sessions), "next": None if last is None else to_cursor(last)}
    body = {"success": True, "messages": [], "result": [public(s) for s in sessions], "pagination": pagination}
    return jsonify(body)


def to_cursor(position: int) -> str:
    """An opaque cursor for the session numbered `position` (Store.page)."""
    return base64.urlsafe_b64encode(f"scs:{position}".encode()).decode().rstrip("=")


def from_cursor(cursor: str) -> int | None:
    """The position a cursor of to_cursor names; None for anything else."""
    if len(cursor) > CURSOR["maxLength"]:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    prefix, _, number = text.partition(":")
    return int(number) if prefix == "scs" and number.isascii() and number.isdigit() else None


@bp.get("/checkout-sessions/<session_id>")
def get_checkout_session(session_id: str):
    session = store().sessions.get(session_id)
    if session is None:
        return error(404, "not_found", f"No checkout session {session_id}.")
    return ok(public(session))


@bp.delete("/checkout-sessions/<session_id>")
def delete_checkout_session(session_id: str):
    session = store().sessions.get(session_id)
    if session is None:
        return error(404, "not_found", f"No checkout session {session_id}.")
    if session["status"] != "pending":
        return error(409, "invalid_state", "Only a session not yet used can be deleted.")
    store().delete_session(session_id)
    return ok()
