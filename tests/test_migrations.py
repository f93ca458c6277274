"""The schema is the migrations' work, and the models agree with it on each database."""

import os
import subprocess
import sys

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy.engine import make_url

from app import MIGRATIONS
from conftest import ROOT, fresh_postgres_database, make_app, service_settings
from models import CheckoutSession, Order, WebhookEvent, db, utcnow
from support import ORDER_TOTAL

# Earlier heads, each with what upgrading from it adds: ({orders columns}, {table: its columns}).
PREVIOUS_HEADS = {
    "5dd5d0ab74aa": ({"checked_at"}, {"webhook_event_variants": {"event_id", "body_sha256", "body", "received_at"}}),
    "ffbccea0e1ce": ({"monime_order_number"}, {}),
    "a7c3e91f5b20": (
        set(),
        {
            "notifications": {
                "id",
                "type",
                "order_id",
                "body",
                "status",
                "attempts",
                "created_at",
                "next_attempt_at",
                "retry_until",
                "claimed_until",
                "delivered_at",
                "last_error",
            }
        },
    ),
    "3b1f0c2a9d47": (
        set(),
        {
            "order_resolutions": {
                "id",
                "order_id",
                "action",
                "by",
                "via",
                "note",
                "previous_status",
                "previous_review_reason",
                "previous_review_event_id",
                "resolved_at",
            }
        },
    ),
}

CONCURRENT_UPGRADES = 4


def test_the_models_match_the_migrated_schema(app):
    with app.app_context(), db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert differences == []


def test_flask_db_upgrade_creates_the_schema_and_downgrade_removes_it(tmp_path):
    app = make_app(service_settings(f"sqlite:///{tmp_path}/fresh.sqlite3", "http://127.0.0.1:9"))
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert {"orders", "checkout_sessions", "webhook_events"} <= set(db.inspect(db.engine).get_table_names())
        downgrade(revision="base")
        assert set(db.inspect(db.engine).get_table_names()) == {"alembic_version"}
        upgrade()
        assert "orders" in db.inspect(db.engine).get_table_names()
        db.engine.dispose()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    app = make_app(service_settings(f"sqlite:///{tmp_path}/wal.sqlite3", "http://127.0.0.1:9"))
    with app.app_context():
        assert db.session.execute(db.text("PRAGMA journal_mode")).scalar() == "wal"
        assert db.session.execute(db.text("PRAGMA busy_timeout")).scalar() >= 5000
        db.engine.dispose()


# `flask --app app db upgrade`, held after its imports until the test releases every copy at
# once: on a shared machine, processes started one after the other would not overlap otherwise.
UPGRADE_AT_THE_SIGNAL = """
import sys
from flask.cli import cli
import app
print("ready", flush=True)
sys.stdin.readline()
cli.main(["--app", "app", "db", "upgrade"], prog_name="flask")
"""


def test_replicas_upgrading_a_fresh_postgres_database_at_once_all_succeed():
    """Replicas that start together each run `flask db upgrade`; without the advisory lock in
    migrations/env.py some failed creating a table (its row type) another had just made."""
    with fresh_postgres_database() as url:
        environment = os.environ | service_settings(url, "http://127.0.0.1:9")
        upgrades = [
            subprocess.Popen(
                [sys.executable, "-c", UPGRADE_AT_THE_SIGNAL],
                cwd=ROOT,
                env=environment,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            for _ in range(CONCURRENT_UPGRADES)
        ]
        assert [process.stdout.readline().strip() for process in upgrades] == ["ready"] * CONCURRENT_UPGRADES
        for process in upgrades:
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120)[0] for process in upgrades]

        failures = [output for process, output in zip(upgrades, outputs, strict=True) if process.returncode != 0]
        assert not failures, f"{len(failures)} of {CONCURRENT_UPGRADES} upgrades failed:\n{failures[0][-3000:]}"
        with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False)) as connection:
            versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
        assert versions == [ScriptDirectory(MIGRATIONS).get_current_head()]


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request, tmp_path):
    """A database with no schema at all, of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.sqlite3"
        return
    with fresh_postgres_database() as url:
        yield url


def columns(table: str) -> set[str]:
    return {column["name"] for column in db.inspect(db.engine).get_columns(table)}


@pytest.mark.parametrize("previous_head", PREVIOUS_HEADS)
def test_upgrading_from_a_previous_head_keeps_every_row(empty_database_url, previous_head):
    added_columns, added_tables = PREVIOUS_HEADS[previous_head]
    app = make_app(service_settings(empty_database_url, "http://127.0.0.1:9"))
    with app.app_context():
        upgrade(revision=previous_head)
        now = utcnow()
        old_order = dict(fingerprint="f", name="n", line_items=[], client_metadata={}, currency="SLE")
        old_order |= dict(amount=ORDER_TOTAL, status="pending", idempotency_key="k", created_at=now, updated_at=now)
        db.session.execute(Order.__table__.insert().values(id="ord_old", checkout_session_id="scs-old", **old_order))
        db.session.execute(
            CheckoutSession.__table__.insert().values(
                id="scs-old", order_id="ord_old", idempotency_key="k", created_at=now
            )
        )
        db.session.execute(
            WebhookEvent.__table__.insert().values(
                id="evt-old", name="x", body="{}", outcome="ignored", attempts=1, received_at=now, processed_at=now
            )
        )
        db.session.commit()

        upgrade()

        assert added_columns <= columns("orders")
        assert {table: columns(table) for table in added_tables} == added_tables
        added = [Order.__table__.c[name] for name in sorted(added_columns)]
        old = db.session.execute(db.select(Order.amount, Order.checkout_session_id, *added)).one()
        assert tuple(old) == (ORDER_TOTAL, "scs-old", *[None] * len(added))
        assert db.session.scalar(db.select(WebhookEvent.id)) == "evt-old"
        db.session.commit()

        downgrade(revision=previous_head)
        assert not added_columns & columns("orders")
        assert not set(added_tables) & set(db.inspect(db.engine).get_table_names())
        assert db.session.scalar(db.select(CheckoutSession.order_id)) == "ord_old"
        db.session.commit()
        db.engine.dispose()
