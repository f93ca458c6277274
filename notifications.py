"""Order notifications: a transactional outbox and the relay that delivers it.

orders.py calls `enqueue` right where an order's status changes (completed,
cancelled, expired) or it is held for review, so the notification is a row of
the `notifications` table written in the same transaction as the change: a
rollback or a crash loses both or neither. The relay POSTs each row's JSON body
to NOTIFY_URL, signed the Standard Webhooks way (webhook-id: the row id, the
same on every attempt; webhook-timestamp; webhook-signature: one v1 signature
per NOTIFY_SECRET), until the receiver answers 2xx: at-least-once, so receivers
deduplicate by webhook-id. A failed attempt (non-2xx, timeout, connection
error) is retried after NOTIFY_FIRST_RETRY seconds, doubling up to an hour,
with jitter, until NOTIFY_RETRY_FOR has passed since the row was written (or
redelivered); then the row is dead until `flask notifications redeliver`.

Every worker runs one relay thread (`start_relay`), woken just after a commit
that enqueued something in that process and every POLL_INTERVAL seconds for
the other processes' rows. A relay claims a batch by setting claimed_until (a
lease): with SELECT ... FOR UPDATE SKIP LOCKED on Postgres, under the write
lock (BEGIN IMMEDIATE, models.py) on SQLite, so no two relays, in any worker
or replica, hold the same row; a crashed relay's lease lapses and another
delivers. Each POST has a hard wall-clock limit (NOTIFY_TIMEOUT, monime.Deadline),
and a batch's lease outlasts the batch's limits together.
"""

import json
import logging
import os
import random
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import requests
from flask import Flask, current_app
from sqlalchemy import Insert, bindparam, event, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

import monime
from metrics import NOTIFICATION_DELIVERIES
from models import Notification, NotificationStatus, Order, atomic, db, transaction, utcnow
from schemas import OrderSchema, UtcDateTime

log = logging.getLogger(__name__)
table = Notification.__table__
columns = table.c

BATCH = 10  # rows claimed at once
MAX_BACKOFF = 3600.0  # seconds between attempts, at most
POLL_INTERVAL = 1.0  # seconds: how soon rows another process wrote are seen
ERROR_WAIT = 5.0  # seconds to wait after the database failed the relay
_WOKEN = threading.Event()  # set after a commit that enqueued something in this process
_ENQUEUED = "notifications_enqueued"  # in Session.info until its transaction ends
_STARTED = threading.Lock()


def enqueue(order, kind: str) -> str | None:
    """Write the notification `kind` ("order.completed", "order.held", …) about `order`, the Core
    Row of the orders table as the caller's transaction changed it (an UPDATE's RETURNING), in that
    transaction (`notification`, executed now). Returns the notification id ("msg_…"), or None
    when NOTIFY_URL is not set (nothing is written). The caller commits."""
    written = notification(order, kind)
    if written is None:
        return None
    db.session.execute(*written)
    return written[1]["notification_id"]


# The outbox row, built once: its values are bound when it is executed (`notification`).
WRITE = insert(table).values(
    id=bindparam("notification_id"),
    type=bindparam("notification_type"),
    order_id=bindparam("notification_order_id"),
    body=bindparam("notification_body"),
    status=NotificationStatus.PENDING,
    attempts=0,
    created_at=bindparam("notification_created_at"),
    next_attempt_at=bindparam("notification_due_at"),
    retry_until=bindparam("notification_retry_until"),
)
ORDER_SCHEMA = OrderSchema()  # built once: a schema with nested ones costs more to build than to dump


def notification(order, kind: str) -> tuple[Insert, dict] | None:
    """The outbox row announcing `kind` about `order` (a row holding the orders table's
    columns OrderSchema shows, orders.SHOWN, as changed), as (statement, parameters) for the caller to
    execute in the transaction that holds the change, e.g. with models.together; None when
    NOTIFY_URL is not set. The body shows the order as GET /api/orders/<id> does (OrderSchema)."""
    config = current_app.config
    if not config["NOTIFY_URL"]:
        return None
    now, notification_id = utcnow(), f"msg_{uuid.uuid4().hex}"
    shown = ORDER_SCHEMA.dump(Order.as_shown(order))
    body = {"type": kind, "id": notification_id, "createdAt": _timestamp(now), "order": shown}
    db.session.info[_ENQUEUED] = True  # wake the relay after the commit (forgotten on a rollback)
    return WRITE, {
        "notification_id": notification_id,
        "notification_type": kind,
        "notification_order_id": order.id,
        "notification_body": json.dumps(body, separators=(",", ":")),
        "notification_created_at": now,
        "notification_due_at": now,
        "notification_retry_until": now + timedelta(seconds=config["NOTIFY_RETRY_FOR"]),
    }


def _timestamp(moment: datetime) -> str:
    return UtcDateTime()._serialize(moment, None, None)


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session) -> None:
    if session.info.pop(_ENQUEUED, False):
        _WOKEN.set()


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session) -> None:
    session.info.pop(_ENQUEUED, None)


# --- delivery ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A notification a relay has claimed: its id, body, attempts made before and when it dies."""

    id: str
    body: str
    attempts: int  # before this one
    retry_until: datetime


def _due(now: datetime, *wanted):
    return (
        select(*wanted)
        .where(columns.status == NotificationStatus.PENDING, columns.next_attempt_at <= now)
        .where(or_(columns.claimed_until.is_(None), columns.claimed_until < now))
    )


def anything_due() -> bool:
    """Whether a notification is due and unclaimed, read without the write lock (models.read_only),
    so an idle relay's polling never queues SQLite's writers; read again if the connection was
    lost (models.atomic), so a dropped connection costs the relay no ERROR_WAIT. Ends its transaction."""
    return atomic(lambda: db.session.execute(_due(utcnow(), columns.id).limit(1)).first() is not None, only_reads=True)


def claim(limit: int, lease: float) -> list[Claimed]:
    """Take up to `limit` due notifications for `lease` seconds, oldest due first, and commit.
    Rows another relay holds (locked, or leased until later) are passed over."""
    with transaction():
        return _claim(limit, lease)


def _claim(limit: int, lease: float) -> list[Claimed]:
    now = utcnow()
    due = (
        _due(now, columns.id, columns.body, columns.attempts, columns.retry_until)
        .order_by(columns.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)  # Postgres; SQLite's BEGIN IMMEDIATE already serialises
    )
    rows = [Claimed(*row) for row in db.session.execute(due)]
    if rows:
        db.session.execute(
            update(table)
            .where(columns.id.in_([row.id for row in rows]))
            .values(claimed_until=now + timedelta(seconds=lease))
        )
    return rows


def signature_headers(notification_id: str, body: str, secrets: list[str], at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt: one v1 signature per secret (the receiver
    accepts any), so a receiver mid-rotation verifies with either key."""
    signatures = " ".join(Webhook(secret).sign(notification_id, at, body) for secret in secrets)
    return {
        "webhook-id": notification_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "Content-Type": "application/json",
        "User-Agent": "monime-checkout",
    }


def post(http: requests.Session, notification: Claimed, config) -> str | None:
    """One attempt to deliver; None when the receiver answered 2xx, else why not. Ends within
    NOTIFY_TIMEOUT seconds, however slowly the receiver answers (monime.Deadline)."""
    headers = signature_headers(notification.id, notification.body, config["NOTIFY_SECRETS"], utcnow())
    limit = config["NOTIFY_TIMEOUT"]
    try:
        with monime.Deadline(limit) as budget:
            response = http.post(
                config["NOTIFY_URL"], data=notification.body.encode(), headers=headers,
                timeout=(limit, limit), allow_redirects=False,
            )  # fmt: skip
    except requests.Timeout:
        return f"no answer within {limit:g} s"
    except requests.RequestException as exc:
        return f"no answer within {limit:g} s" if budget.expired else f"connection failed: {type(exc).__name__}"
    if budget.expired:
        return f"no answer within {limit:g} s"
    return None if 200 <= response.status_code < 300 else f"answered HTTP {response.status_code}"


def backoff(attempts: int, first: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones: `first`, doubling per
    attempt up to MAX_BACKOFF, times a random factor in [0.5, 1) so receivers coming back
    are not met by every sender at once."""
    return min(MAX_BACKOFF, first * 2 ** min(attempts - 1, 32)) * random.uniform(0.5, 1)


def record(notification: Claimed, error: str | None, first_retry: float) -> str:
    """Store what one attempt did and release the claim; returns the result: delivered,
    failed (to be retried) or dead (retry_until has passed). The caller commits."""
    now, attempts = utcnow(), notification.attempts + 1
    values = {"attempts": attempts, "claimed_until": None, "last_error": error and error[:255]}
    if error is None:
        result, values = "delivered", values | {"status": NotificationStatus.DELIVERED, "delivered_at": now}
    elif now >= _aware(notification.retry_until):
        result, values = "dead", values | {"status": NotificationStatus.DEAD}
    else:
        retry_at = min(now + timedelta(seconds=backoff(attempts, first_retry)), _aware(notification.retry_until))
        result, values = "failed", values | {"next_attempt_at": retry_at}
    pending = (columns.id == notification.id, columns.status == NotificationStatus.PENDING)
    db.session.execute(update(table).where(*pending).values(**values))
    NOTIFICATION_DELIVERIES.labels(result).inc()
    return result


def _aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def drain(http: requests.Session) -> int:
    """Deliver every due notification, a batch at a time; returns how many attempts were made.
    Needs an app context; uses one database connection at a time, held only between claims."""
    config = current_app.config
    lease = BATCH * config["NOTIFY_TIMEOUT"] * 2 + 30  # outlasts a batch of attempts that all time out
    made = 0
    while anything_due() and (batch := claim(BATCH, lease)):
        for notification in batch:
            error = post(http, notification, config)
            with transaction():
                result = record(notification, error, config["NOTIFY_FIRST_RETRY"])
            made += 1
            level = logging.INFO if error is None else logging.WARNING
            log.log(level, "order notification %s", result, extra={"data": {"id": notification.id, "error": error}})
    return made


def new_http_session() -> requests.Session:
    """The relay's own connection to the receiver: one, kept alive, cut by a Deadline."""
    http = requests.Session()
    adapter = monime.DeadlineAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


def relay(app: Flask, stop: threading.Event) -> None:
    """Deliver notifications until `stop` is set: drain, then sleep until woken by a local
    enqueue or POLL_INTERVAL (at most NOTIFY_FIRST_RETRY) passes. A database error is logged
    and retried after ERROR_WAIT seconds; nothing ends the loop but `stop`."""
    http, poll = new_http_session(), min(POLL_INTERVAL, app.config["NOTIFY_FIRST_RETRY"])
    while not stop.is_set():
        _WOKEN.clear()  # before draining: a commit meanwhile makes the wait below return at once
        wait = poll
        with app.app_context():
            try:
                drain(http)
            except SQLAlchemyError as exc:
                db.session.rollback()
                log.warning("the notification relay cannot reach the database: %s", type(exc).__name__)
                wait = ERROR_WAIT
        _WOKEN.wait(wait)


def start_relay(app: Flask) -> bool:
    """Start `relay` in a daemon thread of this process, once per process and app, when
    NOTIFY_URL is set and NOTIFY_RELAY is on; True when this call started it. Called after
    the fork (gunicorn's post_worker_init, else the first request), never by CLI commands."""
    if not (app.config["NOTIFY_URL"] and app.config["NOTIFY_RELAY"]):
        return False
    with _STARTED:
        running = app.extensions.get("notifications_relay")
        if running and running[0] == os.getpid():
            return False
        stop = threading.Event()
        thread = threading.Thread(target=relay, args=(app, stop), name="notifications-relay", daemon=True)
        app.extensions["notifications_relay"] = (os.getpid(), stop, thread)
    thread.start()
    return True


def stop_relay(app: Flask, timeout: float = 10) -> None:
    """Stop this process's relay for `app` (if running) and wait up to `timeout` seconds."""
    running = app.extensions.pop("notifications_relay", None)
    if running and running[0] == os.getpid():
        running[1].set()
        _WOKEN.set()
        running[2].join(timeout)


def listed(statuses=(), limit: int | None = None, order_id: str | None = None, failing=False) -> list[Notification]:
    """Notifications, oldest first: with one of `statuses` (NotificationStatus values; all when
    empty), about `order_id` when given, only those whose last attempt failed when `failing`
    (a pending one so is being retried), at most `limit` (all when None)."""
    query = select(Notification).order_by(Notification.created_at, Notification.id).limit(limit)
    if statuses:
        query = query.where(columns.status.in_(statuses))
    if failing:
        query = query.where(columns.last_error.is_not(None))
    if order_id is not None:
        query = query.where(columns.order_id == order_id)
    return list(db.session.scalars(query))


def redeliver(notification_id: str | None = None, dead: bool = False) -> int:
    """Make a notification (by id) or every dead one pending again, due now, with a fresh
    NOTIFY_RETRY_FOR window; returns how many. The caller commits."""
    now = utcnow()
    which = columns.id == notification_id if notification_id else columns.status == NotificationStatus.DEAD
    statement = (
        update(table)
        .where(which)
        .values(
            status=NotificationStatus.PENDING,
            next_attempt_at=now,
            claimed_until=None,
            retry_until=now + timedelta(seconds=current_app.config["NOTIFY_RETRY_FOR"]),
        )
    )
    changed = db.session.execute(statement).rowcount
    db.session.info[_ENQUEUED] = True
    return changed


def init_app(app: Flask) -> None:
    """Start the relay with the first request in servers without a post-fork hook (flask run)."""
    if app.config["NOTIFY_URL"] and app.config["NOTIFY_RELAY"]:

        @app.before_request
        def start_relay_with_the_first_request() -> None:
            start_relay(app)
