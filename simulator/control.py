"""Control endpoints for tests and developers: not part of Monime's API."""

from dataclasses import asdict

from flask import Blueprint, abort, current_app, request

from simulator.store import Faults, public

bp = Blueprint("control", __name__, url_prefix="/_sim")
ACTIONS = {"complete": "completed", "cancel": "cancelled", "expire": "expired"}


def store():
    return current_app.extensions["simulator"]


@bp.post("/reset")
def reset():
    store().reset()
    return {"reset": True}


@bp.post("/config")
def configure():
    options = request.get_json(force=True)
    store().webhook_url = options.get("webhookUrl", store().webhook_url)
    store().webhook_secret = options.get("webhookSecret", store().webhook_secret)
    return {"webhookUrl": store().webhook_url}


@bp.post("/faults")
def set_faults():
    """{"delay": seconds, "slow": N, "fail": N, "failStatus": 503, "drop": N}; {} clears them.
    The delay applies to the next `slow` requests, or to every request when `slow` is 0."""
    options = request.get_json(force=True) or {}
    store().faults = Faults(
        delay=float(options.get("delay", 0)),
        slow=int(options.get("slow", 0)),
        fail=int(options.get("fail", 0)),
        fail_status=int(options.get("failStatus", 503)),
        drop=int(options.get("drop", 0)),
    )
    return asdict(store().faults)


@bp.get("/requests")
def seen_requests():
    return {"requests": list(store().requests)}


@bp.get("/deliveries")
def deliveries():
    return {"deliveries": list(store().deliveries)}


@bp.get("/sessions")
def sessions():
    return {"sessions": [public(session) for session in store().sessions.values()]}


@bp.post("/sessions/<session_id>/<action>")
def finish_session(session_id: str, action: str):
    """Complete, cancel or expire a session and produce Monime's signed event.
    {"deliver": false} returns the event without POSTing it; {"force": true}
    emits it even when the session is no longer pending (late, repeated news)."""
    if action not in ACTIONS or session_id not in store().sessions:
        abort(404)
    options = request.get_json(silent=True) or {}
    session = store().transition(session_id, ACTIONS[action], force=bool(options.get("force")))
    if session is None:
        return {"error": f"session {session_id} is no longer pending"}, 409
    return emit(session, ACTIONS[action], deliver=options.get("deliver", True))


def emit(session: dict, status: str, deliver: bool) -> dict:
    event = store().event(session, status)
    delivery = store().deliver(event) if deliver and store().webhook_url else None
    return {"session": public(session), "event": event, "delivery": delivery}
