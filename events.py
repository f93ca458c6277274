"""Monime's webhook events about checkout sessions, handed to the order state rules.

A verified event (`receive`) is stored raw and processed once per event id (and
`replay`ed from storage by the same path). A completion that carries no line items
is confirmed by looking its session up at Monime. Looking sessions up on Monime's
initiative instead (reconcile, the shopper's redirect) is sync.py. No database
transaction is held open while Monime is being asked.
"""

import hashlib
import logging
from dataclasses import dataclass, replace

from marshmallow import ValidationError
from sqlalchemy import or_, select, update

import logs
import monime
import orders
from metrics import WEBHOOK_EVENT_VARIANTS
from models import (
    MONIME_ORDER_NUMBER_LENGTH,
    Order,
    Outcome,
    Status,
    WebhookEvent,
    WebhookEventVariant,
    db,
    insert_unless_exists,
    transaction,
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


class VerificationUnavailable(Exception):
    """A completion must be confirmed with Monime, and Monime cannot be reached."""


@dataclass(frozen=True)
class Receipt:
    """What became of one delivery: `duplicate` when its event id was stored
    already; then `outcome` is None (same body) or HELD (a different body)."""

    event_id: str
    outcome: str | None
    duplicate: bool = False


EVENT_SCHEMA = WebhookEventSchema()  # built once: a fresh schema costs ~5x the load itself (nested schemas)


def parse(payload: object) -> dict:
    """The event envelope in a verified, parsed body (what signatures.verify returns, or
    schemas.load_json of a stored body); marshmallow's ValidationError when it is not a Monime
    event (WebhookEventSchema)."""
    return EVENT_SCHEMA.load(payload)


def replay(event_id: str) -> Receipt | None:
    """Run a stored event through `receive` again: a failed one is processed,
    a processed one changes nothing. None when no such event is stored."""
    with transaction():
        body = db.session.scalar(select(WebhookEvent.body).where(WebhookEvent.id == event_id))
    if body is None:
        return None
    return receive(body, parse(load_json(body)))  # verified when it was received


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
    different body under a stored id is held for review, see `_repeat`).

    `body` is the verified request body (UTF-8 text), `envelope` the event it parses to
    (signatures.verify's result). A completion without line items is confirmed with Monime
    first (`_confirm_amount`); raises VerificationUnavailable when Monime cannot be asked
    (the event is then stored as failed, for a redelivery or `replay`)."""
    event_id, name = envelope["event"]["id"], envelope["event"]["name"]
    report = _report_from(envelope)
    if report and report.session_id and report.status == Status.COMPLETED and not (report.amount or report.problem):
        with transaction():
            settled = _settled(event_id, body)  # Monime is not asked about an event already processed
            order = None if settled else orders.find(report)[0]
        if settled:
            return _repeat(event_id, body, report)
        if order is not None:
            try:
                report = _confirm_amount(report)
            except VerificationUnavailable as exc:
                _store_failure(event_id, name, body, report, str(exc))
                raise
    return _process(event_id, name, body, report)


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
    """A completion without line items, checked against the session Monime holds (a lookup,
    within MONIME_VERIFY_TIMEOUT): the report with the session's amount, or with the problem
    that Monime does not know it. Raises VerificationUnavailable when Monime cannot answer."""
    try:
        session = monime.client().get_session(report.session_id)
    except monime.MonimeNotFound:
        return replace(report, problem="Monime does not know the completed session")
    except monime.MonimeError as exc:  # 5xx, 401/403 and timeouts alike: try again later
        raise VerificationUnavailable(f"the completion could not be confirmed with Monime: {exc}") from exc
    return looked_up(report, session)


def looked_up(report: SessionReport, session: dict) -> SessionReport:
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
    """Store the event and apply its report to its order, in one transaction; a delivery of
    an event id stored already is a repeat (`_repeat`)."""
    with transaction():
        claimed = _claim(event_id, name, body, report)
        if claimed:
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
                .values(
                    outcome=outcome, detail=detail and detail[:255], order_id=order and order.id, processed_at=utcnow()
                )
            )
    if not claimed:
        return _repeat(event_id, body, report)
    logs.bind(orderId=order and order.id)
    data = {"event": name, "outcome": outcome, "orderNumber": report and report.order_number}
    log.info("webhook event processed", extra={"data": data})
    return Receipt(event_id, outcome)


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
    with transaction():
        if _claim(event_id, name, body, report):
            db.session.execute(
                update(events_table)
                .where(events_table.c.id == event_id)
                .values(detail=detail[:255], processed_at=utcnow())
            )


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
    with transaction():
        stored = db.session.execute(
            select(WebhookEvent.body, WebhookEvent.order_id, WebhookEvent.session_id).where(WebhookEvent.id == event_id)
        ).one()
        if stored.body == body:
            return Receipt(event_id, None, duplicate=True)
        digest = hashlib.sha256(body.encode()).hexdigest()
        insert_unless_exists(
            WebhookEventVariant, event_id=event_id, body_sha256=digest, body=body, received_at=utcnow()
        )
        reason = f"event {event_id} was delivered again with a different body"
        held = _orders_concerned(stored, report)
        for order in held:
            orders.hold(order, reason, event_id)
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
    return Receipt(event_id, Outcome.HELD, duplicate=True)


def _orders_concerned(stored, report: SessionReport | None) -> list[Order]:
    """The orders a stored event (its order, else its session's) and a new
    report about the same event id point at, each once."""
    found = [db.session.get(Order, stored.order_id) if stored.order_id else None]
    if stored.session_id:
        found.append(orders.by_session(stored.session_id))
    if report and report.session_id:
        found.append(orders.find(report)[0])
    return list({order.id: order for order in found if order is not None}.values())
