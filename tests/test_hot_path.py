"""The webhook's lean path: the statements a webhook sends in its common cases (counted, so a
regression fails) and no ORM object loaded; and models.atomic, which runs a unit of work again
only when its connection was lost (tests/test_dropped_connection.py drops one)."""

import logging

import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from conftest import make_app, service_settings
from models import Notification, Order, WebhookEvent, WebhookEventVariant, atomic, db
from support import ORDER_TOTAL, checkout, deliver, items, order, signed_event

NOTIFY = {"NOTIFY_URL": "http://127.0.0.1:9/orders", "NOTIFY_SECRET": "whsec_a2V5IGZvciB0aGUgdGVzdHM="}
NOTIFY |= {"NOTIFY_RELAY": False}  # written, never delivered
# Statements per webhook besides BEGIN/COMMIT: Postgres runs each case's work in at most two
# (the event, the transition and the order's row in one; the outcome and the notification in
# the other); SQLite, with no data-modifying CTEs, statement by statement, in process.
BOUND = {"postgresql": 2, "sqlite": 4}
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA")


class Statements:
    """The SQL statements the engine sends while `counting`, besides transaction control, and the
    ORM objects loaded meanwhile."""

    def __init__(self, app):
        self.sent: list[str] = []
        self.loaded: list[str] = []
        self.counting = False
        with app.app_context():
            self.engine = db.engine
        event.listen(self.engine, "before_cursor_execute", self.on_execute)
        for model in (Order, WebhookEvent, WebhookEventVariant, Notification):
            event.listen(model, "load", self.on_load)

    def on_execute(self, _connection, _cursor, statement, _parameters, _context, _executemany):
        if self.counting and not statement.lstrip().upper().startswith(TRANSACTION_CONTROL):
            self.sent.append(statement)

    def on_load(self, target, _context):
        if self.counting:
            self.loaded.append(type(target).__name__)

    def of(self, send) -> tuple[object, list[str]]:
        """send()'s result and the statements it made the service send."""
        self.sent, self.loaded, self.counting = [], [], True
        try:
            return send(), self.sent
        finally:
            self.counting = False

    def close(self):
        event.remove(self.engine, "before_cursor_execute", self.on_execute)
        for model in (Order, WebhookEvent, WebhookEventVariant, Notification):
            event.remove(model, "load", self.on_load)


@pytest.fixture
def notifying_app(app, database_url, simulator):
    """The service, writing order notifications (the relay off: nothing is delivered)."""
    return make_app(service_settings(database_url, simulator.url), **NOTIFY)


def completion(session_id: str, **fields) -> dict:
    return signed_event("checkout_session.completed", session_id, line_items=items(ORDER_TOTAL), **fields)


def test_a_webhook_takes_at_most_two_statements_in_its_common_cases_and_loads_no_orm_object(
    notifying_app, database_url, simulator
):
    client = notifying_app.test_client()
    placed = [checkout(client) for _ in range(3)]
    paid, cancelled, expired = (body["sessionId"] for body in placed)
    first = completion(paid, orderNumber="ord-number-1")
    cases = {
        "a completion of a pending order": (first, "applied", False),
        "the same completion under another event id": (completion(paid), "unchanged", False),
        "a duplicate of an event": (first, None, True),
        "a cancellation": (signed_event("checkout_session.cancelled", cancelled), "applied", False),
        "an expiry": (signed_event("checkout_session.expired", expired), "applied", False),
        "a late expiry of the paid session": (signed_event("checkout_session.expired", paid), "unchanged", False),
    }
    dialect = make_url(database_url).get_backend_name()
    statements = Statements(notifying_app)
    try:
        for case, (delivery, outcome, duplicate) in cases.items():
            response, sent = statements.of(lambda delivery=delivery: deliver(client, delivery))
            assert response.status_code == 200, (case, response.get_json())
            assert (response.get_json()["outcome"], response.get_json()["duplicate"]) == (outcome, duplicate), case
            assert 1 <= len(sent) <= BOUND[dialect], (case, sent)
            assert statements.loaded == [], (case, statements.loaded)
    finally:
        statements.close()

    assert [order(client, body["orderId"])["status"] for body in placed] == ["completed", "cancelled", "expired"]
    with notifying_app.app_context():
        written = sorted(db.session.scalars(select(Notification.type)))
        stored = db.session.scalar(select(Order.monime_order_number).where(Order.checkout_session_id == paid))
    assert written == ["order.cancelled", "order.completed", "order.expired"], "each change notified, once"
    assert stored == "ord-number-1"


def test_any_other_database_error_is_not_retried(app, caplog):
    runs = []

    def work():
        runs.append(1)
        row = {"id": "evt-twice", "name": "x", "body": "{}", "outcome": "ignored"}
        db.session.execute(insert(WebhookEvent.__table__), [row, row])

    with app.app_context(), caplog.at_level(logging.WARNING, logger="models"):
        with pytest.raises(IntegrityError) as refused:
            atomic(work, idempotent=True)
        assert not refused.value.connection_invalidated
        assert db.session.scalar(select(WebhookEvent.id)) is None, "rolled back"
    assert runs == [1]
    assert [record for record in caplog.records if record.name == "models"] == [], "no retry"
