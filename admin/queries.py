"""What the operator pages read: the order search, an order's timeline and the landing page's
counts and series. Reads only; the rules stay in orders, events and notifications, whose
functions are used for everything they already answer."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select

import events
import notifications
import orders
from admin.formatting import aware
from models import (
    CheckoutSession,
    Notification,
    NotificationStatus,
    Order,
    Outcome,
    Status,
    WebhookEvent,
    db,
    utcnow,
)

PAGE_SIZE = 50  # orders per page of the list
CHART_DAYS = 30  # orders by status per day, for this many days up to today (UTC)
CHART_HOURS = 48  # webhook outcomes per hour, for this many hours up to this one (UTC)


@dataclass
class Page:
    """One page of the order list: `orders` newest first, `total` matching, `number` from 1."""

    orders: list[Order]
    total: int
    number: int
    size: int = PAGE_SIZE

    @property
    def has_next(self) -> bool:
        return self.number * self.size < self.total


def search_orders(text: str = "", status: str = "", held: bool = False, number: int = 1) -> Page:
    """Orders, newest first, `PAGE_SIZE` a page (page `number`, from 1): those whose orderId
    starts with `text`, or one of whose checkout sessions or whose Monime order number is `text`
    (all when empty); with `status` (a Status value; any when empty); only held ones when `held`."""
    query = select(Order)
    if text := text.strip():
        by_session = select(CheckoutSession.order_id).where(CheckoutSession.id == text)
        query = query.where(
            or_(Order.id.startswith(text, autoescape=True), Order.monime_order_number == text, Order.id.in_(by_session))
        )
    if status:
        query = query.where(Order.status == status)
    if held:
        query = query.where(Order.review_reason.is_not(None))
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    newest = query.order_by(Order.created_at.desc(), Order.id.desc())
    found = db.session.scalars(newest.offset((number - 1) * PAGE_SIZE).limit(PAGE_SIZE))
    return Page(list(found), total, number)


@dataclass
class Entry:
    """One line of an order's timeline: when, what kind (order, session, event, variant,
    notification, resolution), a title, details as (label, value) pairs and a raw body if any."""

    at: datetime
    kind: str
    title: str
    details: list[tuple[str, str]] = field(default_factory=list)
    body: str | None = None
    outcome: str | None = None  # an event's outcome or a notification's status, for its badge
    subject_id: str | None = None  # the event or notification an action on this line acts on


def timeline(order: Order) -> list[Entry]:
    """The order's history, one timeline in time order (oldest first): its
    creation, each session, each webhook event about it (and any other body under its id), each
    notification with its delivery attempts, and each resolution."""
    sessions = orders.sessions(order.id)
    entries = [Entry(order.created_at, "order", "Order placed")]
    for one in sessions:
        current = " (current)" if one.id == order.checkout_session_id else ""
        entries.append(Entry(one.created_at, "session", f"Checkout session {one.id}{current}"))
    for event in events.about(order.id, [one.id for one in sessions]):
        details = [("attempts", str(event.attempts)), ("processed", event.processed_at)]
        entries.append(
            Entry(event.received_at, "event", f"Webhook {event.name} · {event.id}", details + detail(event.detail),
                  event.body, event.outcome, event.id)
        )  # fmt: skip
        for variant in events.variants(event.id):
            title = f"Webhook {event.id} delivered again with another body (kept, not applied)"
            entries.append(Entry(variant.received_at, "variant", title, [], variant.body, Outcome.HELD))
    for note in notifications.listed(order_id=order.id):
        details = [("attempts", str(note.attempts)), ("delivered", note.delivered_at)]
        if note.status == NotificationStatus.PENDING:
            details.append(("next attempt", note.next_attempt_at))
        entries.append(
            Entry(note.created_at, "notification", f"Notification {note.type} · {note.id}",
                  details + detail(note.last_error, "last error"), note.body, note.status, note.id)
        )  # fmt: skip
    for done in orders.resolutions(order.id):
        was = f"was {done.previous_status}, held: {done.previous_review_reason}"
        details = [("note", done.note), ("before", was), ("held by event", done.previous_review_event_id or "—")]
        entries.append(Entry(done.resolved_at, "resolution", f"Resolved: {done.action} by {done.by} via {done.via}",
                             details))  # fmt: skip
    entries.sort(key=lambda entry: aware(entry.at))
    return entries


def detail(text: str | None, label: str = "detail") -> list[tuple[str, str]]:
    return [(label, text)] if text else []


@dataclass
class Glance:
    """The landing page: what needs a person, and the two charts' series."""

    held: int
    failed_events: int
    dead_notifications: int
    failing_notifications: int
    oldest_pending: Order | None
    days: list[str]  # "YYYY-MM-DD", oldest first
    orders_by_day: dict[str, list[int]]  # status -> count per day
    hours: list[str]  # "YYYY-MM-DD HH", oldest first
    outcomes_by_hour: dict[str, list[int]]  # outcome -> count per hour


def glance() -> Glance:
    """Counts that need a person and the charts' series: orders placed per day (by status now)
    over CHART_DAYS days, webhook events received per hour (by outcome) over CHART_HOURS hours.
    Each is one GROUP BY query, the same on SQLite and Postgres (see `bucket`)."""
    now = utcnow()
    days = [(now - timedelta(days=back)).strftime("%Y-%m-%d") for back in range(CHART_DAYS - 1, -1, -1)]
    hours = [(now - timedelta(hours=back)).strftime("%Y-%m-%d %H") for back in range(CHART_HOURS - 1, -1, -1)]
    first_day = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=CHART_DAYS - 1)
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=CHART_HOURS - 1)
    oldest = select(Order).where(Order.status == Status.PENDING).order_by(Order.created_at, Order.id).limit(1)
    return Glance(
        held=count(Order, Order.review_reason.is_not(None)),
        failed_events=count(WebhookEvent, WebhookEvent.outcome == Outcome.FAILED),
        dead_notifications=count(Notification, Notification.status == NotificationStatus.DEAD),
        failing_notifications=count(
            Notification, Notification.status == NotificationStatus.PENDING, Notification.last_error.is_not(None)
        ),
        oldest_pending=db.session.scalars(oldest).first(),
        days=days,
        orders_by_day=per_bucket(Order.created_at, Order.status, first_day, "day", days, list(Status)),
        hours=hours,
        outcomes_by_hour=per_bucket(
            WebhookEvent.received_at, WebhookEvent.outcome, first_hour, "hour", hours, list(Outcome)
        ),
    )


def count(model, *conditions) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*conditions))


def per_bucket(moment, kind, since: datetime, unit: str, labels: list[str], kinds: list[str]) -> dict[str, list[int]]:
    """Rows since `since` counted per (`unit` bucket of `moment`, `kind`), as kind -> a count for
    each of `labels` (every one of `kinds`, zeros included, so the chart's legend is fixed)."""
    slot = bucket(moment, unit)
    query = select(slot, kind, func.count()).where(moment >= since).group_by(slot, kind)
    counts = defaultdict(lambda: [0] * len(labels))
    where = {label: position for position, label in enumerate(labels)}
    for label, which, number in db.session.execute(query):
        if label in where:
            counts[which][where[label]] += number
    return {str(which): counts[which] for which in kinds}


def bucket(moment, unit: str):
    """A SQL expression for `moment`'s UTC day ("YYYY-MM-DD") or hour ("YYYY-MM-DD HH"), as text:
    strftime on SQLite (which stores UTC without a zone), to_char of the UTC time on Postgres."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", moment), "YYYY-MM-DD" if unit == "day" else "YYYY-MM-DD HH24")
    return func.strftime("%Y-%m-%d" if unit == "day" else "%Y-%m-%d %H", moment)
