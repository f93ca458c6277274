"""News from Monime about checkout sessions, handed to the order state rules.

Two ways in: a verified webhook event (`receive`), stored raw and processed
once per event id (and `replay`ed from storage by the same path), and a
direct lookup of a session (`refresh`), used by `reconcile` for webhooks that
never came and, rationed (`refresh_on_return`), when the shopper comes back
through a redirect. No database transaction is held open while Monime is
being asked.
"""

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from marshmallow import ValidationError
from sqlalchemy import or_, select, update

import logs
import monime
import orders
from metrics import REDIRECT_LOOKUPS_SKIPPED, WEBHOOK_EVENT_VARIANTS
from models import (
    MONIME_ORDER_NUMBER_LENGTH,
    CheckoutSession,
    Order,
    Outcome,
    Status,
    WebhookEvent,
    WebhookEventVariant,
    db,
    insert_unless_exists,
    utcnow,
)
from orders import SessionReport
from schemas import WebhookEventSchema, load_json, storable

log = logging.getLogger(__name__)

events_table = WebhookEvent.__table__  # Core statements: no ORM bookkeeping on the hot path
CHECKOUT_EVENTS = {
    "checkout_session.completed": Status.COMPLETED,
    "checkout_session.cancelled": Status.CANCELLED,
    "checkout_session.expired": Status.EXPIRED,
}
# A shopper's redirects ask Monime about one order at most once in this many seconds.
REDIRECT_LOOKUP_INTERVAL = 5.0


class VerificationUnavailable(Exception):
    """A completion must be confirmed with Monime, and Monime cannot be reached."""


@dataclass(frozen=True)
class Receipt:
    """What became of one delivery: `duplicate` when its event id was stored
    already; then `outcome` is None (same body) or HELD (a different body)."""

    event_id: str
    outcome: str | None
    detail: str | None = None
    duplicate: bool = False


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


def stored(outcomes=(), limit: int | None = None) -> list[WebhookEvent]:
    """Stored events, oldest first: those with one of `outcomes` (Outcome values; all when
    empty), at most `limit` (all when None)."""
    query = select(WebhookEvent).order_by(WebhookEvent.received_at).limit(limit)
    if outcomes:
        query = query.where(WebhookEvent.outcome.in_(outcomes))
    return list(db.session.scalars(query))


def about(order_id: str, session_ids: list[str]) -> list[WebhookEvent]:
    """Every stored event about the order: matched to it, or about one of its sessions
    (`session_ids`, e.g. from orders.sessions), oldest first."""
    concerned = or_(WebhookEvent.order_id == order_id, WebhookEvent.session_id.in_(session_ids))
    return list(db.session.scalars(select(WebhookEvent).where(concerned).order_by(WebhookEvent.received_at)))


def variants(event_id: str) -> list[WebhookEventVariant]:
    """The other bodies delivered under a stored event id (kept, never applied), oldest first."""
    query = select(WebhookEventVariant).where(WebhookEventVariant.event_id == event_id)
    return list(db.session.scalars(query.order_by(WebhookEventVariant.received_at)))


def receive(body: str, envelope: dict) -> Receipt:
    """Process one verified event, once per event id; concurrent deliveries
    of the same id wait for the first one and are reported as duplicates (a
    different body under a stored id is held for review, see `_repeat`)."""
    event_id, name = envelope["event"]["id"], envelope["event"]["name"]
    report = _report_from(envelope)
    if report and report.session_id and report.status == Status.COMPLETED and not (report.amount or report.problem):
        if _settled(event_id, body):  # Monime is not asked about an event already processed
            return _repeat(event_id, body, report)
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
    session_id, report = order.checkout_session_id, None
    db.session.commit()  # no transaction is held while Monime is asked
    try:
        session = monime.client().get_session(session_id)
    except monime.MonimeNotFound:
        outcome, detail = orders.hold(orders.reload(order_id), f"Monime does not know session {session_id}", None)
    except monime.MonimeError as exc:
        log.warning("session lookup failed", extra={"data": {"orderId": order_id, "error": str(exc)}})
        return Outcome.FAILED
    else:
        report = _looked_up(SessionReport(session_id, session.get("status"), None), session)
        outcome, detail = orders.apply(orders.reload(order_id), report)
    if dry_run:
        db.session.rollback()
    else:
        db.session.commit()
    log.info(
        "order refreshed from Monime",
        extra={
            "data": {
                "orderId": order_id,
                "outcome": outcome,
                "detail": detail,
                "dryRun": dry_run,
                "orderNumber": report and report.order_number,
            }
        },
    )
    return outcome


def refresh_on_return(order: Order, within_client_limit: Callable[[], bool]) -> str | None:
    """`refresh` for a shopper's redirect, rationed so the unauthenticated
    redirect cannot be used to drain Monime. Skipped, in this order:

    - "final": the order is completed, cancelled or expired. The webhook is
      authoritative and brings a late completion of a cancelled or expired
      session; reconcile, like this, looks only at pending orders.
    - "recent": another redirect, in any worker, asked about the order less
      than REDIRECT_LOOKUP_INTERVAL seconds ago (seen on the order as read, or
      lost the race for its turn in orders.claim_lookup).
    - "client_limit": `within_client_limit()` (counting this lookup against
      the client's RATELIMIT_REDIRECT_LOOKUPS) says no. Only a hit that would
      ask Monime is counted, so a shopper reloading the success page does not
      use up the limit.

    Returns the reason it skipped (also counted in redirect_lookups_skipped_total),
    or None when it asked Monime. `reconcile` calls `refresh` directly, unrationed."""
    db.session.commit()  # end the read (it may be read_only()): nothing is held while the limit is asked
    if order.status != Status.PENDING:
        reason = "final"
    elif not orders.lookup_due(order, REDIRECT_LOOKUP_INTERVAL):
        reason = "recent"
    elif not within_client_limit():
        reason = "client_limit"
    else:
        claimed = orders.claim_lookup(order, REDIRECT_LOOKUP_INTERVAL)
        db.session.commit()  # the turn is taken before Monime is asked
        if claimed:
            refresh(order.id)
            return None
        reason = "recent"
    REDIRECT_LOOKUPS_SKIPPED.labels(reason).inc()
    return reason


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
    session_id = str(session_id or "")
    if status != Status.COMPLETED:  # only a completion's amount and orderNumber matter
        return SessionReport(session_id, status, None, identifier(data.get("reference")))
    amount, problem = _amount(data)
    number = order_number(data.get("orderNumber"), session_id)
    return SessionReport(session_id, status, amount, identifier(data.get("reference")), problem, number)


def identifier(value, max_length: int = 255) -> str | None:
    """An id from an event's data, if it can be one: a string of 1 to `max_length` characters the
    database can store."""
    try:
        storable(value)
    except (ValidationError, AttributeError):
        return None
    return value if 0 < len(value) <= max_length else None


def order_number(value, session_id: str) -> str | None:
    """Monime's orderNumber of a paid session (from an event's data or a lookup), if it can be
    one: a printable string of at most MONIME_ORDER_NUMBER_LENGTH characters the database can
    store. None for null; anything else is untrusted input, logged (its type and size, never the
    value) and ignored: it never fails the event."""
    if value is None:
        return None
    number = identifier(value, MONIME_ORDER_NUMBER_LENGTH)
    if number is not None and number.isprintable():
        return number
    size = len(value) if isinstance(value, str | list | dict) else None
    log.warning(
        "Monime's orderNumber ignored: not a short printable string",
        extra={"data": {"sessionId": session_id, "type": type(value).__name__, "length": size}},
    )
    return None


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
    return _looked_up(report, session)


def _looked_up(report: SessionReport, session: dict) -> SessionReport:
    """`report` with what Monime's lookup of its session (the API's CheckoutSession) says of the
    amount and the orderNumber; the report's own orderNumber stays when the lookup has none."""
    amount, problem = _amount(session)
    number = order_number(session.get("orderNumber"), report.session_id) or report.order_number
    return replace(report, amount=amount, problem=problem, order_number=number)


def _amount(session: dict) -> tuple[tuple[str, int] | None, str | None]:
    """A session's amount, or the problem that keeps it from being read."""
    try:
        return monime.session_amount(session), None
    except ValueError as exc:
        return None, f"completion cannot be checked: {exc}"


def _process(event_id, name, body, report) -> Receipt:
    if not _claim(event_id, name, body, report):
        return _repeat(event_id, body, report)
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
    data = {"event": name, "outcome": outcome, "orderNumber": report and report.order_number}
    log.info("webhook event processed", extra={"data": data})
    return Receipt(event_id, outcome, detail)


def _claim(event_id, name, body, report) -> bool:
    """Store the event, or take back one whose processing failed earlier
    (only with the same body). False when the event id is stored already:
    processed, or with another body."""
    values = dict(name=name, body=body, session_id=report and report.session_id or None)
    if insert_unless_exists(WebhookEvent, id=event_id, outcome=Outcome.FAILED, received_at=utcnow(), **values):
        return True
    retried = db.session.execute(
        update(events_table)
        .where(events_table.c.id == event_id, events_table.c.outcome == Outcome.FAILED, events_table.c.body == body)
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


def _settled(event_id: str, body: str) -> bool:
    """Whether the event id is stored and not to be processed again: it was
    processed, or it came with another body."""
    stored = db.session.execute(
        select(WebhookEvent.outcome, WebhookEvent.body).where(WebhookEvent.id == event_id)
    ).first()
    return stored is not None and (stored.outcome != Outcome.FAILED or stored.body != body)


def _repeat(event_id: str, body: str, report: SessionReport | None) -> Receipt:
    """A delivery of an event id stored already. The same body is a plain
    duplicate. A different body is never applied (the id was acknowledged
    once, and which body is true needs a person): it is kept, once per
    distinct body, and every order either body concerns is held for review.
    Either way the delivery is acknowledged, so Monime stops retrying."""
    stored = db.session.execute(
        select(WebhookEvent.body, WebhookEvent.order_id, WebhookEvent.session_id).where(WebhookEvent.id == event_id)
    ).one()
    if stored.body == body:
        db.session.rollback()
        return Receipt(event_id, None, duplicate=True)
    digest = hashlib.sha256(body.encode()).hexdigest()
    insert_unless_exists(WebhookEventVariant, event_id=event_id, body_sha256=digest, body=body, received_at=utcnow())
    reason = f"event {event_id} was delivered again with a different body"
    held = _orders_concerned(stored, report)
    for order in held:
        orders.hold(order, reason, event_id)
    db.session.commit()
    WEBHOOK_EVENT_VARIANTS.inc()
    log.warning(
        "webhook event delivered again with a different body; orders held for review",
        extra={
            "data": {
                "orderIds": [order.id for order in held],
                "storedSha256": hashlib.sha256(stored.body.encode()).hexdigest(),
                "receivedSha256": digest,
            }
        },
    )
    return Receipt(event_id, Outcome.HELD, reason, duplicate=True)


def _orders_concerned(stored, report: SessionReport | None) -> list[Order]:
    """The orders a stored event (its order, else its session's) and a new
    report about the same event id point at, each once."""
    found = [db.session.get(Order, stored.order_id) if stored.order_id else None]
    if stored.session_id:
        found.append(orders.find(SessionReport(stored.session_id, "", None))[0])
    if report and report.session_id:
        found.append(orders.find(report)[0])
    return list({order.id: order for order in found if order is not None}.values())
