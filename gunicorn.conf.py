"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py wsgi:app`.

Every setting can be overridden from the environment (GUNICORN_*), so the
same file serves the container, the tests and the benchmarks.
"""

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime

from gunicorn.glogging import Logger

# gthread: each worker serves several requests at once in threads, so a
# checkout waiting seconds on Monime does not block webhooks or health checks.
# Two workers for two cores (another costs ~85 MiB and 15 database connections
# and bought nothing in bench/run); 32 threads each, as a checkout holds its
# thread for as long as Monime takes: with 8, sixteen slow checkouts made
# webhooks queue (bench/RESULTS.md). 32 is also the Monime client's pool size.
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")

# A checkout may spend up to MONIME_RETRY_DEADLINE (15 s) retrying Monime;
# the worker timeout stays well above it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))

# Only the proxy in front of us may say which scheme the client used.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# One JSON line per request on stdout (the access log); the app's own lines on stderr.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# The runtime control socket is not used; it would need a writable home directory.
control_socket_disable = True

# Prometheus: each worker writes its samples here and /metrics adds them up.
# Set before any worker imports prometheus_client; emptied at every start.
OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="monime-checkout-metrics-")
METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server):
    shutil.rmtree(METRICS_DIR, ignore_errors=True)
    os.makedirs(METRICS_DIR, exist_ok=True)


def on_exit(server):
    if OWN_METRICS_DIR:
        shutil.rmtree(METRICS_DIR, ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class JsonAccessLogger(Logger):
    """The access log as JSON objects, escaped properly, with the request id the app echoes."""

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        headers = {name.lower(): value for name, value in resp.headers}
        entry = {
            "type": "access",
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "pid": os.getpid(),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(str(resp.status).split()[0]),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 1),
            "remote": environ.get("REMOTE_ADDR"),
            "requestId": headers.get("x-request-id"),
        }
        self.access_log.info(json.dumps(entry))


logger_class = JsonAccessLogger
