"""Database tables: orders, the Monime checkout sessions made for them, and
every verified webhook event, stored raw with what became of it (and any
other body later delivered under the same event id)."""

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache, lru_cache
from typing import TypeVar

import psycopg
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, ForeignKey, Index, String, Text, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.dml import UpdateBase

log = logging.getLogger(__name__)
T = TypeVar("T")


class Base(DeclarativeBase):
    """The declarative base of every table."""


# Objects stay readable after commit, so no attribute access can silently open
# a new transaction (and, on SQLite, take the write lock) during a Monime call.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})

# How long a SQLite writer queues for the write lock before its request answers
# 503. The Dockerfile's HEALTHCHECK --timeout stays above it.
SQLITE_BUSY_TIMEOUT_MS = 10_000

# Room for Monime's orderNumber: a receipt's is at most 20 characters (OpenAPI RetrieveReceipt),
# kept with a margin in case Monime lengthens it.
MONIME_ORDER_NUMBER_LENGTH = 64


class Status(StrEnum):
    """Monime's own checkout-session vocabulary."""

    PENDING = "pending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Outcome(StrEnum):
    """What processing a webhook event did."""

    APPLIED = "applied"  # the order's status changed
    UNCHANGED = "unchanged"  # valid, but the rules say nothing changes (late or repeated news)
    HELD = "held"  # needs a person: amount mismatch, double payment, unknown to Monime
    UNMATCHED = "unmatched"  # no order knows the session
    IGNORED = "ignored"  # an event name this service does not act on
    FAILED = "failed"  # could not be processed now; Monime redelivers, or replay it


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC: every timestamp stored is one."""
    return datetime.now(UTC)


# What an orderId may be (the contract): 1 to 100 of these characters, as Order.id holds.
ORDER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}\Z"


class Order(db.Model):
    """An order as the shopper's request placed it (amount in minor units, currency ISO 4217), its
    status (Monime's vocabulary, changed only by orders.py), the current attempt's Idempotency-Key
    and session, and any hold for review."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'completed', 'cancelled', 'expired')", name="status_known"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # hash of the request content
    name: Mapped[str] = mapped_column(String(150))
    description: Mapped[str | None] = mapped_column(String(1000))
    line_items: Mapped[list] = mapped_column(JSON)
    client_metadata: Mapped[dict] = mapped_column(JSON)
    callback_state: Mapped[str | None] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)  # minor units
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING)
    # The attempt's Idempotency-Key, stored before Monime is called.
    idempotency_key: Mapped[str] = mapped_column(String(64))
    # The current session; once completed, the session that paid.
    checkout_session_id: Mapped[str | None] = mapped_column(String(255))
    # Monime's orderNumber of the payment that completed the order (its receipts are keyed by it);
    # null until a completion brings one (events.order_number checks it).
    monime_order_number: Mapped[str | None] = mapped_column(String(MONIME_ORDER_NUMBER_LENGTH))
    review_reason: Mapped[str | None] = mapped_column(String(255))
    review_event_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When a shopper's redirect last took its turn to ask Monime (orders.claim_lookup); not a change.
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def money(self) -> dict:
        """{currency, value}: the order's total, value in minor units (the API's Money)."""
        return {"currency": self.currency, "value": self.amount}

    @property
    def review(self) -> dict | None:
        """{reason, eventId} while the order is held for review, else None."""
        return {"reason": self.review_reason, "eventId": self.review_event_id} if self.review_reason else None

    @staticmethod
    def as_shown(row) -> dict:
        """A Core row of the orders table's columns (a SELECT's, or an UPDATE's RETURNING) as
        schemas.OrderSchema dumps an Order: its columns by name, with `money` and `review` as
        the properties above make them. For reads and notifications that load no ORM object."""
        return row._asdict() | {"money": Order.money.fget(row), "review": Order.review.fget(row)}


# The order feed (feed.py) pages by (updated_at, id), with or without a status.
Index("ix_orders_updated_at_id", Order.updated_at, Order.id)
Index("ix_orders_status_updated_at_id", Order.status, Order.updated_at, Order.id)


class OrderResolution(db.Model):
    """A person's resolution of an order held for review (orders.resolve): who, when, why,
    what they did and what the order was before. Never changed once written."""

    __tablename__ = "order_resolutions"
    __table_args__ = (CheckConstraint("action IN ('complete', 'dismiss')", name="action_known"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # complete: status -> completed; dismiss: status kept
    by: Mapped[str] = mapped_column(String(100))  # an API key's name, or the shell user of the CLI
    via: Mapped[str] = mapped_column(String(16))  # api or cli
    note: Mapped[str] = mapped_column(String(500))  # why
    previous_status: Mapped[str] = mapped_column(String(16))
    previous_review_reason: Mapped[str] = mapped_column(String(255))
    previous_review_event_id: Mapped[str | None] = mapped_column(String(255))
    resolved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def previous_review(self) -> dict:
        """{reason, eventId}: the hold this resolution cleared."""
        return {"reason": self.previous_review_reason, "eventId": self.previous_review_event_id}


class CheckoutSession(db.Model):
    """Every Monime session made for an order, so late events of an earlier
    session still find their order."""

    __tablename__ = "checkout_sessions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Monime's session id
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(64))
    redirect_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookEvent(db.Model):
    """One verified webhook event, by Monime's event id: its raw body, what processing it did
    (outcome, detail) and the order it concerned; failed ones are replayed (events.replay)."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Monime's event id
    name: Mapped[str] = mapped_column(String(100))
    session_id: Mapped[str | None] = mapped_column(String(255), index=True)
    order_id: Mapped[str | None] = mapped_column(String(100), index=True)
    body: Mapped[str] = mapped_column(Text)  # the raw, verified request body
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    detail: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(default=1)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookEventVariant(db.Model):
    """A body delivered under a stored event id that differs from the stored
    one: kept once per distinct body for a person, never applied."""

    __tablename__ = "webhook_event_variants"

    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id"), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex, of the UTF-8 body
    body: Mapped[str] = mapped_column(Text)  # the raw, verified request body
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NotificationStatus(StrEnum):
    """Where an order notification is in its delivery (notifications.py)."""

    PENDING = "pending"  # to be delivered (again) at next_attempt_at
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # not delivered within NOTIFY_RETRY_FOR; `notifications redeliver` revives it


class Notification(db.Model):
    """The outbox: one row per order notification, inserted in the transaction that changed
    the order (orders.py), delivered to NOTIFY_URL by the relay (notifications.py)."""

    __tablename__ = "notifications"
    __table_args__ = (Index("notifications_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # msg_…, the webhook-id
    type: Mapped[str] = mapped_column(String(32))  # order.completed, order.held, …
    order_id: Mapped[str] = mapped_column(String(100), index=True)
    body: Mapped[str] = mapped_column(Text)  # the JSON sent, fixed when written
    status: Mapped[str] = mapped_column(String(16), default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retry_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # then dead: NOTIFY_RETRY_FOR
    # A relay's claim: nobody else delivers it before then (a crashed relay's claim lapses).
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(255))


def init_app(app) -> None:
    """Bind the database to `app`; on SQLite, set up WAL and the write lock (share_sqlite_between_workers)."""
    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            share_sqlite_between_workers(db.engine)


# The execution option read_only() sets on the session's connection.
READ_ONLY = "checkout_read_only"


def read_only() -> None:
    """Begin the current session's transaction as one that only reads.

    On SQLite it then begins deferred (plain BEGIN) and reads its WAL snapshot
    beside a writer instead of queueing for the write lock; any write in it
    fails at once ("attempt to write a readonly database"), never sometimes.
    Call it before the request's first query; on Postgres it changes nothing.
    Raises sqlalchemy.exc.SQLAlchemyError when the database cannot be reached.
    """
    db.session.connection(execution_options={READ_ONLY: True})


@contextmanager
def transaction(*, only_reads: bool = False, dry_run: bool = False) -> Iterator[None]:
    """One unit of work of a flow: `with transaction(): ...` commits what the block did when it
    ends (a `return` inside it too) and rolls it back when it or the commit raises (the error goes on). With
    `only_reads`, the block only reads and begins as `read_only()` does; with `dry_run`, it is
    rolled back even when it succeeds. Every flow (checkout.py, events.py, sync.py, the relay
    in notifications.py, the resolve views and commands) commits only through this, and calls
    Monime only between such blocks: `assert_no_transaction` checks that in tests.
    Raises sqlalchemy.exc.SQLAlchemyError when the database fails."""
    if only_reads:
        read_only()
    try:
        yield
        if not dry_run:
            db.session.commit()
    except BaseException:  # the block's error, or the commit's (the session is left usable either way)
        db.session.rollback()
        raise
    if dry_run:
        db.session.rollback()


def atomic(work: Callable[[], T], *, idempotent: bool = False, only_reads: bool = False) -> T:
    """Run `work()` as one unit of work, inside `transaction(only_reads=...)`, and return what it
    returns; run it once more, on a new connection, when the database connection turns out to
    have been dropped (a DBAPIError whose `connection_invalidated` is true: the server restarted,
    or ended an idle pooled connection). The pool is not pinged before every transaction: a
    dropped connection costs this one retry instead of a round trip per transaction.

    A connection lost before COMMIT was sent rolled everything back: the second run starts from
    nothing. One lost during COMMIT leaves the outcome unknown (the server may have committed),
    so the work runs again only when it is `idempotent` (a second run of committed work changes
    nothing, as the webhook's, by event id) or `only_reads`; otherwise the error goes on (503).
    `work` may run twice: it must do nothing outside the database until it returns.

    Raises what `work` raises, and sqlalchemy.exc.SQLAlchemyError when the database fails
    (a second lost connection, any other database error: never retried)."""
    committing = False

    def attempt() -> T:
        nonlocal committing
        committing = False
        with transaction(only_reads=only_reads):
            result = work()
            committing = True  # the block ends here: transaction() commits next
        return result

    try:
        return attempt()
    except DBAPIError as exc:
        if not exc.connection_invalidated or (committing and not (idempotent or only_reads)):
            raise
        data = {"during": "commit" if committing else "work", "error": type(exc.orig).__name__}
        log.warning("database connection lost; running the unit of work again", extra={"data": data})
    return attempt()


def together(*writes: tuple[UpdateBase, dict]) -> list:
    """Execute `writes`, (statement, parameters) pairs of INSERT, UPDATE or DELETE statements
    built once (see `run`), in the current transaction, and return the rows the last one returns
    (`run`). On Postgres that is one round trip: the others run as data-modifying CTEs of the
    last (WITH w0 AS (INSERT ...) UPDATE ...), so they must not depend on each other's effects
    (they all see the same snapshot) and their parameter names must differ. Elsewhere (SQLite)
    they run one after another, in order."""
    *first, (last, parameters) = writes
    if not first or db.session.get_bind().dialect.name != "postgresql":
        for statement, values in first:
            run(statement, values)
        return run(last, parameters)
    merged = dict(parameters)
    for _, values in first:
        merged.update(values)
    return run(_with_writes(last, tuple(statement for statement, _ in first)), merged)


@cache
def _with_writes(last: UpdateBase, first: tuple[UpdateBase, ...]) -> UpdateBase:
    """`last` with `first` as its data-modifying CTEs: built (and so compiled) once per combination."""
    return last.add_cte(*(statement.cte(f"w{number}") for number, statement in enumerate(first)))


def run(statement: Executable, parameters: dict) -> list:
    """Execute a Core statement built once (a module constant, or one a cached builder returns:
    its values come in `parameters`, by bind parameter name) in the current session's
    transaction, and return the rows it returns (none for a statement without RETURNING), each
    with its columns as attributes and `_asdict()`.

    On Postgres the statement is compiled once (`_compiled`) and sent as it is on the DBAPI
    connection of the session's transaction, through psycopg alone: the SQL text and the order
    of its values are known in advance, psycopg prepares it, and the rows come back as named
    tuples, without SQLAlchemy's per-execution work (compile cache, parameter processing,
    result metadata), which costs as much CPU as psycopg's own. The engine's
    before_cursor_execute listeners still see it. A database error is raised as SQLAlchemy
    raises it (a DBAPIError subclass; `connection_invalidated`, and the pooled connection
    invalidated, when the connection was lost, as `atomic` expects). Elsewhere (SQLite, whose
    driver costs little) it is Session.execute. Pending ORM changes are not flushed first.

    Raises sqlalchemy.exc.SQLAlchemyError when the database fails, KeyError when a bind
    parameter without a value is missing from `parameters`."""
    if db.session.get_bind().dialect.name != "postgresql":
        result = db.session.execute(statement, parameters)
        return result.all() if result.returns_rows else []
    connection = db.session.connection()  # begins the session's transaction, as Session.execute does
    pooled = connection.connection
    plan = _compiled(statement, connection.dialect)
    values = [parameters[name] if required else parameters.get(name, fixed) for name, required, fixed in plan.values]
    cursor = pooled.info.get(_RAW_CURSOR)  # one per database connection (forgotten when it is invalidated)
    if cursor is None:
        cursor = pooled.info[_RAW_CURSOR] = psycopg.RawCursor(pooled.driver_connection)
    if connection.dispatch.before_cursor_execute:  # e.g. tests counting the statements sent
        connection.dispatch.before_cursor_execute(connection, cursor, plan.sql, values, None, False)
    try:
        cursor.execute(plan.query, values, prepare=True)
        return list(map(plan.row._make, cursor.fetchall())) if plan.row else []
    except psycopg.Error as exc:
        raise _translated(exc, connection, cursor, plan.sql, values) from exc


_RAW_CURSOR = "checkout_raw_cursor"  # the key, in a database connection's info, of `run`'s cursor


@dataclass(frozen=True)
class _Plan:
    """A statement as `run` sends it: its SQL ($1, $2, ... placeholders), its values in order as
    (bind parameter name, whether `parameters` must give it, the value it has otherwise), and
    the named tuple of the rows it returns (None when it returns none); `query`: the SQL as
    psycopg sends it (bytes, encoded once)."""

    sql: str
    query: bytes
    values: tuple[tuple[str, bool, object], ...]
    row: type | None


@lru_cache(maxsize=256)
def _compiled(statement: Executable, dialect) -> _Plan:
    """`statement` compiled once for the Postgres `dialect` with positional ($n) parameters.
    Constants the statement holds are bound values too, expanded IN lists included (Compiled's
    construct_expanded_state). Types that convert values on the way in or out (a bind or result
    processor, e.g. JSON parameters) are refused: psycopg's own adaptation must be enough."""
    compiled = statement.compile(dialect=_positional(type(dialect)))
    required = {name for bind, name in compiled.bind_names.items() if bind.required}
    expanded = compiled.construct_expanded_state(dict.fromkeys(required, None), escape_names=False)
    converting = [
        bind.key for bind in compiled.bind_names if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None
    ]
    converting += [
        str(column)
        for column in statement.exported_columns
        if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None
    ]
    if converting:
        raise TypeError(f"models.run cannot send values of these without SQLAlchemy: {converting}")
    fixed = expanded.parameters
    values = tuple((name, name in required, fixed[name]) for name in expanded.positiontup)
    names = statement.exported_columns.keys()
    sql = expanded.statement
    return _Plan(sql, sql.encode(), values, namedtuple("Row", names) if names else None)


@cache
def _positional(dialect_class):
    """A dialect like the engine's whose SQL takes $1, $2, ... (psycopg's RawCursor sends it as it is)."""
    return dialect_class(paramstyle="numeric_dollar")


def _translated(exc: Exception, connection, cursor, sql: str, values: list) -> DBAPIError:
    """psycopg's `exc` as SQLAlchemy raises it from Connection.execute (e.g. IntegrityError), the
    connection invalidated (and the error's connection_invalidated set) when it was lost."""
    lost = connection.dialect.is_disconnect(exc, connection.connection.driver_connection, cursor)
    if lost:
        connection.invalidate(exc)
    return DBAPIError.instance(
        sql,
        values,
        exc,
        connection.dialect.loaded_dbapi.Error,
        hide_parameters=connection.engine.hide_parameters,
        connection_invalidated=lost,
        dialect=connection.dialect,
    )


class TransactionOpen(AssertionError):
    """Monime was about to be called with a database transaction open (a bug: the transaction
    would hold a connection, and on SQLite maybe the write lock, for as long as Monime takes)."""


def assert_no_transaction() -> None:
    """Raise TransactionOpen when the current session has a transaction open. Installed as
    monime.MonimeClient.before_call when the app is TESTING (app.py), so a call to Monime
    from inside a `transaction()` block, or after a read that was not ended, fails loudly."""
    if db.session().in_transaction():
        raise TransactionOpen("Monime is being called while a database transaction is open")


def share_sqlite_between_workers(engine) -> None:
    """WAL lets readers run beside a writer; every transaction takes the write
    lock up front (BEGIN IMMEDIATE) so concurrent writers queue instead of failing
    with "database is locked" when a read transaction later tries to write. Only a
    transaction begun by read_only() begins deferred, and PRAGMA query_only keeps it
    from writing: writes are safe by default, reads opt in.

    Writers queue in the kernel, not in SQLite's busy handler: before BEGIN IMMEDIATE
    a writing transaction takes the database's WriterLock (an flock shared by every
    worker, command and migration that opens the file through this code) and gives it
    back right after its COMMIT or ROLLBACK, so each waiter wakes when the writer ahead
    of it is done. SQLite's busy handler polls in growing sleeps (up to 100 ms each),
    which let a stream of writers starve a waiter for seconds. A writer that waits
    longer than the busy timeout fails as a locked database does (503); the busy
    timeout still bounds a wait for a writer that does not take the WriterLock."""
    writers = WriterLock.of(engine.url.database)

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        reads_only = connection.get_execution_options().get(READ_ONLY, False)
        kept = connection.connection.info  # lives as long as the database connection
        if kept.get("query_only", False) != reads_only:  # a PRAGMA only when it changes
            connection.exec_driver_sql(f"PRAGMA query_only={int(reads_only)}")
            kept["query_only"] = reads_only
        if reads_only:
            connection.exec_driver_sql("BEGIN")
            return
        if writers is not None:
            writers.acquire(SQLITE_BUSY_TIMEOUT_MS / 1000)
            kept[WRITING] = writers
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _done_writing(kept)
            raise

    @event.listens_for(engine, "commit")
    def on_commit(connection):
        # Committed here, so the lock is given back after the COMMIT; SQLAlchemy's own
        # commit that follows finds no transaction and does nothing.
        if WRITING in connection.connection.info:
            try:
                connection.exec_driver_sql("COMMIT")
            finally:
                _done_writing(connection.connection.info)

    @event.listens_for(engine, "rollback")
    def on_rollback(connection):
        if WRITING in connection.connection.info:
            _end_and_release(connection.connection.dbapi_connection, connection.connection.info)

    # A connection given back to the pool, closed or invalidated inside a transaction (its
    # thread died, or its request failed) gives the lock back too.
    @event.listens_for(engine, "reset")
    def on_reset(dbapi_connection, record, _state):
        if WRITING in record.info:
            _end_and_release(dbapi_connection, record.info)

    @event.listens_for(engine, "close")
    @event.listens_for(engine, "invalidate")
    def on_close(_dbapi_connection, record, *_exception):
        _done_writing(record.info)


# The key, in a database connection's info, of the WriterLock its transaction holds.
WRITING = "checkout_writer_lock"


def _end_and_release(dbapi_connection, kept: dict) -> None:
    """Roll the connection's transaction back (if it still has one), then give its lock back."""
    try:
        if dbapi_connection is not None and dbapi_connection.in_transaction:
            dbapi_connection.rollback()
    finally:
        _done_writing(kept)


def _done_writing(kept: dict) -> None:
    writers = kept.pop(WRITING, None)
    if writers is not None:
        writers.release()


class WriterLock:
    """The turn to write to one SQLite file, for every thread of every process that opens it
    through share_sqlite_between_workers: an exclusive flock on `<database>.writer-lock`.

    An flock belongs to an open file description, so each process opens the file itself (a
    forked worker opens it anew) and its threads take turns on a threading.Lock in front of
    it: at most one thread per process holds or waits for the flock. That thread first tries
    the flock without blocking; when another process holds it, a keeper thread blocks in the
    kernel for it, so the wait can be given up after `timeout` while the kernel still wakes
    the waiter the moment the flock is free. A lock the keeper gets for a waiter that gave up
    is given back at once, or handed to the next thread of the process that asks. A process
    that dies holding the flock loses it with its file descriptors.
    """

    _instances: dict[str, "WriterLock"] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def of(cls, database: str | None) -> "WriterLock | None":
        """The process's WriterLock of the SQLite file `database` (a path, as in the URL); None
        for an in-memory database, which no other connection can share."""
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        path = os.path.abspath(database) + ".writer-lock"
        with cls._instances_lock:
            if path not in cls._instances:
                cls._instances[path] = cls(path)
            return cls._instances[path]

    def __init__(self, path: str):
        self.path = path
        self._start()
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        """A fresh state: at creation, and in a forked child, which shares its parent's open
        file (and so its flock) and has none of its threads."""
        self._turn = threading.Lock()  # held by the one thread of this process that holds or waits for the flock
        self._changed = threading.Condition(threading.Lock())
        self._file: int | None = None
        self._keeper: threading.Thread | None = None
        self._waiting = False  # the keeper is (to be) blocked in flock for this process
        self._granted = False  # the keeper holds the flock for the thread waiting for it
        self._given_up = False  # that thread stopped waiting: the keeper gives the flock back

    def acquire(self, timeout: float) -> None:
        """Wait at most `timeout` seconds for the turn to write. Raises
        sqlalchemy.exc.OperationalError ("database is locked", as SQLite's own busy
        timeout does) when it does not come in time, or the lock file cannot be opened."""
        ends = time.monotonic() + timeout
        if not self._turn.acquire(timeout=timeout):
            raise _locked()
        try:
            with self._changed:
                if not (self._waiting or self._granted):
                    try:
                        fcntl.flock(self._opened(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return
                    except BlockingIOError:  # another process writes: wait in the kernel
                        self._waiting = True
                        self._wake_keeper()
                self._given_up = False
                if not self._changed.wait_for(lambda: self._granted, ends - time.monotonic()):
                    self._given_up = True
                    raise _locked()
                self._granted = False
        except BaseException:
            self._turn.release()
            raise

    def release(self) -> None:
        """Give the turn back (the thread that took it, or whoever ended its transaction)."""
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._turn.release()

    def _opened(self) -> int:
        if self._file is None:
            try:
                self._file = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise _locked(f"the writer lock {self.path} cannot be opened: {exc.strerror}") from None
        return self._file

    def _wake_keeper(self) -> None:
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="sqlite-writer-lock", daemon=True)
            self._keeper.start()
        else:
            self._changed.notify_all()

    def _keep(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting)
            fcntl.flock(self._file, fcntl.LOCK_EX)  # blocks in the kernel until no other process holds it
            with self._changed:
                self._waiting = False
                if self._given_up:
                    self._given_up = False
                    fcntl.flock(self._file, fcntl.LOCK_UN)
                else:
                    self._granted = True
                    self._changed.notify_all()


def _locked(message: str = "database is locked"):
    """The error SQLite's busy timeout raises, which the API answers 503 (api/errors.py)."""
    return OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(message))


def insert_unless_exists(model, **values) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when this call inserted the row.

    Against a concurrent insert of the same key the database decides: one
    wins, the other sees the row once the winner commits."""
    statement = _insert_ignoring_conflicts(model.__table__, db.session.get_bind().dialect.name)
    # RETURNING, not rowcount: psycopg reports no row count for this statement
    return db.session.execute(statement, values).first() is not None


@cache
def _insert_ignoring_conflicts(table, dialect_name: str):
    """Built once per table: the values come with each execution."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
