"""The simulator's dashboard at /_sim/: sessions, every webhook delivery attempt with its
status code, a Redeliver button, and the delivery switches (the forms post to control.py)."""

from flask import Blueprint, current_app, render_template

from simulator.control import ACTIONS

bp = Blueprint("dashboard", __name__, url_prefix="/_sim")
SWITCHES = {"twice": "Deliver every event twice", "out_of_order": "Deliver out of order (hold one back)"}
NUMBERS = {
    "delivery_delay": "Delay each first attempt (s)",
    "retry_backoff": "First retry after (s)",
    "retry_attempts": "Attempts per event",
    "session_lifetime": "Session lifetime (s)",
}


@bp.get("/")
def page():
    store = current_app.extensions["simulator"]
    store.sweep()
    return render_template(
        "dashboard.html",
        sessions=list(reversed(store.sessions.values())),
        deliveries=list(reversed(store.outbox.deliveries)),
        settings=store.settings,
        switches=SWITCHES,
        numbers=NUMBERS,
        actions=ACTIONS,
    )
