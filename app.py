"""Application factory: configuration, extensions, blueprints, CLI. Nothing else."""

import os

import click
from flask import Flask
from flask_cors import CORS
from flask_migrate import Migrate
from werkzeug.middleware.proxy_fix import ProxyFix

import admin
import api
import catalog
import cli
import logs
import models
import monime
import notifications
from config import MAX_BODY_BYTES, ConfigError, check, from_environment, warn

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
migrate = Migrate(directory=MIGRATIONS, render_as_batch=True)


def create_app(config: dict | None = None) -> Flask:
    """The service: settings from the environment (config.from_environment), then `config` on top
    (tests), checked by config.check (relaxed when TESTING or debug); the database (SQLite under
    instance/ when DATABASE_URL is unset, in tests and development only), the Monime client, the
    catalog, the blueprints, /admin, CORS, the CLI and the notification relay.

    Raises ConfigError naming every problem with the settings (config.check, CATALOG_FILE);
    under the `flask` command that is its one line, `Error: Invalid configuration: …`, and
    exit status 1, never a traceback (gunicorn's one line comes from gunicorn.conf.py)."""
    try:
        return _create_app(config)
    except ConfigError as exc:
        if click.get_current_context(silent=True) is None:  # gunicorn (wsgi.py), tests
            raise
        raise click.ClickException(str(exc)) from None


def _create_app(config: dict | None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(from_environment(), MAX_CONTENT_LENGTH=MAX_BODY_BYTES)
    app.config.update(config or {})
    check(app.config, relaxed=app.testing or app.debug)
    if not app.config["SQLALCHEMY_DATABASE_URI"]:  # development and tests only: `check` requires it elsewhere
        os.makedirs(app.instance_path, exist_ok=True)
        app.config["SQLALCHEMY_DATABASE_URI"] = (
            f"sqlite:///{os.path.join(app.instance_path, 'monime-checkout.sqlite3')}"
        )
    # No pre-ping (a round trip per transaction): a flow recovers from a dropped connection by
    # running its unit of work again (models.atomic). Pool + overflow as large as a worker's
    # threads (DATABASE_POOL_SIZE, DATABASE_MAX_OVERFLOW); hide_parameters: an error in the log
    # never shows an order's or an event's content
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS",
        {
            "pool_size": app.config["DATABASE_POOL_SIZE"],
            "max_overflow": app.config["DATABASE_MAX_OVERFLOW"],
            "hide_parameters": True,
        },
    )

    logs.configure(app.config["LOG_LEVEL"])
    warn(app.config)
    models.init_app(app)
    migrate.init_app(app, models.db)
    monime.init_app(app)
    if app.testing:  # the rule every flow keeps, checked: Monime is never asked inside a transaction
        app.extensions["monime"].before_call = models.assert_no_transaction
    catalog.init_app(app)
    api.init_app(app)
    admin.init_app(app)  # /admin, only when ADMIN_TOKEN is set
    if app.config["CORS_ORIGINS"]:  # a frontend on another origin calls checkout and polls orders
        origins = app.config["CORS_ORIGINS"]
        # Patterns match from the start of the path; never the feed (/api/orders) nor
        # /api/orders/<id>/resolve, which take an API key a browser must not hold.
        browser = {"origins": origins}
        CORS(app, resources={"/api/checkout": browser, r"/api/orders/[^/]+\Z": browser})
    cli.init_app(app)
    notifications.init_app(app)
    if app.config["PROXY_HOPS"]:  # the client's address and scheme, as the trusted proxies report them
        hops = app.config["PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0)
    return app
