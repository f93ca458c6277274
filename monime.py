"""Monime API client: the only place that talks to Monime.

Timeouts and the retry policy live here. A create is retried on timeouts,
connection errors, 429, 5xx and a 409 saying its key's first request is still
in flight, with the SAME Idempotency-Key, so Monime makes at most one session
however often we ask, until a total deadline passes. Between attempts it waits
what Monime's Retry-After asks, else backs off; a Retry-After that reaches past
the deadline ends the call at once.
Failures come out as typed errors that the HTTP layer maps to status codes;
none of them carries the access token.

Every call takes one of the worker's slots for calls to Monime (Bulkhead, below): past
MONIME_MAX_IN_FLIGHT calls in flight a call is not made and MonimeBusy is raised at once, so
checkouts waiting on a slow Monime can never take the threads webhooks and health checks need.

Every call has a hard wall-clock budget (Deadline, below): connect, request,
headers and body of every attempt together. `requests`' timeouts are per
socket operation, so a peer that sends one byte just before each read timeout
would otherwise hold a call, and the thread making it, for as long as it likes.
"""

import contextlib
import email.utils
import heapq
import itertools
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import requests
from flask import current_app
from requests.adapters import HTTPAdapter
from urllib3 import connection, connectionpool, poolmanager

from metrics import MONIME_CALLS_IN_FLIGHT, MONIME_CALLS_MAX_IN_FLIGHT, MONIME_CALLS_SHED, MONIME_LATENCY

API_VERSION = "caph.2025-08-23"
RETRYABLE_STATUSES = {429, 500, 502, 503, 504}
FIRST_BACKOFF = 0.1  # seconds; doubles per retry, with jitter
MAX_BACKOFF = 2.0
MIN_ATTEMPT = 0.1  # seconds: an attempt with less time than this could only time out
# The 409 reason of a create whose Idempotency-Key's first request Monime is still making:
# asked again with the same key, as the IETF Idempotency-Key draft says to. Monime documents
# 409 idempotency_key_in_use for a key reused with another URL or body (docs.monime.io
# developer-resources/api-basics/idempotency; monime-go docs/api-contract-caph-2025-08-23.md),
# a rejection, and no reason for a request in flight: this one is the simulator's.
IDEMPOTENCY_IN_FLIGHT = "idempotency_request_in_progress"


class MonimeError(Exception):
    """Monime did not give us what we asked for."""


class MonimeRejected(MonimeError):
    """Monime answered with a 4xx: asking again will not help."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"Monime refused the request ({status} {reason}): {message}")
        self.status, self.reason, self.message = status, reason, message


class MonimeNotFound(MonimeRejected):
    """Monime answered 404: it does not know the session (or path) asked about."""


class MonimeUnavailable(MonimeError):
    """Monime could not be reached or kept failing (connection errors, 5xx)."""


class MonimeTimeout(MonimeUnavailable):
    """Monime did not answer in time."""


class MonimeBusy(MonimeError):
    """The call was not made: every one of this worker's slots for calls to Monime was taken
    (MONIME_MAX_IN_FLIGHT, see Bulkhead). Nothing was sent to Monime; asking again once a slot
    is free will be answered. Not a MonimeUnavailable: Monime may be fine, this worker is full,
    and each flow answers it in its own way (a checkout 503 monime_busy, a redirect skips its
    lookup, a webhook 503 so Monime delivers again)."""

    def __init__(self, operation: str, limit: int):
        super().__init__(f"all {limit} of this worker's slots for calls to Monime are taken ({operation} not made)")
        self.operation, self.limit = operation, limit


# --- admission: the bulkhead ------------------------------------------------------------------

RESERVED_THREADS_AT_LEAST = 2  # threads a worker keeps free of Monime calls, however few it has
RESERVED_THREADS_SHARE = 4  # ... or one in this many of its threads, when that is more


def derived_max_in_flight(threads: int) -> int:
    """The default MONIME_MAX_IN_FLIGHT of a worker with `threads` threads (gunicorn's
    --threads): every thread but a reserve of max(2, threads // 4), and at least 1.

    The reserve is what a worker keeps for the requests that never call Monime (webhooks
    that need no lookup, /healthz, /livez, GET /api/orders) while every slot is held by a
    checkout waiting on a slow Monime (up to MONIME_RETRY_DEADLINE seconds each): two
    threads at least, so a webhook and a health probe are served side by side even on a small
    worker; a quarter of a large one, as webhooks come in bursts (a sale's completions). A
    shed request holds a reserve thread only for the moment it takes to answer 503. With one
    or two threads there is no room for a reserve and one call may be in flight; run such a
    worker with more threads. Examples: 2 -> 1, 4 -> 2, 8 -> 6, 16 -> 12, 32 -> 24.

    The margin is a first choice, to be tuned from bench/run's measurements of webhook and
    /healthz latency with every slot busy (issue 11)."""
    reserve = max(RESERVED_THREADS_AT_LEAST, threads // RESERVED_THREADS_SHARE)
    return max(1, threads - reserve)


class Bulkhead:
    """Admission control for calls to Monime in one process: at most `limit` at once (None:
    no limit), never waiting for a slot. `slot(operation)` takes one for the calling thread
    or raises MonimeBusy at once; a thread that holds one already (a flow that took its slot
    before its database work, then calls Monime) takes no second one. Counted in
    monime_calls_in_flight, and what was refused in monime_calls_shed_total{operation}.

    Per process: gunicorn's post_worker_init sizes each worker's (fit_to_worker); the
    notification relay does not call Monime and takes no slot."""

    def __init__(self, limit: int | None):
        self.in_use = 0
        self._lock = threading.Lock()
        self._held = threading.local()  # .slot: True while this thread holds a slot
        self.resize(limit)

    def resize(self, limit: int | None) -> None:
        """Set the limit (None: none; shown as 0 in monime_calls_max_in_flight); slots already
        taken stay taken until given back."""
        with self._lock:
            self.limit = limit
        MONIME_CALLS_MAX_IN_FLIGHT.set(limit or 0)

    @contextlib.contextmanager
    def slot(self, operation: str) -> Iterator[None]:
        """Hold a slot for the `with` block (`operation`, e.g. "create_session", names it in
        the shed metric); raises MonimeBusy at once, having taken nothing, when all are taken."""
        if getattr(self._held, "slot", False):
            yield
            return
        with self._lock:
            admitted = self.limit is None or self.in_use < self.limit
            if admitted:
                self.in_use += 1
        if not admitted:
            MONIME_CALLS_SHED.labels(operation).inc()
            raise MonimeBusy(operation, self.limit)
        self._held.slot = True
        MONIME_CALLS_IN_FLIGHT.inc()
        try:
            yield
        finally:
            self._held.slot = False
            with self._lock:
                self.in_use -= 1
            MONIME_CALLS_IN_FLIGHT.dec()


# --- the hard deadline ----------------------------------------------------------------------

_LOCK = threading.Lock()  # guards which connection each deadline owns, and its cutting
_current = threading.local()  # .deadline: the Deadline of the call this thread is making


class Deadline:
    """A hard wall-clock budget, in seconds, for one call to Monime: every attempt, with its
    connect, request, headers and body, ends within it however slowly the bytes arrive.

    `with Deadline(seconds) as budget:` arms a timer; when it fires, the socket of the
    connection this thread is using is shut down, which ends any read or write blocked on it
    (requests' per-read timeouts cannot: each byte restarts them). The connection pools
    below hand each connection to the deadline of the thread that takes it from the pool and
    take it back when it is returned, so a late timer can never cut a connection another call
    is using; a connection that was cut is closed and never pooled again. `expired` tells the
    caller that whatever the attempt got is to be treated as a timeout. The body is read
    inside the call (no stream=True), so the cut bounds it too: checking a clock between
    chunks would not, as one read of a chunk can itself be trickled. One watchdog thread per
    process (_Watchdog) expires every deadline at its time, so a call costs a heap push, not
    a thread of its own (a timer thread per call cost ~90 us of CPU and ~140 us of wall time).

    The one wait it cannot end is a DNS lookup that hangs, which no socket is open for yet.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds
        self.expired = False
        self.connection = None  # the connection the call is using now, if any
        self._over = False

    def remaining(self) -> float:
        """Seconds left of the budget (negative once past it)."""
        return self.ends_at - time.monotonic()

    def __enter__(self) -> "Deadline":
        self._outer, _current.deadline = getattr(_current, "deadline", None), self
        _WATCHDOG.watch(self)
        return self

    def __exit__(self, *_exc) -> None:
        with _LOCK:  # a timer already firing finds the call over and cuts nothing
            self.connection, self._over = None, True
        _current.deadline = self._outer

    def _expire(self) -> None:
        with _LOCK:
            if self._over:
                return
            self.expired = True
            if self.connection is not None:
                _cut(self.connection)


class _Watchdog:
    """The one thread of a process that expires Deadlines: it sleeps until the earliest
    deadline it holds is due and expires it then, unless that call is over. Deadlines that
    ended are dropped from the heap lazily, when they reach its top, so the thread may wake
    for one that ended meanwhile (once per budget's length, off every call's path). Started
    on first use in each process (a forked gunicorn worker inherits no thread, so its
    watchdog is made anew)."""

    def __init__(self):
        self._due: list[tuple[float, int, Deadline]] = []  # a heap by ends_at (monotonic seconds)
        self._changed = threading.Condition(threading.Lock())
        self._order = itertools.count()  # ties in ends_at never compare Deadlines
        self._thread: threading.Thread | None = None
        self._wakes_at = math.inf  # when the sleeping thread wakes by itself (monotonic seconds)

    def watch(self, deadline: Deadline) -> None:
        """Expire `deadline` (Deadline._expire) at its ends_at unless it is over by then.

        The thread is woken only when it sleeps past this deadline's time. Calls with one budget
        end in the order they begin, so a run of them wakes it not at all: it was woken by every
        call made while no other was in flight, a switch of threads and of the GIL on the call's path."""
        with self._changed:
            self._drop_ended()
            heapq.heappush(self._due, (deadline.ends_at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="monime-deadlines", daemon=True)
                self._thread.start()
            elif deadline.ends_at < self._wakes_at:
                self._changed.notify()

    def _drop_ended(self) -> None:
        """Pop the deadlines at the top of the heap whose calls are over (called with the lock held)."""
        while self._due and self._due[0][2]._over:
            heapq.heappop(self._due)

    def _run(self) -> None:
        with self._changed:
            while True:
                self._drop_ended()
                now = time.monotonic()
                if self._due and self._due[0][0] <= now:
                    heapq.heappop(self._due)[2]._expire()
                    continue
                self._wakes_at = self._due[0][0] if self._due else math.inf
                self._changed.wait(None if not self._due else self._wakes_at - now)


_WATCHDOG = _Watchdog()
# A forked child has only the thread that forked: it starts a watchdog of its own on first use.
os.register_at_fork(after_in_child=_WATCHDOG.__init__)


def _cut(conn) -> None:
    """Shut the connection's socket down (both ways) so every blocked read or write on it
    returns at once; called with _LOCK held. The socket module's own shutdown, so a TLS
    socket's state, which the blocked thread is using, is left alone."""
    conn.was_cut = True
    if conn.opened is not None:
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(conn.opened, socket.SHUT_RDWR)


class _WatchedConnection:
    """A socket opened after its call's deadline has passed is cut as soon as it exists."""

    deadline: Deadline | None = None  # the call using this connection
    was_cut = False
    # The socket last opened: http.client lets go of `sock` once a response that ends the
    # connection has begun, while the response goes on reading its body from that socket.
    opened: socket.socket | None = None

    def connect(self) -> None:
        """Open the socket; cut it at once when the call's deadline has already passed."""
        super().connect()
        with _LOCK:
            self.opened = self.sock
            if self.deadline is not None and self.deadline.expired:
                _cut(self)


class _WatchedPool:
    """Lends each connection to the deadline of the calling thread; a cut one is not kept."""

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)
        deadline = getattr(_current, "deadline", None)
        with _LOCK:
            conn.deadline = deadline
            if deadline is not None:
                deadline.connection = conn
                if deadline.expired:
                    _cut(conn)
        return conn

    def _put_conn(self, conn) -> None:
        if conn is not None:
            with _LOCK:
                if conn.deadline is not None and conn.deadline.connection is conn:
                    conn.deadline.connection = None
                conn.deadline, cut = None, conn.was_cut
            if cut:
                conn.close()
                conn = None  # the pool makes a fresh connection in its place
        super()._put_conn(conn)


class _HTTPConnection(_WatchedConnection, connection.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, connection.HTTPSConnection):
    pass


class _HTTPPool(_WatchedPool, connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_WatchedPool, connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections (direct, or through an HTTP(S) proxy) a Deadline can cut."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        """The direct connections' pool manager, with watched pools."""
        super().init_poolmanager(*args, **kwargs)
        _watch(self.poolmanager)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        """A proxy's pool manager, with watched pools."""
        return _watch(super().proxy_manager_for(proxy, **proxy_kwargs))


def _watch(manager):
    """Make a urllib3 pool manager use the watched pools, unless it has its own (SOCKS)."""
    if manager.pool_classes_by_scheme == poolmanager.pool_classes_by_scheme:
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
    return manager


# --- the client -------------------------------------------------------------------------------


class MonimeClient:
    """Monime's API (version API_VERSION, paths from Monime's OpenAPI) for one space, over a
    pooled HTTP session (`pool_size` connections). Timeouts in seconds: `connect_timeout` and
    `read_timeout` per socket operation, `retry_deadline` the hard total of a create with its
    retries, `verify_timeout` that of a lookup. `before_call`, when set, runs before every
    call: in tests it is models.assert_no_transaction (app.py). `max_in_flight` caps the calls
    in flight at once (the Bulkhead; None: no cap). Errors: MonimeError's kinds."""

    before_call: Callable[[], None] | None = None

    def __init__(
        self,
        base_url: str,
        access_token: str,
        space_id: str,
        *,
        connect_timeout: float = 3,
        read_timeout: float = 10,
        retry_deadline: float = 15,
        verify_timeout: float = 3,
        pool_size: int = 32,
        max_in_flight: int | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.retry_deadline, self.verify_timeout = retry_deadline, verify_timeout
        self._token = access_token
        self.bulkhead = Bulkhead(max_in_flight)
        self.http = requests.Session()
        # The environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) is read once, here, not
        # by every call: requests' per-call reading scanned all of os.environ twice a call, and
        # would also let a ~/.netrc entry for Monime's host replace the Authorization header.
        self.http.trust_env = False
        self.http.proxies = requests.utils.get_environ_proxies(self.base_url)
        self.http.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.http.mount(self.base_url, DeadlineAdapter(pool_maxsize=pool_size, max_retries=0))
        self.http.headers.update(
            {
                "Authorization": f"Bearer {access_token}",
                "Monime-Space-Id": space_id,
                "Monime-Version": API_VERSION,
                "User-Agent": "monime-checkout",
            }
        )

    def slot(self, operation: str) -> contextlib.AbstractContextManager[None]:
        """A slot for calls to Monime, held for a `with` block: taken by a flow before its database
        work so that a call it cannot make stores nothing (Bulkhead.slot); MonimeBusy at once when
        every slot is taken. The calls made inside it use it."""
        return self.bulkhead.slot(operation)

    def create_session(self, body: dict, idempotency_key: str) -> dict:
        """POST /v1/checkout-sessions; returns the created CheckoutSession. Retried with the
        same key until the retry deadline; MonimeTimeout if that passes first."""
        return self._call(
            "create_session",
            "POST",
            "/v1/checkout-sessions",
            deadline=self.retry_deadline,
            json=body,
            headers={"Idempotency-Key": idempotency_key},
        )

    def get_session(self, session_id: str) -> dict:
        """GET /v1/checkout-sessions/{id}, within the short verification timeout (retried
        within it too)."""
        path = f"/v1/checkout-sessions/{quote(session_id, safe='')}"
        return self._call("get_session", "GET", path, deadline=self.verify_timeout)

    def _call(self, operation: str, method: str, path: str, *, deadline: float, **kwargs) -> dict:
        """Attempt until an answer, a 4xx, or the deadline (seconds, a hard total across attempts),
        whichever comes first, waiting between attempts what Monime's Retry-After asks (else
        backing off). Raises MonimeRejected (4xx), MonimeTimeout or MonimeUnavailable, the
        last at once when Monime asks for a wait that would end past the deadline; MonimeBusy
        at once, nothing sent, when the thread holds no slot and none is free."""
        if self.before_call is not None:
            self.before_call()
        with self.slot(operation), Deadline(deadline) as budget:
            for attempt in itertools.count():
                remaining = max(budget.remaining(), 0.001)
                timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
                response, failure, asked = self._attempt(operation, method, path, timeout, budget, **kwargs)
                if response is not None:
                    return self._result(response)
                pause = asked or _backoff(attempt)
                if budget.expired or budget.remaining() < pause + MIN_ATTEMPT:  # no time for a real attempt
                    if asked:
                        raise MonimeUnavailable(f"{failure} and asked for {asked:.1f} s, past the deadline")
                    raise failure
                time.sleep(pause)

    def _attempt(
        self, operation, method, path, timeout, budget: Deadline, **kwargs
    ) -> tuple[requests.Response | None, MonimeError | None, float | None]:
        """One HTTP request, timed: (the response, None, None), or (None, the failure worth
        retrying, the seconds Monime's Retry-After asks to wait or None). A 4xx other than a
        429 or a 409 for a request still in flight is raised. Whatever an attempt cut by the
        deadline got, it is a MonimeTimeout."""
        started = time.perf_counter()
        response, failure = None, None
        try:
            response = self.http.request(method, self.base_url + path, timeout=timeout, **kwargs)
            result = str(response.status_code)
        except requests.Timeout:
            result, failure = "timeout", MonimeTimeout(f"Monime did not answer within {timeout[1]:.1f} s")
        except requests.RequestException as exc:
            result, failure = "unreachable", MonimeUnavailable(f"Monime could not be reached ({type(exc).__name__})")
        if budget.expired:
            response, result = None, "timeout"
            failure = MonimeTimeout(f"Monime did not answer within the {budget.seconds:.1f} s budget")
        MONIME_LATENCY.labels(operation, result).observe(time.perf_counter() - started)
        if response is None:
            return None, failure, None
        if response.status_code in RETRYABLE_STATUSES:
            limit = response.headers.get("Monime-Rate-Limit")
            named = f" (rate limit {self._redact(limit)[:100]})" if limit else ""
            return None, MonimeUnavailable(f"Monime answered {response.status_code}{named}"), retry_after(response)
        if response.status_code >= 400:
            rejection = self._rejection(response)
            if (rejection.status, rejection.reason) != (409, IDEMPOTENCY_IN_FLIGHT):
                raise rejection
            failure = MonimeUnavailable("Monime was still making the answer to this Idempotency-Key (409)")
            return None, failure, retry_after(response)
        return response, None, None

    def _result(self, response: requests.Response) -> dict:
        try:
            result = response.json()["result"]
        except (ValueError, KeyError, TypeError):
            raise MonimeUnavailable("Monime answered with an unreadable body") from None
        if not isinstance(result, dict):
            raise MonimeUnavailable("Monime answered without a result")
        return result

    def _rejection(self, response: requests.Response) -> MonimeRejected:
        try:
            error = response.json().get("error") or {}
            reason, message = str(error.get("reason") or "unknown"), str(error.get("message") or "no message")
        except (ValueError, AttributeError):
            reason, message = "unknown", "no message"
        kind = MonimeNotFound if response.status_code == 404 else MonimeRejected
        return kind(response.status_code, self._redact(reason)[:100], self._redact(message)[:300])

    def _redact(self, text: str) -> str:
        """Whatever Monime echoes back, the token never leaves this module."""
        return text.replace(self._token, "[redacted]") if self._token else text


def retry_after(response: requests.Response) -> float | None:
    """The seconds Monime's Retry-After asks us to wait: whole seconds or an HTTP date (RFC 9110
    section 10.2.3), read as both Monime SDKs read it (monimejs src/http-client.js
    #parse_retry_after, monime-go transport.go parseRetryAfter). None when there is none,
    it cannot be read, or it asks for no wait (a date past): the caller then backs off."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when.replace(tzinfo=when.tzinfo or UTC) - datetime.now(UTC)).total_seconds()
    return seconds if seconds > 0 else None


def _backoff(attempt: int) -> float:
    return min(FIRST_BACKOFF * 2**attempt, MAX_BACKOFF) * random.uniform(0.5, 1.0)


def init_app(app) -> None:
    """Make the app's MonimeClient from the MONIME_* settings (timeouts in seconds)."""
    config = app.config
    app.extensions["monime"] = MonimeClient(
        config["MONIME_API_BASE_URL"],
        config["MONIME_ACCESS_TOKEN"],
        config["MONIME_SPACE_ID"],
        connect_timeout=config["MONIME_CONNECT_TIMEOUT"],
        read_timeout=config["MONIME_READ_TIMEOUT"],
        retry_deadline=config["MONIME_RETRY_DEADLINE"],
        verify_timeout=config["MONIME_VERIFY_TIMEOUT"],
        max_in_flight=config["MONIME_MAX_IN_FLIGHT"],
    )


def fit_to_worker(app, threads: int) -> int:
    """Size the app's Bulkhead for a server worker with `threads` threads (gunicorn.conf.py's
    post_worker_init): MONIME_MAX_IN_FLIGHT when set, else derived_max_in_flight(threads).
    Warns when the cap leaves the worker no thread free of Monime calls. Returns the cap.

    Outside gunicorn nothing calls this, and the cap is MONIME_MAX_IN_FLIGHT or none: the
    `flask` commands (reconcile makes one call at a time and serves nobody), the development
    server (a thread per request) and the tests in process."""
    limit = app.config["MONIME_MAX_IN_FLIGHT"] or derived_max_in_flight(threads)
    app.extensions["monime"].bulkhead.resize(limit)
    if limit >= threads:
        app.logger.warning(
            "MONIME_MAX_IN_FLIGHT=%d leaves none of the worker's %d threads free of Monime calls: "
            "slow checkouts can starve webhooks and health checks",
            limit,
            threads,
        )
    return limit


def client() -> MonimeClient:
    """The app's MonimeClient (needs an app context)."""
    return current_app.extensions["monime"]


def session_amount(session: dict) -> tuple[str, int] | None:
    """(currency, total in minor units) of a CheckoutSession's line items;
    None when it lists none. Raises ValueError when they cannot be read or mix
    currencies, as no amount can then be confirmed."""
    try:
        items = (session.get("lineItems") or {}).get("data") or []
        if not items:
            return None
        currencies, total = set(), 0
        for item in items:
            value, quantity = item["price"]["value"], item.get("quantity", 1)
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in (value, quantity)):
                raise ValueError("a line item's price or quantity is not an integer")
            currencies.add(item["price"]["currency"])
            total += value * quantity
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError("the line items cannot be read") from exc
    if len(currencies) != 1:
        raise ValueError("the line items mix currencies")
    return currencies.pop(), total
