# The service image. `make docker-test` builds it on a local Debian base with
# --build-arg BASE=...; the default is the official slim image.
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app

# The app user owns only instance/ (the SQLite default); the code copied below
# stays root's and read-only to it. --no-log-init: with a high uid, useradd
# would otherwise grow /var/log/lastlog and faillog to a sparse giant.
RUN groupadd --gid 10001 app \
    && useradd --no-log-init --uid 10001 --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir instance \
    && chown app:app instance

# Dependencies before code, so a code change does not reinstall them.
COPY requirements.txt .
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir -r requirements.txt

# The service is the top-level modules, the api and admin packages, the migrations, the docs
# page and pyproject.toml (the version the OpenAPI document shows).
COPY pyproject.toml *.py ./
COPY api/ api/
COPY admin/ admin/
COPY migrations/ migrations/
COPY templates/ templates/

# For SQLite (DATABASE_URL=sqlite:////app/instance/monime-checkout.sqlite3, one instance
# only): a volume, so the orders outlive the container. Without DATABASE_URL the service
# refuses to start rather than write to a file a redeploy would throw away.
VOLUME ["/app/instance"]

USER 10001:10001
EXPOSE 8000

# Slim images have no curl, so the check is a line of Python. On SQLite /healthz
# may wait up to the 10 s busy timeout (models.SQLITE_BUSY_TIMEOUT_MS), so its
# request gets 11 s and the check 12 s (tests/test_sqlite_readers.py).
HEALTHCHECK --interval=15s --timeout=12s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=11)"]

# The schema is upgraded first (replicas starting together take turns: an advisory lock in
# migrations/env.py) unless MIGRATE_ON_START=0, for a release step that runs it once.
# exec: gunicorn replaces the shell as PID 1, so the SIGTERM of `docker stop`
# reaches it and it shuts down gracefully.
CMD ["sh", "-c", "case \"${MIGRATE_ON_START:-1}\" in 1) flask --app app db upgrade || exit ;; 0) ;; *) echo \"MIGRATE_ON_START must be 1 or 0\" >&2; exit 2 ;; esac; exec gunicorn -c gunicorn.conf.py wsgi:app"]
