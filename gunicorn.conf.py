"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py wsgi:app`.

Every setting can be overridden from the environment (GUNICORN_*), so the
same file serves the container, the tests and the benchmarks.
"""

import os

# gthread: each worker serves several requests at once in threads, so a
# checkout waiting seconds on Monime does not block webhooks or health checks.
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")

# A checkout may spend up to MONIME_RETRY_DEADLINE (15 s) retrying Monime;
# the worker timeout stays well above it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))

# Only the proxy in front of us may say which scheme the client used.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# One JSON line per request on stdout; errors on stderr.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
access_log_format = (
    '{"time":"%(t)s","pid":"%(p)s","method":"%(m)s","path":"%(U)s","status":%(s)s,'
    '"bytes":"%(B)s","duration_ms":%(M)s,"remote":"%(h)s"}'
)

# The runtime control socket is not used; it would need a writable home directory.
control_socket_disable = True
