"""Order state rules: the one place an order's status changes.

    (new) ─────────────────────────────▶ pending
    pending ──completed────────────────▶ completed   terminal: nothing moves it again
    pending ──cancelled / expired──────▶ cancelled / expired   (its current session only)
    expired ──cancelled────────────────▶ cancelled   the shopper's act outranks the clock
    cancelled / expired ──completed────▶ completed   money was taken: completion wins
    cancelled / expired ──submitted again──▶ pending under a new session

For one session a status only moves up pending < expired < cancelled <
completed, so the order ends the same whatever order the news arrives in.

Every change is a single conditional UPDATE ... WHERE whose row count says
whether it happened, so two workers can never both apply a transition, and a
late, repeated or reordered report can never undo one. Callers commit, each
flow in its own unit of work (models.transaction).

A change to completed, cancelled or expired, and a hold for review, also
writes an order notification (notifications.enqueue) in the same transaction,
right where its UPDATE succeeded: the shop hears of every change exactly when
it is committed.
"""

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta
from functools import cache
from types import SimpleNamespace

from sqlalchemy import Row, bindparam, null, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

import notifications
from models import (
    ORDER_ID_PATTERN,
    CheckoutSession,
    Order,
    OrderResolution,
    Outcome,
    Status,
    db,
    utcnow,
)

ORDER_ID = re.compile(ORDER_ID_PATTERN)
# Changes are Core statements on the table: the rules need no ORM bookkeeping, and they are the hot path.
columns = Order.__table__.c
FINAL_UNPAID = (Status.CANCELLED, Status.EXPIRED)
# What each unpaid ending may replace, for the order's current session.
ENDS = {Status.EXPIRED: (Status.PENDING,), Status.CANCELLED: (Status.PENDING, Status.EXPIRED)}


@dataclass(frozen=True)
class SessionReport:
    """What Monime says about one checkout session, from a webhook or a lookup."""

    session_id: str
    status: str
    amount: tuple[str, int] | None  # (currency, minor units); None when not known
    reference: str | None = None
    problem: str | None = None  # why the amount cannot be trusted (unreadable, unknown to Monime)
    order_number: str | None = None  # Monime's orderNumber of a completion's payment, checked; None if not known


def fingerprint(draft: dict) -> str:
    """A hash of everything the shopper's request decides, to tell a resubmission from a different order."""
    content = {key: value for key, value in draft.items() if key != "orderId"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def place(draft: dict) -> Row:
    """Store a new pending order with a fresh Idempotency-Key, or read the order already
    stored under this orderId (whatever its content): one INSERT ... ON CONFLICT DO NOTHING
    RETURNING, and a read only when the order was stored before. Returns the order as a
    checkout reads it (`for_checkout`'s row)."""
    items = draft["lineItems"]
    now = utcnow()
    values = {
        "id": draft["orderId"],
        "fingerprint": fingerprint(draft),
        "name": draft["name"],
        "description": draft["description"],
        "line_items": items,
        "client_metadata": draft["metadata"],
        "callback_state": draft["callbackState"],
        "currency": items[0]["price"]["currency"],
        "amount": sum(item["price"]["value"] * item["quantity"] for item in items),
        "status": Status.PENDING,
        "idempotency_key": new_idempotency_key(),
        "created_at": now,
        "updated_at": now,
    }
    placed = db.session.execute(_checkout_statements(_dialect()).place, values).first()
    return placed if placed is not None else for_checkout(draft["orderId"])


def lookup(order_id: str) -> Order | None:
    """Look up an orderId that came from outside (a URL, a request, an event's reference): the
    order, possibly the copy this session already holds; None when there is none, and also for
    a string that cannot be an orderId (ORDER_ID_PATTERN: Postgres refuses some, such as one
    holding a NUL, with an error). To see an order's changes since it was read, `reread`."""
    return db.session.get(Order, order_id) if ORDER_ID.match(order_id) else None


def view(order_id: str) -> dict | None:
    """The order as GET /api/orders/<orderId> shows it (schemas.OrderSchema), in one SELECT
    and without an ORM object: every column of the orders table (amount in minor units),
    with `money` and `review` as Order has them. None when there is no such order, and for a
    string that cannot be an orderId (as `lookup`)."""
    if not ORDER_ID.match(order_id):
        return None
    row = db.session.execute(_checkout_statements(_dialect()).view, {"order_id": order_id}).first()
    return None if row is None else row._asdict() | {"money": Order.money.fget(row), "review": Order.review.fget(row)}


def reread(order_id: str) -> Order | None:
    """Read the order again from the database, replacing the copy this session holds: the
    rules change orders with Core UPDATEs the session does not see, so after one, this is
    the order as it is now. None when there is no such order. For an id known to be valid
    (a stored row's, or one `lookup` accepted): it is not checked."""
    return db.session.get(Order, order_id, populate_existing=True)


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key for an order's attempt: 32 hex characters (Monime allows 64)."""
    return uuid.uuid4().hex  # 32 characters; Monime allows 64


def for_checkout(order_id: str) -> Row | None:
    """The order as a checkout reads it, in one statement and without an ORM object: a row of
    every column of the orders table (amount in minor units), plus `session_id` and
    `redirect_url` of its current session (None while it has none). None when there is no
    such order. For an id known to be valid: it is not checked."""
    return db.session.execute(_checkout_statements(_dialect()).read, {"order_id": order_id}).first()


def start_new_attempt(order) -> Row:
    """A cancelled or expired order submitted again goes back to pending and
    will get a new session under a new Idempotency-Key. `order` is anything with the
    order's `id` and `idempotency_key` as read; one UPDATE ... RETURNING. Returns the
    order as it is now (`for_checkout`'s row): unchanged when it was not cancelled or
    expired, or when a concurrent submission began the new attempt first."""
    values = {
        "order_id": order.id,
        "read_key": order.idempotency_key,
        "new_key": new_idempotency_key(),
        "now": utcnow(),
    }
    renewed = db.session.execute(_checkout_statements(_dialect()).new_attempt, values).first()
    return renewed if renewed is not None else for_checkout(order.id)


def record_session(order, session_id: str, redirect_url: str | None) -> bool:
    """Remember a session Monime made for the order's current attempt (`order`: anything with
    the order's `id` and the `idempotency_key` the session was made under). True when it
    became the order's session; False when a concurrent request with the same key recorded
    it first (or a newer attempt has begun). The session is stored either way, so its
    events find the order. One statement on Postgres (a data-modifying WITH), two on SQLite."""
    values = {
        "session_id": session_id,
        "order_id": order.id,
        "key": order.idempotency_key,
        "redirect_url": redirect_url,
        "now": utcnow(),
    }
    *first, recording = _checkout_statements(_dialect()).record
    for statement in first:
        db.session.execute(statement, values)
    return db.session.execute(recording, values).first() is not None


def _dialect() -> str:
    return db.session.get_bind().dialect.name


@cache
def _checkout_statements(dialect_name: str) -> SimpleNamespace:
    """The statements of a checkout (and the order's view), built once per dialect; their values come with each
    execution (bind parameters), so SQLAlchemy compiles each once and psycopg prepares it.
    Each returns `for_checkout`'s row shape, or the order's id for `record`."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    sessions = CheckoutSession.__table__
    no_session = (null().label("session_id"), null().label("redirect_url"))
    read = (
        select(*Order.__table__.columns, sessions.c.id.label("session_id"), sessions.c.redirect_url)
        .select_from(Order.__table__.outerjoin(sessions, sessions.c.id == columns.checkout_session_id))
        .where(columns.id == bindparam("order_id"))
    )
    view = select(*Order.__table__.columns).where(columns.id == bindparam("order_id"))
    place = dialect.insert(Order.__table__).on_conflict_do_nothing().returning(*Order.__table__.columns, *no_session)
    new_attempt = (
        update(Order.__table__)
        .where(
            columns.id == bindparam("order_id"),
            columns.status.in_(FINAL_UNPAID),
            columns.idempotency_key == bindparam("read_key"),
        )
        .values(
            status=Status.PENDING,
            idempotency_key=bindparam("new_key"),
            checkout_session_id=None,
            updated_at=bindparam("now"),
        )
        .returning(*Order.__table__.columns, *no_session)
    )
    store_session = (
        dialect.insert(sessions)
        .values(
            id=bindparam("session_id"),
            order_id=bindparam("order_id"),
            idempotency_key=bindparam("key"),
            redirect_url=bindparam("redirect_url"),
            created_at=bindparam("now"),
        )
        .on_conflict_do_nothing()
    )
    take_session = (
        update(Order.__table__)
        .where(
            columns.id == bindparam("order_id"),
            columns.idempotency_key == bindparam("key"),
            columns.checkout_session_id.is_(None),
        )
        .values(checkout_session_id=bindparam("session_id"), updated_at=bindparam("now"))
        .returning(columns.id)
    )
    if dialect_name == "postgresql":  # one round trip: the session is stored by a WITH of the UPDATE
        record = (take_session.add_cte(store_session.cte("stored_session")),)
    else:
        record = (store_session, take_session)
    return SimpleNamespace(view=view, read=read, place=place, new_attempt=new_attempt, record=record)


def by_session(session_id: str) -> Order | None:
    """The order that Monime checkout session `session_id` (its current or an earlier one) was made for."""
    return db.session.scalars(select(Order).join(CheckoutSession).where(CheckoutSession.id == session_id)).first()


def find(report: SessionReport) -> tuple[Order | None, bool]:
    """The order a session belongs to, and whether it was found by reference:
    by session id (current or earlier session) first, else by the reference
    Monime echoes back, but only for an order that has no session of its own."""
    order = by_session(report.session_id)
    if order is not None or not report.reference:
        return order, False
    order = lookup(report.reference)
    if order is None or order.checkout_session_id is not None:
        return None, False
    has_sessions = db.session.scalar(select(CheckoutSession.id).where(CheckoutSession.order_id == order.id).limit(1))
    return (None, False) if has_sessions else (order, True)


def apply(
    order: Order, report: SessionReport, event_id: str | None = None, by_reference: bool = False
) -> tuple[Outcome, str | None]:
    """Apply what Monime says about one of the order's sessions. An order found
    by reference first takes the session as its own: it was made, never recorded."""
    if by_reference:
        record_session(order, report.session_id, None)
    if report.status == Status.COMPLETED:
        return _complete(order, report, event_id)
    if report.status in ENDS:
        ended = _change(
            order,
            {"status": report.status},
            columns.status.in_(ENDS[report.status]),
            columns.checkout_session_id == report.session_id,
            notify=f"order.{report.status}",
        )
        if ended:
            return Outcome.APPLIED, None
        return (
            Outcome.UNCHANGED,
            f"{report.status} changes nothing: the order is {reread(order.id).status} or has a newer session",
        )
    return Outcome.UNCHANGED, f"session is {report.status}"


def _complete(order: Order, report: SessionReport, event_id: str | None) -> tuple[Outcome, str | None]:
    if report.problem:
        return hold(order, report.problem, event_id)
    expected = (order.currency, order.amount)
    if report.amount != expected:
        reason = f"amount mismatch: Monime reports {_money(report.amount)}, the order is {_money(expected)}"
        return hold(order, reason, event_id)
    paid = _change(
        order,
        {
            "status": Status.COMPLETED,
            "checkout_session_id": report.session_id,
            "monime_order_number": report.order_number,  # the paying session's: a later payment never replaces it
        },
        columns.status != Status.COMPLETED,
        notify="order.completed",
    )
    if paid:
        return Outcome.APPLIED, None
    paid_by = db.session.scalar(select(columns.checkout_session_id).where(columns.id == order.id))
    if paid_by == report.session_id:
        return Outcome.UNCHANGED, "already completed"
    return hold(order, f"possible double payment: session {report.session_id} completed after {paid_by}", event_id)


def lookup_due(order: Order, interval: float) -> bool:
    """Whether the order, as read, is free to be looked up at Monime: never
    looked up, or last more than `interval` seconds ago. A read only; the turn
    itself is taken by `claim_lookup`."""
    checked = order.checked_at
    if checked is None:
        return True
    if checked.tzinfo is None:  # SQLite hands back naive datetimes; they are stored in UTC
        checked = checked.replace(tzinfo=UTC)
    return checked <= utcnow() - timedelta(seconds=interval)


def claim_lookup(order: Order, interval: float) -> bool:
    """Take the pending order's turn to be looked up at Monime: True for at
    most one caller per `interval` seconds across workers and replicas (a
    conditional UPDATE of checked_at whose row count decides); False while
    the turn is taken or once the order is no longer pending. Touches neither
    status nor updated_at. Callers commit before asking Monime."""
    now = utcnow()
    statement = (
        update(Order.__table__)
        .where(columns.id == order.id, columns.status == Status.PENDING)
        .where(or_(columns.checked_at.is_(None), columns.checked_at <= now - timedelta(seconds=interval)))
        .values(checked_at=now)
    )
    return db.session.execute(statement).rowcount == 1


def hold(order: Order, reason: str, event_id: str | None) -> tuple[Outcome, str]:
    """Keep the order as it is and flag it for a person. The first reason stays;
    every held event keeps its own in the event log."""
    values = {"review_reason": reason[:255], "review_event_id": event_id}
    _change(order, values, columns.review_reason.is_(None), notify="order.held")
    return Outcome.HELD, reason


class NotHeld(Exception):
    """The order is not held for review, so there is nothing to resolve."""


# What a person may do with a held order: the values each action sets.
RESOLUTIONS = {
    "complete": {"status": Status.COMPLETED},  # a person confirmed the payment: paid, whatever it was
    "dismiss": {},  # nothing was wrong: the status stays
}


def resolve(order_id: str, action: str, note: str, by: str, via: str) -> OrderResolution:
    """Resolve the held order `order_id` as a person decided: `action` "complete" (status
    completed, completed being final) or "dismiss" (status kept); either way the hold is
    cleared, and an OrderResolution records `by` (an API key's name or a shell user), `via`
    ("api" or "cli"), the `note` (why) and the order's status and review before. Returns it.

    The order's row is locked first (FOR UPDATE on Postgres, the write lock SQLite's
    transactions take up front), so what it records as before is what it changed, and the
    change is a conditional UPDATE on the hold whose row count decides: of two resolutions
    at once exactly one applies. Raises LookupError for an unknown order, NotHeld when it
    is not held (also when another resolution came first). Callers commit."""
    locked = select(Order).where(columns.id == order_id).with_for_update()
    order = db.session.scalars(locked.execution_options(populate_existing=True)).first()
    if order is None:
        raise LookupError(order_id)
    before = (order.status, order.review_reason, order.review_event_id)
    cleared = {"review_reason": None, "review_event_id": None}
    # completing a held order notifies order.completed; one already completed (a double payment) was notified
    paid = "order.completed" if action == "complete" and before[0] != Status.COMPLETED else None
    if not _change(order, RESOLUTIONS[action] | cleared, columns.review_reason.is_not(None), notify=paid):
        raise NotHeld(order_id)
    resolution = OrderResolution(
        order_id=order_id,
        action=action,
        by=by[:100],
        via=via,
        note=note,
        previous_status=before[0],
        previous_review_reason=before[1],
        previous_review_event_id=before[2],
        resolved_at=utcnow(),
    )
    db.session.add(resolution)
    db.session.flush()
    return resolution


def sessions(order_id: str) -> list[CheckoutSession]:
    """Every checkout session made for the order, oldest first."""
    query = select(CheckoutSession).where(CheckoutSession.order_id == order_id)
    return list(db.session.scalars(query.order_by(CheckoutSession.created_at, CheckoutSession.id)))


def held() -> list[Order]:
    """Every order held for review (`hold`), the longest unchanged first."""
    return list(
        db.session.scalars(select(Order).where(columns.review_reason.is_not(None)).order_by(columns.updated_at))
    )


def resolutions(order_id: str) -> list[OrderResolution]:
    """Every resolution of the order, oldest first."""
    query = select(OrderResolution).where(OrderResolution.order_id == order_id)
    return list(db.session.scalars(query.order_by(OrderResolution.resolved_at, OrderResolution.id)))


def _change(order: Order, values: dict, *conditions, notify: str | None = None) -> bool:
    """UPDATE the order with `values` where `conditions` hold; True when it changed. Then, in
    the same transaction, the notification `notify` (e.g. "order.completed") is written."""
    statement = update(Order.__table__).where(columns.id == order.id, *conditions).values(**values, updated_at=utcnow())
    changed = db.session.execute(statement).rowcount == 1
    if changed and notify:
        notifications.enqueue(order.id, notify)
    return changed


def _money(amount: tuple[str, int] | None) -> str:
    return "no amount" if amount is None else f"{amount[0]} {amount[1]}"
