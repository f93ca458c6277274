"""Control endpoints for tests, developers and the dashboard's forms: not part of Monime's API.
Each takes JSON (or a form) and answers JSON (or, to a form, the dashboard again)."""

import email.utils
from dataclasses import asdict

from flask import Blueprint, abort, current_app, redirect, request, url_for

from simulator.store import Faults, public

bp = Blueprint("control", __name__, url_prefix="/_sim")
ACTIONS = {"complete": "completed", "cancel": "cancelled", "expire": "expired"}


def store():
    return current_app.extensions["simulator"]


def options() -> dict:
    """What was sent: a form's fields, or a JSON object (none: {})."""
    if request.mimetype == "application/x-www-form-urlencoded":
        return request.form.to_dict()
    return request.get_json(force=True, silent=True) or {}


def answer(body: dict, status: int = 200):
    """JSON for programs; a browser that sent the dashboard's form goes back to the dashboard."""
    if request.mimetype == "application/x-www-form-urlencoded":
        return redirect(url_for("dashboard.page"), 303)
    return body, status


@bp.post("/reset")
def reset():
    store().reset()
    return {"reset": True}


@bp.get("/config")
def settings():
    return store().settings.as_json()


@bp.post("/config")
def configure():
    """Any of GET /_sim/config's settings, e.g. {"webhookUrl": "...", "twice": true}."""
    try:
        return answer(store().configure(options()).as_json())
    except ValueError as exc:
        return {"error": str(exc)}, 400


@bp.post("/faults")
def set_faults():
    """{"delay": seconds, "slow": N, "fail": N, "failStatus": 503, "retryAfter": 1,
    "rateLimit": "name", "drop": N, "inFlight": seconds,
    "trickle": {"interval": seconds, "count": N, "headers": true}}; {} clears them.
    The delay applies to the next `slow` requests, or to every request when `slow` is 0.
    A 429 or 503 fail carries Retry-After: `retryAfter` whole seconds (1 unless given) or an
    HTTP date, none when null; a 429 also Monime-Rate-Limit: `rateLimit`. With `inFlight`, each
    create holds its Idempotency-Key that many seconds, and another create with the key and
    body meanwhile is answered 409 idempotency_request_in_progress.
    A trickle sends the next `count` answers (every answer when 0 or left out) one byte
    every `interval` seconds: status line and headers too unless "headers" is false."""
    given = options()
    trickle = given.get("trickle") or {}
    try:
        interval, count = float(trickle.get("interval", 0)), int(trickle.get("count", 0))
        if not (0 <= interval <= 60 and count >= 0):
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        return {"error": 'trickle is {"interval": 0-60 seconds, "count": N >= 0, "headers": true|false}'}, 400
    try:
        retry_after = retry_after_value(given.get("retryAfter", Faults.retry_after))
        in_flight = float(given.get("inFlight", 0))
        if not 0 <= in_flight <= 60:
            raise ValueError
    except (TypeError, ValueError):
        return {"error": "retryAfter is whole seconds >= 0, an HTTP date or null; inFlight is 0-60 seconds"}, 400
    store().faults = Faults(
        delay=float(given.get("delay", 0)),
        slow=int(given.get("slow", 0)),
        fail=int(given.get("fail", 0)),
        fail_status=int(given.get("failStatus", 503)),
        retry_after=retry_after,
        rate_limit=str(given.get("rateLimit", Faults.rate_limit)),
        in_flight=in_flight,
        drop=int(given.get("drop", 0)),
        trickle=interval,
        trickled=count,
        trickle_headers=bool(trickle.get("headers", True)),
    )
    return asdict(store().faults)


def retry_after_value(value) -> int | str | None:
    """A Retry-After as RFC 9110 (section 10.2.3) allows it: whole seconds (a number, or its
    digits), an HTTP date (kept as sent), or None for no header. ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0 or value != int(value):
            raise ValueError(value)
        return int(value)
    text = str(value).strip()
    if text.isascii() and text.isdigit():
        return int(text)
    email.utils.parsedate_to_datetime(text)  # ValueError when it is no date
    return text


@bp.get("/requests")
def seen_requests():
    return {"requests": list(store().requests)}


@bp.get("/deliveries")
def deliveries():
    """Every delivery attempt, oldest first."""
    return {"deliveries": list(store().outbox.deliveries)}


@bp.get("/sessions")
def sessions():
    store().sweep()
    return {"sessions": [public(session) for session in store().sessions.values()]}


@bp.post("/sessions/<session_id>/<action>")
def finish_session(session_id: str, action: str):
    """Complete, cancel or expire a session and produce Monime's signed event.
    {"deliver": false} returns the event without POSTing it; {"force": true}
    emits it even when the session is no longer pending (late, repeated news);
    {"url": "..."} sends it there instead of to the webhook URL."""
    if action not in ACTIONS or session_id not in store().sessions:
        abort(404)
    given = options()
    session = store().transition(session_id, ACTIONS[action], force=bool(given.get("force")))
    if session is None:
        return {"error": f"session {session_id} is no longer pending"}, 409
    emitted = store().emit(session, ACTIONS[action], deliver=bool(given.get("deliver", True)), url=given.get("url", ""))
    return answer(emitted)


@bp.post("/events/<event_id>/redeliver")
def redeliver(event_id: str):
    """Send an event again now, as Monime's dashboard does: {"delivery": the attempt}."""
    delivery = store().outbox.redeliver(event_id)
    if delivery is None:
        return {"error": f"no event {event_id} to redeliver (unknown, or no webhook URL)"}, 404
    return answer({"delivery": delivery})
