"""The operator pages and their actions. Thin: each reads through admin/queries.py or acts
through the module that owns the rule (orders.resolve, notifications.redeliver, events.replay),
commits, logs the action (with the request id, as every log line) and redirects back (303)."""

import hmac
import logging

from flask import abort, current_app, flash, redirect, render_template, request, session, url_for
from marshmallow import ValidationError

import events
import logs
import notifications
import orders
from admin import bp, charts, queries, sign_in_session, signed_in
from models import NotificationStatus, Outcome, Status, db, transaction
from schemas import ResolveRequestSchema

log = logging.getLogger(__name__)
ACTOR = "admin"  # the resolution's `by` and `via`: one shared token, so no person's name


def back(default: str) -> str:
    """Where to go after an action or sign-in: the form's `next`, if it is a page of /admin
    (never another site: "//host" and "/\\host" are refused), else `default`."""
    wanted = request.values.get("next", "")
    if wanted.startswith("/admin") and not wanted.startswith(("//", "/\\")) and "\\" not in wanted:
        return wanted
    return default


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    """The sign-in form; a right token starts a session, a wrong one is a 401 and logged."""
    if request.method == "POST":
        given = request.form.get("token", "").encode()
        if hmac.compare_digest(given, current_app.config["ADMIN_TOKEN"].encode()):
            sign_in_session()
            log.info("admin signed in")
            return redirect(back(url_for("admin.glance")), 303)
        log.warning("admin sign-in refused: wrong token")
        return render_template("admin/sign_in.html", wrong=True), 401
    if signed_in():
        return redirect(back(url_for("admin.glance")), 303)
    return render_template("admin/sign_in.html", wrong=False)


@bp.post("/sign-out")
def sign_out():
    session.clear()
    log.info("admin signed out")
    return redirect(url_for("admin.sign_in"), 303)


@bp.get("/")
def glance():
    """At a glance: what needs a person, orders per day and webhook outcomes per hour."""
    seen = queries.glance()
    by_day = charts.stacked_bars(
        f"Orders placed per day, last {queries.CHART_DAYS} days (by status now)",
        seen.days, seen.orders_by_day, every=5, short=lambda day: day[5:],
    )  # fmt: skip
    by_hour = charts.stacked_bars(
        f"Webhook events per hour, last {queries.CHART_HOURS} hours (by outcome)",
        seen.hours, seen.outcomes_by_hour, every=6, short=lambda hour: hour[11:] + "h",
    )  # fmt: skip
    return render_template("admin/glance.html", seen=seen, charts=[by_day, by_hour])


@bp.get("/orders")
def order_list():
    """The orders, newest first: ?q= orderId (or its start), session id or Monime order number;
    ?status=; ?held=1; ?page=."""
    status = request.args.get("status", "")
    status = status if status in set(Status) else ""
    page = queries.search_orders(
        request.args.get("q", "")[:255], status, request.args.get("held") == "1",
        max(request.args.get("page", 1, type=int) or 1, 1),
    )  # fmt: skip
    return render_template("admin/orders.html", page=page, statuses=list(Status))


@bp.get("/orders/<order_id>")
def order_page(order_id: str):
    """An order: its fields and one timeline of everything that happened to it."""
    order = orders.lookup(order_id)
    if order is None:
        abort(404, f"No order has the id {order_id!r}.")
    return render_template("admin/order.html", order=order, entries=queries.timeline(order))


@bp.get("/review")
def review():
    """Held orders, the longest waiting first, each with its reason and the resolve form."""
    return render_template("admin/review.html", held=orders.held())


@bp.post("/orders/<order_id>/resolve")
def resolve(order_id: str):
    """Complete or dismiss a held order through orders.resolve, by and via "admin", with the note."""
    logs.bind(orderId=order_id)
    try:
        wanted = ResolveRequestSchema().load({"action": request.form.get("action"), "note": request.form.get("note")})
    except ValidationError as exc:
        problems = "; ".join(f"{name}: {' '.join(text)}" for name, text in exc.messages.items())
        flash(f"Order {order_id} was not resolved: {problems}", "error")
        return redirect(back(url_for("admin.review")), 303)
    if orders.lookup(order_id) is None:
        abort(404, f"No order has the id {order_id!r}.")
    try:
        with transaction():
            done = orders.resolve(order_id, wanted["action"], wanted["note"], by=ACTOR, via=ACTOR)
    except orders.NotHeld:
        flash(f"Order {order_id} is not held for review (resolved already?): nothing changed.", "error")
        return redirect(back(url_for("admin.review")), 303)
    log.info("held order resolved", extra={"data": {"action": done.action, "by": ACTOR, "resolution": done.id}})
    flash(f"Order {order_id} resolved ({done.action}): now {orders.reread(order_id).status}.", "ok")
    return redirect(back(url_for("admin.review")), 303)


@bp.get("/deliveries")
def deliveries():
    """Notifications that failed (being retried) or are dead, and webhook events whose processing failed."""
    return render_template(
        "admin/deliveries.html",
        dead=notifications.listed([NotificationStatus.DEAD], limit=200),
        failing=notifications.listed([NotificationStatus.PENDING], limit=200, failing=True),
        failed_events=events.stored([Outcome.FAILED], limit=200),
    )


@bp.post("/notifications/<notification_id>/redeliver")
def redeliver(notification_id: str):
    """Deliver a notification again now, with a fresh NOTIFY_RETRY_FOR (notifications.redeliver)."""
    with transaction():
        count = notifications.redeliver(notification_id[:40])
    if not count:
        abort(404, f"No notification has the id {notification_id!r}.")
    log.info("notification redelivered", extra={"data": {"notification": notification_id}})
    flash(f"Notification {notification_id} will be delivered again.", "ok")
    return redirect(back(url_for("admin.deliveries")), 303)


@bp.post("/events/<event_id>/replay")
def replay(event_id: str):
    """Process a stored webhook event again through the webhook's own path (events.replay)."""
    logs.bind(eventId=event_id)
    try:
        receipt = events.replay(event_id)
    except events.VerificationUnavailable as exc:
        db.session.rollback()
        log.warning("webhook event replay failed again", extra={"data": {"error": str(exc)}})
        flash(f"Event {event_id} failed again: {exc}", "error")
        return redirect(back(url_for("admin.deliveries")), 303)
    if receipt is None:
        abort(404, f"No webhook event has the id {event_id!r}.")
    result = "already processed, nothing changed" if receipt.duplicate else receipt.outcome
    log.info("webhook event replayed", extra={"data": {"outcome": receipt.outcome, "duplicate": receipt.duplicate}})
    flash(f"Event {event_id} replayed: {result}.", "ok")
    return redirect(back(url_for("admin.deliveries")), 303)
