"""The WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`.

A bad environment stops it with one line naming every problem and no traceback; under
gunicorn.conf.py that line comes from the master before any worker starts."""

from app import create_app
from config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(str(exc)) from None
