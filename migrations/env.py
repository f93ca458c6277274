import logging
from contextlib import contextmanager, suppress
from logging.config import fileConfig

from flask import current_app
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from alembic import context

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Use alembic.ini's logging only when the application has not configured its own.
if not logging.getLogger().handlers:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")


# Replicas that start together all run `flask db upgrade`: on Postgres each takes this
# session-level advisory lock first, so one migrates and the others then find the schema
# at head. The key is any fixed 64-bit number; this one spells "monime".
MIGRATION_LOCK_KEY = 0x6D6F6E696D65
# Every wait for a lock has a limit. A replica waits at most this long for another's upgrade,
# then fails loudly (and is restarted) instead of waiting for ever behind a hung one ...
LOCK_TIMEOUT = "5min"
# ... and a migration waits at most this long for a table's lock: while an ALTER TABLE waits,
# the service's own queries on that table queue behind it, so it gives up early and fails the
# upgrade (run it again when the long transaction holding the table has ended).
DDL_LOCK_TIMEOUT = "10s"


@contextmanager
def migration_lock(connection):
    """Hold Postgres' advisory lock MIGRATION_LOCK_KEY on `connection` (a SQLAlchemy
    Connection) for the block, waiting at most LOCK_TIMEOUT while another upgrade holds it
    (then the upgrade fails with LockNotAvailable); the migrations' own lock waits are then
    bounded by DDL_LOCK_TIMEOUT. Elsewhere
    (SQLite: one instance, see README) nothing is taken."""
    if connection.dialect.name != "postgresql":
        yield
        return
    connection.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.execute(text(f"SET lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
    connection.commit()  # the lock outlives this transaction; the migrations run in their own
    try:
        yield
    finally:
        # A failed migration leaves its transaction to end first. A connection that died
        # has lost the lock with it: nothing to release, and the migration's error goes on.
        with suppress(DBAPIError):
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()


def get_engine():
    return current_app.extensions["migrate"].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace("%", "%%")
    except AttributeError:
        return str(get_engine().url).replace("%", "%%")


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option("sqlalchemy.url", get_engine_url())
target_db = current_app.extensions["migrate"].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, "metadatas"):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=get_metadata(), literal_binds=True)

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = current_app.extensions["migrate"].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    connectable = get_engine()

    with connectable.connect() as connection, migration_lock(connection):
        context.configure(connection=connection, target_metadata=get_metadata(), **conf_args)

        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
