"""A pooled database connection dropped between requests (its backend ended with
pg_terminate_backend, in this run's own database only) is recovered by running the unit of work
once more (models.atomic), instead of pinging the pool before every transaction: the webhook
loses nothing and applies nothing twice; at COMMIT, only idempotent work runs again."""

import logging

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from conftest import migrate
from models import WebhookEvent, atomic, db
from support import ORDER_TOTAL, checkout, deliver, items, signed_event


@pytest.fixture
def database_url(postgres_url):
    """Postgres only, for `app`: a connection is dropped by ending its backend."""
    migrate(postgres_url)
    return postgres_url


def drop_pooled_connections(app) -> int:
    """End, from another connection, every connection the app's pool holds idle (in this run's own
    database only: the backends are picked by pid and database); returns how many were ended."""
    with app.app_context():
        pool = db.engine.pool
        held = [db.engine.raw_connection() for _ in range(pool.checkedin())]
        pids = [connection.driver_connection.info.backend_pid for connection in held]
        for connection in held:
            connection.close()  # back to the pool, where the next request finds it dead
        own_database = make_url(str(db.engine.url)).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(own_database, autocommit=True) as other:
        return other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND datname = current_database()"
            " AND pg_terminate_backend(pid, 5000)",
            (pids,),
        ).fetchone()[0]


def lost_connections(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "database connection lost; running the unit of work again"]


def test_a_connection_dropped_between_requests_is_retried_once_and_the_webhook_loses_nothing(app, simulator, caplog):
    client = app.test_client()
    session_id = checkout(client)["sessionId"]
    delivery = signed_event("checkout_session.completed", session_id, line_items=items(ORDER_TOTAL))
    assert drop_pooled_connections(app) >= 1

    with caplog.at_level(logging.WARNING, logger="models"):
        response = deliver(client, delivery)

    assert response.status_code == 200
    assert response.get_json()["outcome"] == "applied"
    assert [record.data["during"] for record in lost_connections(caplog)] == ["work"]
    with app.app_context():
        stored = db.session.execute(select(WebhookEvent.id, WebhookEvent.outcome, WebhookEvent.attempts)).all()
    assert [tuple(row) for row in stored] == [(delivery["id"], "applied", 1)], "stored and applied once"
    assert deliver(client, delivery).get_json()["duplicate"] is True


@pytest.mark.parametrize("path", ["/healthz", "/api/orders/{order_id}"])
def test_health_and_an_order_read_recover_from_a_dropped_connection(app, simulator, caplog, path):
    client = app.test_client()
    order_id = checkout(client)["orderId"]
    assert drop_pooled_connections(app) >= 1

    with caplog.at_level(logging.WARNING, logger="models"):
        response = client.get(path.format(order_id=order_id))

    assert response.status_code == 200, response.get_json()
    assert len(lost_connections(caplog)) == 1


def test_a_connection_lost_at_commit_is_retried_only_for_idempotent_work(app, caplog):
    runs = []

    def work():
        """Write, then lose the connection before transaction() commits."""
        runs.append(1)
        connection = db.session.connection().connection.driver_connection
        db.session.execute(text("SELECT 1"))
        if len(runs) == 1:
            with psycopg.connect(connection.info.dsn, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s, 5000)", (connection.info.backend_pid,))
        return len(runs)

    with app.app_context(), caplog.at_level(logging.WARNING, logger="models"):
        with pytest.raises(DBAPIError) as lost:
            atomic(work)
        assert lost.value.connection_invalidated and runs == [1], "the outcome is unknown: not run again"
        runs.clear()
        assert atomic(work, idempotent=True) == 2
    assert [record.data["during"] for record in lost_connections(caplog)] == ["commit"]
