"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py wsgi:app`.

Every setting can be overridden from the environment (GUNICORN_*), so the
same file serves the container, the tests and the benchmarks.
"""

import json
import math
import os
import shutil
import tempfile
import time

from gunicorn.glogging import Logger

import logs

# gthread: each worker serves several requests at once in threads, so a
# checkout waiting on Monime does not block webhooks or health checks; past
# MONIME_MAX_IN_FLIGHT calls in flight (by default all threads but a reserve,
# monime.derived_max_in_flight: 8 threads -> 6) a checkout is shed with 503, so
# the reserve is always there for them. Chosen by bench/run (bench/RESULTS.md,
# 2 cores, Postgres, Monime 300 ms slow):
# - 2 workers, one per core: a process's threads share one GIL.
# - 8 threads each: webhook ingest as high as at 4 threads (~1,000/s) and 37
#   checkouts/s served at 300 ms (4 threads: 12.6/s, and a worker that gets 3 of
#   4 shoppers at once sheds one), with webhook and /healthz p99 about 2x their
#   unloaded value under 200 slow checkout clients. 16 threads serve 73/s but
#   p99 went to ~3x; 32 threads (the old default) fought over the GIL: 681
#   webhooks/s, and 50x p99 before the bulkhead.
# Each thread, and the notification relay, holds at most one database
# connection: DATABASE_POOL_SIZE (10) covers them, so none is opened per request.
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")

# Under gthread, `timeout` is a heartbeat, not a request limit: the arbiter restarts a
# worker whose main thread has not reported for this many seconds, however long a request
# in one of its threads takes. Requests are bounded elsewhere: Monime calls by
# MONIME_RETRY_DEADLINE (15 s) and MONIME_VERIFY_TIMEOUT, slow clients by client_timeout.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))


# Slow clients. The gthread worker gives a connection a thread only once its
# first bytes arrive, but then the thread reads the request as slowly as the
# client sends it: seventy clients trickling webhook bodies held every thread
# and /healthz hung. gunicorn has no setting for this, so pre_request gives each
# request's body GUNICORN_CLIENT_TIMEOUT seconds from the end of its headers:
# past that the body ends where it stopped, the app refuses it with a 4xx (a
# cut webhook fails its signature, a cut chunked body is a 400) and the
# connection is closed. It bounds the body, not the headers (gunicorn offers no
# hook before it parses them) nor a slow reader of the response, and a slow
# client still holds its thread until then: a buffering reverse proxy in front
# (deploy/nginx.conf) is the real defence, this the backstop when a request
# reaches gunicorn directly. 10 s carries the largest body (1 MiB) at 0.8 Mbit/s.
def positive_seconds(name: str, default: str) -> float:
    """The environment variable `name` as a finite number of seconds above 0;
    SystemExit naming it otherwise (gunicorn then stops with that one line)."""
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SystemExit(f"Invalid configuration: {name} must be a positive number of seconds")
    return value


client_timeout = positive_seconds("GUNICORN_CLIENT_TIMEOUT", "10")


def check_service_settings() -> None:
    """The service's settings, checked here in the master before gunicorn logs a line or
    starts a worker: a bad environment stops gunicorn with the one line naming every problem
    (config.check, as create_app() runs it outside debug and tests, and CATALOG_FILE), exit
    status 1, instead of every worker failing with a traceback."""
    import catalog
    from config import ConfigError, check, from_environment

    settings = from_environment()
    try:
        check(settings, relaxed=False)
        if settings["CATALOG_FILE"]:
            catalog.load(settings["CATALOG_FILE"])
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


check_service_settings()


class BodyDeadline:
    """The socket gunicorn reads a request's body from, with a deadline
    (time.monotonic() seconds): no read waits past it, and once it has passed a
    read returns only what has already arrived, or b"" (end of stream) when
    nothing has, and marks the request to close its connection. `deadline =
    None` reads without one (the next request's headers)."""

    def __init__(self, sock, req):
        self.sock, self.req, self.deadline = sock, req, None

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes, as socket.recv, waiting at most until the deadline
        (past it, a non-blocking read: a body that arrived in time is never lost)."""
        if self.deadline is None:
            return self.sock.recv(size)
        self.sock.settimeout(max(self.deadline - time.monotonic(), 0.0))
        try:
            return self.sock.recv(size)
        except (TimeoutError, BlockingIOError):  # waited until the deadline / nothing waiting past it
            return self._cut()
        finally:
            self.sock.settimeout(None)  # writing the response is not bounded here

    def _cut(self) -> bytes:
        self.req.must_close = True
        return b""

    def __getattr__(self, name):  # settimeout, gettimeout… for gunicorn's own body drain
        return getattr(self.sock, name)


def pre_request(worker, req):
    """Start the request's body deadline (see client_timeout)."""
    unreader = getattr(req, "unreader", None)  # the connection's, shared by its keep-alive requests
    if not hasattr(unreader, "sock"):  # not read from a socket (HTTP/2 is not enabled here)
        return
    if not isinstance(unreader.sock, BodyDeadline):
        unreader.sock = BodyDeadline(unreader.sock, req)
    unreader.sock.req, unreader.sock.deadline = req, time.monotonic() + client_timeout


def post_request(worker, req, environ, resp):
    """The next request's headers are read without the deadline."""
    if isinstance(getattr(getattr(req, "unreader", None), "sock", None), BodyDeadline):
        req.unreader.sock.deadline = None


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


def post_worker_init(worker):
    """Each worker caps its calls to Monime by its own thread count (monime.fit_to_worker:
    MONIME_MAX_IN_FLIGHT, else monime.derived_max_in_flight(threads)), so checkouts waiting on
    a slow Monime never take the threads webhooks and health checks need, whatever --threads
    says; and delivers order notifications in a thread of its own (notifications.py), which
    calls no Monime and takes no slot. Both here, after the fork, as the worker starts."""
    import monime
    import notifications

    if "monime" in getattr(worker.wsgi, "extensions", {}):  # this service's app (wsgi:app), not bench/bare.py
        monime.fit_to_worker(worker.wsgi, worker.cfg.threads)
        notifications.start_relay(worker.wsgi)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class JsonLogger(Logger):
    """Every line gunicorn writes as one JSON object: its own (starting, booting a worker, a
    worker's traceback) with logs.JsonFormatter, as the service's are, on stderr; the access
    log, escaped properly, with the request id the app echoes, on stdout."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(logs.JsonFormatter())

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        headers = {name.lower(): value for name, value in resp.headers}
        entry = {
            "type": "access",
            "time": logs.timestamp(time.time()),
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


logger_class = JsonLogger
