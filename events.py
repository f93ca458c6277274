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
from functools import cache

from marshmallow import ValidationError
from sqlalchemy import Insert, bindparam, case, exists, false, literal_column, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

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
    atomic,
    db,
    insert_unless_exists,
    run,
    together,
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
    already; then `outcome` is None (same body) or HELD (a different body).
    `order_id`: the order the event concerned, when processing found one."""

    event_id: str
    outcome: str | None
    duplicate: bool = False
    order_id: str | None = None


EVENT_SCHEMA = WebhookEventSchema()  # built once: a fresh schema costs ~5x the load itself (nested schemas)


def parse(payload: object) -> dict:
    """The event envelope in a verified, parsed body (what signatures.verify returns, or
    schemas.load_json of a stored body); marshmallow's ValidationError when it is not a Monime
    event (WebhookEventSchema)."""
    return EVENT_SCHEMA.load(payload)


def replay(event_id: str) -> Receipt | None:
    """Run a stored event through `receive` again: a failed one is processed,
    a processed one changes nothing. None when no such event is stored."""
    query = select(WebhookEvent.body).where(WebhookEvent.id == event_id)
    body = atomic(lambda: db.session.scalar(query), idempotent=True)
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
        # Monime is not asked about an event already processed
        settled, order = atomic(lambda: _settled_or_order(event_id, body, report), idempotent=True)
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
    """Store the event and apply its report to its order, as one unit of work (`_store_and_apply`,
    run again by models.atomic if the database connection was lost: the event id makes a second
    run of committed work a duplicate); a delivery of an event id stored already is a repeat
    (`_repeat`)."""
    receipt = atomic(lambda: _store_and_apply(event_id, name, body, report), idempotent=True)
    if receipt is None:
        return _repeat(event_id, body, report)
    if not receipt.duplicate:
        logs.bind(orderId=receipt.order_id)
        data = {"event": name, "outcome": receipt.outcome, "orderNumber": report and report.order_number}
        log.info("webhook event processed", extra={"data": data})
    return receipt


EVENT_ID, EVENT_BODY = bindparam("event_id"), bindparam("event_body")
# What processing the event did: its outcome, recorded in the transaction that did it.
RECORD = (
    update(events_table)
    .where(events_table.c.id == EVENT_ID)
    .values(
        outcome=bindparam("event_outcome"),
        detail=bindparam("event_detail"),
        order_id=bindparam("event_order_id"),
        processed_at=orders.NOW,
    )
)
# The event as stored already: what became of it, and whether this delivery's body is the stored one.
PRIOR = select(events_table.c.outcome, (events_table.c.body == EVENT_BODY).label("same_body")).where(
    events_table.c.id == EVENT_ID
)


@dataclass(frozen=True)
class Stored:
    """What storing an event and applying its report's transition did (`_store`)."""

    claimed: bool  # the event was stored by this delivery; else its id was stored already
    prior_outcome: str | None  # when not claimed: the stored event's outcome, if it was seen
    same_body: bool | None  # ... and whether it has this delivery's body
    order: tuple | None  # the session's order (orders.SHOWN, a `run` row): as changed, else as read
    changed: bool  # the transition changed the order
    raced: bool  # the order met the transition's conditions as read, yet the UPDATE changed nothing


def _store_and_apply(event_id, name, body, report) -> Receipt | None:
    """The webhook's unit of work: store the event (once per id) and apply its report, then record
    the outcome. None when the event id is stored already and this is not a plain duplicate.

    The common cases (a completion, cancellation or expiry of a known session; a duplicate) take
    at most two statements on Postgres: `_store` (event, transition and the order's row at once)
    and RECORD with the change's notification (models.together). The rare ones (by reference,
    unmatched, a failed event taken back, a race with another change) go through orders.find and
    orders.apply, as replays do."""
    now = utcnow()
    session_id = report and report.session_id or None
    event = {"event_id": event_id, "event_name": name, "event_body": body, "event_session_id": session_id, "now": now}
    stored = _store(event | (orders.parameters(report) if report else {}), report)
    if not stored.claimed:
        if stored.same_body and stored.prior_outcome != Outcome.FAILED:
            return Receipt(event_id, None, duplicate=True)
        if stored.same_body is False or not _retake(event_id, body):
            return None  # another body, or stored meanwhile: a repeat
    writes, order = [], stored.order
    if report is None:
        outcome, detail = Outcome.IGNORED, f"{name} is not acted on"
    elif stored.claimed and order is not None and not stored.raced:
        outcome, detail, writes = orders.settle(report, order, stored.changed, event_id)
    else:
        order, by_reference = orders.find(report) if report.session_id else (None, False)
        if order is None:
            outcome, detail = Outcome.UNMATCHED, f"no order knows session {report.session_id or '(none)'}"
        else:
            outcome, detail = orders.apply(order, report, event_id, by_reference)
    order_id = order and order.id
    recorded = {"event_outcome": outcome, "event_detail": detail and detail[:255], "event_order_id": order_id}
    together(*writes, (RECORD, {"event_id": event_id, "now": now} | recorded))
    return Receipt(event_id, outcome, order_id=order_id)


def _store(values: dict, report: SessionReport | None) -> Stored:
    """Store the event (values: event_id, event_name, event_body, event_session_id, now) unless its
    id is stored, and, when it was stored, make the transition its report asks of the session's
    order (orders.changing; values: orders.parameters too). On Postgres in one statement, whose
    data-modifying CTEs insert the event and, only if they did, update the order; elsewhere
    (SQLite, whose writers hold the write lock) statement by statement."""
    looks_up = bool(report and report.session_id)
    status = report.status if looks_up and orders.transition(report) else None  # the transition's
    if db.session.get_bind().dialect.name == "postgresql":
        (row,) = run(_one_statement(status, looks_up), values)
        order = row if row.id is not None else None
        raced = bool(order and not row.changed and row.eligible)
        return Stored(row.claimed, row.prior_outcome, row.prior_same_body, order, bool(row.changed), raced)
    claim, changing, reading = _statements(status)
    if db.session.execute(claim, values).first() is None:
        prior = db.session.execute(PRIOR, values).first()
        return Stored(False, prior and prior.outcome, prior and prior.same_body, None, False, False)
    changed = changing is not None and db.session.execute(changing, values).first()
    order = changed or (db.session.execute(reading, values).first() if looks_up else None)
    return Stored(True, None, None, order, bool(changed), False)


def _claiming(dialect) -> Insert:
    """INSERT the event as failed (until RECORD says otherwise) unless its id is stored, RETURNING its id."""
    row = dict(
        id=EVENT_ID,
        name=bindparam("event_name"),
        session_id=bindparam("event_session_id"),
        body=EVENT_BODY,
        outcome=Outcome.FAILED,
        attempts=1,
        received_at=orders.NOW,
        processed_at=orders.NOW,
    )
    return dialect.insert(events_table).values(**row).on_conflict_do_nothing().returning(events_table.c.id)


@cache
def _statements(status: str | None) -> tuple:
    """SQLite's statements for `_store`, built once per transition (`status`, None for none): the
    claim, the transition's UPDATE (None without one) and the read of the session's order."""
    change = orders.TRANSITIONS[status] if status else None
    by_session = orders.columns.id == orders.SESSION_ORDER
    changing = change and orders.changing(change, by_session)
    return _claiming(sqlite), changing, select(*orders.SHOWN).where(by_session)


@cache
def _one_statement(status: str | None, looks_up: bool):
    """Postgres' single statement for `_store`, built once per kind of report: one row of claimed,
    prior_outcome and prior_same_body (the stored event, as the statement's snapshot saw it), and
    when `looks_up`, the session's order's columns (as changed, else as read), changed, eligible."""
    claimed = _claiming(postgresql).cte("claimed")
    was_claimed = exists(select(claimed.c.id))
    prior = events_table.alias("prior")
    anchor = select(literal_column("1").label("one")).subquery("anchor")
    source = anchor.outerjoin(prior, prior.c.id == EVENT_ID)
    wanted = [
        was_claimed.label("claimed"),
        prior.c.outcome.label("prior_outcome"),
        (prior.c.body == EVENT_BODY).label("prior_same_body"),
    ]
    if looks_up:
        by_session = orders.columns.id == orders.SESSION_ORDER
        source = source.outerjoin(orders.table, by_session)
        if status:
            change = orders.TRANSITIONS[status]
            changed = orders.changing(change, by_session, was_claimed).cte("changed")
            source = source.outerjoin(changed, true())
            made = changed.c.id.is_not(None)
            wanted += [case((made, changed.c[c.name]), else_=c).label(c.name) for c in orders.SHOWN]
            wanted += [made.label("changed"), orders.eligible(change).label("eligible")]
        else:
            wanted += [*orders.SHOWN, false().label("changed"), false().label("eligible")]
    else:
        wanted += [literal_column("NULL").label("id"), false().label("changed"), false().label("eligible")]
    return select(*wanted).select_from(source)


def _retake(event_id: str, body: str) -> bool:
    """Take back a stored event whose processing failed, if this delivery has its body (counted in
    its attempts): True when it is to be processed now."""
    retried = db.session.execute(
        update(events_table)
        .where(events_table.c.id == event_id, events_table.c.outcome == Outcome.FAILED, events_table.c.body == body)
        .values(attempts=events_table.c.attempts + 1)
    )
    return retried.rowcount == 1


def _claim(event_id, name, body, report) -> bool:
    """Store the event, or take back one whose processing failed earlier
    (only with the same body). False when the event id is stored already:
    processed, or with another body."""
    values = dict(name=name, body=body, session_id=report and report.session_id or None)
    if insert_unless_exists(WebhookEvent, id=event_id, outcome=Outcome.FAILED, received_at=utcnow(), **values):
        return True
    return _retake(event_id, body)


def _store_failure(event_id, name, body, report, detail) -> None:
    """Keep an event we could not process, marked failed, so it can be replayed."""
    with transaction():
        if _claim(event_id, name, body, report):
            db.session.execute(
                update(events_table)
                .where(events_table.c.id == event_id)
                .values(detail=detail[:255], processed_at=utcnow())
            )


def _settled_or_order(event_id: str, body: str, report: SessionReport) -> tuple[bool, Order | None]:
    """Whether the event is `_settled`, and if not, the order its report is about (orders.find)."""
    if _settled(event_id, body):
        return True, None
    return False, orders.find(report)[0]


def _settled(event_id: str, body: str) -> bool:
    """Whether the event id is stored and not to be processed again: it was
    processed, or it came with another body."""
    prior = db.session.execute(PRIOR, {"event_id": event_id, "event_body": body}).first()
    return prior is not None and (prior.outcome != Outcome.FAILED or not prior.same_body)


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
