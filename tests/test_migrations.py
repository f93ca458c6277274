"""The schema is the migrations' work, and the models agree with it on each database."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from conftest import make_app, service_settings
from models import db


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
