"""The hosted checkout page a session's redirectUrl opens: pay or cancel."""

from flask import Blueprint, abort, current_app, redirect, render_template

from simulator.control import emit

bp = Blueprint("hosted", __name__)


def find(session_id: str) -> dict:
    session = current_app.extensions["simulator"].sessions.get(session_id)
    if session is None:
        abort(404)
    return session


@bp.get("/checkout/<session_id>")
def page(session_id: str):
    session = find(session_id)
    items = session["lineItems"]["data"]
    total = sum(item["price"]["value"] * item["quantity"] for item in items)
    return render_template("checkout.html", s=session, total=total, currency=items[0]["price"]["currency"])


@bp.post("/checkout/<session_id>/<choice>")
def choose(session_id: str, choice: str):
    find(session_id)
    status = {"pay": "completed", "cancel": "cancelled"}.get(choice) or abort(404)
    session = current_app.extensions["simulator"].transition(session_id, status)
    if session is None:
        abort(409)
    emit(session, status, deliver=True)
    return redirect(session["successUrl" if status == "completed" else "cancelUrl"], 303)
