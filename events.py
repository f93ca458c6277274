"""News from Monime about checkout sessions, handed to the order state rules.

Two ways in: a verified webhook event (`receive`), stored raw and processed
once per event id (and `replay`ed from storage by the same path), and a
direct lookup of a session (`refresh`), used when the shopper comes back
through a redirect and by `reconcile` for webhooks that never came. No
database transaction is held open while Monime is being asked.
"""

import logging
from collections import Counter
from dataclasses import dataclass, replace
from datetime import timedelta

from marshmallow import ValidationError
from sqlalchemy import select, update

import logs
import monime
import orders
from models import CheckoutSession, Order, Outcome, Status, WebhookEvent, db, insert_unless_exists, utcnow
from orders import SessionReport
from schemas import WebhookEventSchema, load_json, storable

log = logging.getLogger(__name__)

events_table = WebhookEvent.__table__  # Core statements: no ORM bookkeeping on the hot path
CHECKOUT_EVENTS = {
    "checkout_session.completed": Status.COMPLETED,
    "checkout_session.cancelled": Status.CANCELLED,
    "checkout_session.expired": Status.EXPIRED,
}


class VerificationUnavailable(Exception):
    """A completion must be confirmed with Monime, and Monime cannot be reached."""


@dataclass(frozen=True)
class Receipt:
    event_id: str
    outcome: str | None  # None for a duplicate
    detail: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.outcome is None


EVENT_SCHEMA = WebhookEventSchema()  # built once: a fresh schema costs ~5x the load itself (nested schemas)


def parse(text: str) -> dict:
    """The event envelope in a verified body; ValueError (not JSON, or JSON too deep or with
    numbers too large: schemas.load_json) or marshmallow's ValidationError (not a Monime event) otherwise."""
    return EVENT_SCHEMA.load(load_json(text))


def replay(event_id: str) -> Receipt | None:
    """Run a stored event through `receive` again: a failed one is processed,
    a processed one changes nothing. None when no such event is stored."""
    body = db.session.scalar(select(WebhookEvent.body).where(WebhookEvent.id == event_id))
    if body is None:
        return None
    return receive(body, parse(body))


def receive(body: str, envelope: dict) -> Receipt:
    """Process one verified event, once per event id; concurrent deliveries
    of the same id wait for the first one and are reported as duplicates."""
    event_id, name = envelope["event"]["id"], envelope["event"]["name"]
    report = _report_from(envelope)
    if report and report.session_id and report.status == Status.COMPLETED and not (report.amount or report.problem):
        if _settled(event_id):  # Monime is not asked about an event already processed
            return Receipt(event_id, None)
        try:
            report = _confirm_amount(report)
        except VerificationUnavailable as exc:
            _store_failure(event_id, name, body, report, str(exc))
            raise
    return _process(event_id, name, body, report)


def refresh(order_id: str, dry_run: bool = False) -> Outcome | None:
    """Ask Monime for the order's current session and apply what it says
    (with `dry_run`, work out what would change and undo it). None when there
    is nothing to ask; FAILED when Monime cannot be reached; HELD when Monime
    does not know the session."""
    order = orders.reload(order_id)
    if order.status == Status.COMPLETED or not order.checkout_session_id:
        return None
    session_id = order.checkout_session_id
    db.session.commit()  # no transaction is held while Monime is asked
    try:
        session = monime.client().get_session(session_id)
    except monime.MonimeNotFound:
        outcome, detail = orders.hold(orders.reload(order_id), f"Monime does not know session {session_id}", None)
    except monime.MonimeError as exc:
        log.warning("session lookup failed", extra={"data": {"orderId": order_id, "error": str(exc)}})
        return Outcome.FAILED
    else:
        report = SessionReport(session_id, session.get("status"), *_amount(session))
        outcome, detail = orders.apply(orders.reload(order_id), report)
    if dry_run:
        db.session.rollback()
    else:
        db.session.commit()
    log.info(
        "order refreshed from Monime",
        extra={"data": {"orderId": order_id, "outcome": outcome, "detail": detail, "dryRun": dry_run}},
    )
    return outcome


def reconcile(older_than: timedelta, limit: int, dry_run: bool = False) -> Counter:
    """Bring pending orders whose session is older than `older_than` up to
    Monime's truth, asking about at most `limit` sessions, oldest first. Safe
    beside webhooks and other reconcilers: every change is a conditional
    UPDATE in orders.py. Returns how many orders ended in each outcome."""
    stale = (
        select(Order.id)
        .join(CheckoutSession, CheckoutSession.id == Order.checkout_session_id)
        .where(Order.status == Status.PENDING, Order.review_reason.is_(None))
        .where(CheckoutSession.created_at <= utcnow() - older_than)
        .order_by(CheckoutSession.created_at)
        .limit(limit)
    )
    tally = Counter()
    for order_id in db.session.scalars(stale).all():
        tally[refresh(order_id, dry_run) or Outcome.UNCHANGED] += 1
    db.session.commit()
    return tally


def _report_from(envelope: dict) -> SessionReport | None:
    """The session report an event carries; None for events we do not act on."""
    status = CHECKOUT_EVENTS.get(envelope["event"]["name"])
    if status is None:
        return None
    ref, data = envelope["object"], envelope["data"]
    session_id = (
        ref.get("id") if ref.get("type") == "checkout_session" and ref.get("id") else identifier(data.get("id"))
    )
    amount, problem = _amount(data) if status == Status.COMPLETED else (None, None)  # only a completion's matters
    return SessionReport(str(session_id or ""), status, amount, identifier(data.get("reference")), problem)


def identifier(value) -> str | None:
    """An id from an event's data, if it can be one (a short string the database can store)."""
    try:
        storable(value)
    except (ValidationError, AttributeError):
        return None
    return value if 0 < len(value) <= 255 else None


def _confirm_amount(report: SessionReport) -> SessionReport:
    """A completion without line items is checked against the session Monime holds."""
    order, _ = orders.find(report)
    db.session.commit()  # end the read before asking Monime
    if order is None:
        return report
    try:
        session = monime.client().get_session(report.session_id)
    except monime.MonimeNotFound:
        return replace(report, problem="Monime does not know the completed session")
    except monime.MonimeError as exc:  # 5xx, 401/403 and timeouts alike: try again later
        raise VerificationUnavailable(f"the completion could not be confirmed with Monime: {exc}") from exc
    amount, problem = _amount(session)
    return replace(report, amount=amount, problem=problem)


def _amount(session: dict) -> tuple[tuple[str, int] | None, str | None]:
    """A session's amount, or the problem that keeps it from being read."""
    try:
        return monime.session_amount(session), None
    except ValueError as exc:
        return None, f"completion cannot be checked: {exc}"


def _process(event_id, name, body, report) -> Receipt:
    if not _claim(event_id, name, body, report):
        db.session.rollback()
        return Receipt(event_id, None)
    order, by_reference = orders.find(report) if report and report.session_id else (None, False)
    if report is None:
        outcome, detail = Outcome.IGNORED, f"{name} is not acted on"
    elif order is None:
        outcome, detail = Outcome.UNMATCHED, f"no order knows session {report.session_id or '(none)'}"
    else:
        outcome, detail = orders.apply(order, report, event_id, by_reference)
    db.session.execute(
        update(events_table)
        .where(events_table.c.id == event_id)
        .values(outcome=outcome, detail=detail and detail[:255], order_id=order and order.id, processed_at=utcnow())
    )
    db.session.commit()
    logs.bind(orderId=order and order.id)
    log.info("webhook event processed", extra={"data": {"event": name, "outcome": outcome}})
    return Receipt(event_id, outcome, detail)


def _claim(event_id, name, body, report) -> bool:
    """Store the event, or take back one whose processing failed earlier.
    False when the event id was already processed: a duplicate."""
    values = dict(name=name, body=body, session_id=report and report.session_id or None)
    if insert_unless_exists(WebhookEvent, id=event_id, outcome=Outcome.FAILED, received_at=utcnow(), **values):
        return True
    retried = db.session.execute(
        update(events_table)
        .where(events_table.c.id == event_id, events_table.c.outcome == Outcome.FAILED)
        .values(attempts=events_table.c.attempts + 1)
    )
    return retried.rowcount == 1


def _store_failure(event_id, name, body, report, detail) -> None:
    """Keep an event we could not process, marked failed, so it can be replayed."""
    if _claim(event_id, name, body, report):
        db.session.execute(
            update(events_table).where(events_table.c.id == event_id).values(detail=detail[:255], processed_at=utcnow())
        )
    db.session.commit()


def _settled(event_id: str) -> bool:
    outcome = db.session.scalar(select(WebhookEvent.outcome).where(WebhookEvent.id == event_id))
    return outcome is not None and outcome != Outcome.FAILED
