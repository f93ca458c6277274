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
    lines = [line_of(item) for item in (session.get("lineItems") or {}).get("data") or []]
    total = sum(line["amount"] for line in lines)
    currency = lines[0]["currency"] if lines else ""
    return render_template("checkout.html", s=session, lines=lines, total=total, currency=currency)


def line_of(item: dict) -> dict:
    """What the page shows of a line item; Monime's schema leaves price and quantity optional."""
    price, quantity = item.get("price") or {}, item.get("quantity") or 1
    amount = (price.get("value") or 0) * quantity
    return {"name": item.get("name", ""), "quantity": quantity, "currency": price.get("currency", ""), "amount": amount}


@bp.post("/checkout/<session_id>/<choice>")
def choose(session_id: str, choice: str):
    find(session_id)
    status = {"pay": "completed", "cancel": "cancelled"}.get(choice) or abort(404)
    session = current_app.extensions["simulator"].transition(session_id, status)
    if session is None:
        abort(409)
    emit(session, status, deliver=True)
    back = session["successUrl" if status == "completed" else "cancelUrl"]
    if not back:  # a session made without the URL: nowhere to send the shopper
        return render_template("checkout.html", s=session, lines=[], total=0, currency="")
    return redirect(back, 303)
