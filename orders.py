"""Order state rules: the one place an order's status changes.

    (new) ─────────────────────────────▶ pending
    pending ──completed────────────────▶ completed   terminal: nothing moves it again
    pending ──cancelled / expired──────▶ cancelled / expired   (its current session only)
    expired ──cancelled────────────────▶ cancelled   the shopper's act outranks the clock
    cancelled / expired ──completed────▶ completed   money was taken: completion wins
    cancelled / expired ──submitted again──▶ pending under a new session

For one session a status only moves up pending < expired < cancelled <
completed, so the order ends the same whatever order the news arrives in.

Every change is a single conditional UPDATE ... WHERE ... RETURNING whose
returned row (or none) says whether it happened, so two workers can never
both apply a transition, and a late, repeated or reordered report can never
undo one. What a session report asks for is TRANSITIONS: the values it sets
and the conditions the order's row must meet, compiled into that UPDATE
whether `apply` runs it on its own or the webhook runs it inside the one
statement that also stores the event (events.py); `judge` says what came of
it either way. Callers commit, each flow in its own unit of work
(models.transaction, models.atomic).

A change to completed, cancelled or expired, and a hold for review, also
writes an order notification in the same transaction, right where its UPDATE
succeeded (notifications.enqueue; for the webhook's statement, the write
`settle` hands back to go with the event's outcome): the shop hears of every
change exactly when it is committed.
"""

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta
from functools import cache
from types import SimpleNamespace

from sqlalchemy import Row, Update, and_, bindparam, null, or_, select, update
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
table = Order.__table__
columns = table.c
FINAL_UNPAID = (Status.CANCELLED, Status.EXPIRED)

# What a report brings to the statements below, bound when they are executed (`parameters`),
# so each statement is built and compiled once. No name is a column's: SQLAlchemy would take a
# parameter named like a column as a value to set.
SESSION, CURRENCY, AMOUNT, ORDER_NUMBER, NOW = map(
    bindparam, ("report_session", "report_currency", "report_amount", "report_order_number", "now")
)
# The order a session (SESSION) was made for: its current session or an earlier one.
SESSION_ORDER = (
    select(CheckoutSession.__table__.c.order_id).where(CheckoutSession.__table__.c.id == SESSION).scalar_subquery()
)


# What a change returns of the order: what `judge` reads and an order notification shows (OrderSchema).
SHOWN = tuple(
    columns[name]
    for name in (
        *("id", "status", "currency", "amount", "checkout_session_id", "monime_order_number", "name", "line_items"),
        *("review_reason", "review_event_id", "created_at", "updated_at"),
    )
)


@dataclass(frozen=True)
class Transition:
    """A change a session report asks of its order: the `values` it sets, when the order's row
    meets `conditions` (SQL on the orders table), announced by the notification `notify`."""

    values: dict
    conditions: tuple
    notify: str


# The rules, by the status Monime reports for one of the order's sessions.
TRANSITIONS = {
    # Money was taken: completion wins over pending, cancelled and expired, when the amount is
    # the order's. The paying session and its orderNumber are kept; a later payment replaces neither.
    Status.COMPLETED: Transition(
        {"status": Status.COMPLETED, "checkout_session_id": SESSION, "monime_order_number": ORDER_NUMBER},
        (columns.status != Status.COMPLETED, columns.currency == CURRENCY, columns.amount == AMOUNT),
        "order.completed",
    ),
    # The order's current session only; the shopper's act outranks the clock.
    Status.CANCELLED: Transition(
        {"status": Status.CANCELLED},
        (columns.status.in_((Status.PENDING, Status.EXPIRED)), columns.checkout_session_id == SESSION),
        "order.cancelled",
    ),
    Status.EXPIRED: Transition(
        {"status": Status.EXPIRED},
        (columns.status == Status.PENDING, columns.checkout_session_id == SESSION),
        "order.expired",
    ),
}


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
    return None if row is None else Order.as_shown(row)


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


def transition(report: SessionReport) -> Transition | None:
    """The change `report` asks of its order (TRANSITIONS); None when it asks for none: a status
    that changes nothing (pending), or a completion whose amount cannot be trusted (`judge` holds
    the order)."""
    if report.status == Status.COMPLETED and (report.problem or report.amount is None):
        return None
    return TRANSITIONS.get(report.status)


def parameters(report: SessionReport) -> dict:
    """The values `report` binds in the statements built from TRANSITIONS (and SESSION_ORDER)."""
    currency, amount = report.amount or (None, None)
    return {
        "report_session": report.session_id,
        "report_currency": currency,
        "report_amount": amount,
        "report_order_number": report.order_number,
    }


def changing(change: Transition, *conditions) -> Update:
    """The UPDATE making `change` to the order that holds when `conditions` hold too (one of them
    picks the order: columns.id == <its id>, or == SESSION_ORDER), RETURNING the order's row as
    changed (its SHOWN columns). Executed with `parameters(report)` and NOW (the time of the change)."""
    statement = update(table).where(*conditions, *change.conditions).values(**change.values, updated_at=NOW)
    return statement.returning(*SHOWN)


def eligible(change: Transition):
    """A SQL truth value: the order's row (the orders table) meets `change`'s conditions."""
    return and_(*change.conditions)


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
    """Apply what Monime says about one of the order's sessions (`transition`), and say what came
    of it (`judge`): (outcome, detail). An order found by reference first takes the session as its
    own: it was made, never recorded."""
    if by_reference:
        record_session(order, report.session_id, None)
    change = transition(report)
    if change is not None:
        statement = changing(change, columns.id == order.id)
        changed = db.session.execute(statement, parameters(report) | {"now": utcnow()}).first()
        if changed is not None:
            notifications.enqueue(changed, change.notify)
            return Outcome.APPLIED, None
    return judge(report, current(order.id), event_id)


def settle(report: SessionReport, order: Row, changed: bool, event_id: str) -> tuple[Outcome, str | None, list]:
    """What a statement that ran `changing(transition(report), ...)` (the webhook's, events.py) did
    to the order: (outcome, detail, writes). `order` is its row as changed, else as read (a row
    not read before a concurrent change is the caller's to apply again with `apply`). `writes`
    ((statement, parameters) pairs) go into the same transaction: the change's notification
    (notifications.notification), for the caller to execute with its own (models.together)."""
    if changed:
        written = notifications.notification(order, transition(report).notify)
        return Outcome.APPLIED, None, [written] if written else []
    return *judge(report, order, event_id), []


def current(order_id: str) -> Row:
    """The order's row as it is now (its SHOWN columns; Core, no ORM object)."""
    return db.session.execute(select(*SHOWN).where(columns.id == order_id)).one()


def judge(report: SessionReport, order, event_id: str | None) -> tuple[Outcome, str | None]:
    """What a report whose transition did not change the order (or that asks for none) comes to:
    (outcome, detail). `order` is its row as it is after the attempt (anything with the orders
    table's columns as attributes). A completion that cannot be trusted, is not of the order's
    amount, or pays an order another session paid holds the order for a person (`hold`); late
    or repeated news is UNCHANGED."""
    if report.status == Status.COMPLETED:
        if report.problem:
            return hold(order, report.problem, event_id)
        expected = (order.currency, order.amount)
        if report.amount != expected:
            reason = f"amount mismatch: Monime reports {_money(report.amount)}, the order is {_money(expected)}"
            return hold(order, reason, event_id)
        if order.checkout_session_id == report.session_id:
            return Outcome.UNCHANGED, "already completed"
        paid_by = order.checkout_session_id
        return hold(order, f"possible double payment: session {report.session_id} completed after {paid_by}", event_id)
    if report.status in TRANSITIONS:
        return (
            Outcome.UNCHANGED,
            f"{report.status} changes nothing: the order is {order.status} or has a newer session",
        )
    return Outcome.UNCHANGED, f"session is {report.status}"


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


def hold(order, reason: str, event_id: str | None) -> tuple[Outcome, str]:
    """Keep the order (an Order, or anything with its `id`) as it is and flag it for a person.
    The first reason stays; every held event keeps its own in the event log."""
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


def _change(order, values: dict, *conditions, notify: str | None = None) -> bool:
    """UPDATE the order (anything with its `id`) with `values` where `conditions` hold; True when
    it changed. Then, in the same transaction, the notification `notify` (e.g. "order.completed")
    is written, from the row the UPDATE returned."""
    statement = update(table).where(columns.id == order.id, *conditions).values(**values, updated_at=utcnow())
    changed = db.session.execute(statement.returning(*SHOWN)).first()
    if changed is not None and notify:
        notifications.enqueue(changed, notify)
    return changed is not None


def _money(amount: tuple[str, int] | None) -> str:
    return "no amount" if amount is None else f"{amount[0]} {amount[1]}"
