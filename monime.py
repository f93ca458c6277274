"""Monime API client: the only place that talks to Monime.

Timeouts and the retry policy live here. A create is retried on timeouts,
connection errors and 5xx with the SAME Idempotency-Key, so Monime makes at
most one session however often we ask, until a total deadline passes.
Failures come out as typed errors that the HTTP layer maps to status codes;
none of them carries the access token.
"""

import itertools
import random
import time
from urllib.parse import quote

import requests
from flask import current_app
from requests.adapters import HTTPAdapter

from metrics import MONIME_LATENCY

API_VERSION = "caph.2025-08-23"
RETRYABLE_STATUSES = {429, 500, 502, 503, 504}
FIRST_BACKOFF = 0.1  # seconds; doubles per retry, with jitter
MAX_BACKOFF = 2.0
MIN_ATTEMPT = 0.1  # seconds: an attempt with less time than this could only time out


class MonimeError(Exception):
    """Monime did not give us what we asked for."""


class MonimeRejected(MonimeError):
    """Monime answered with a 4xx: asking again will not help."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"Monime refused the request ({status} {reason}): {message}")
        self.status, self.reason, self.message = status, reason, message


class MonimeNotFound(MonimeRejected):
    pass


class MonimeUnavailable(MonimeError):
    """Monime could not be reached or kept failing (connection errors, 5xx)."""


class MonimeTimeout(MonimeUnavailable):
    """Monime did not answer in time."""


class MonimeClient:
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
    ):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.retry_deadline, self.verify_timeout = retry_deadline, verify_timeout
        self._token = access_token
        self.http = requests.Session()
        self.http.mount(self.base_url, HTTPAdapter(pool_maxsize=pool_size, max_retries=0))
        self.http.headers.update(
            {
                "Authorization": f"Bearer {access_token}",
                "Monime-Space-Id": space_id,
                "Monime-Version": API_VERSION,
                "User-Agent": "monime-checkout",
            }
        )

    def create_session(self, body: dict, idempotency_key: str) -> dict:
        """POST /v1/checkout-sessions; returns the created CheckoutSession."""
        return self._call(
            "create_session",
            "POST",
            "/v1/checkout-sessions",
            deadline=self.retry_deadline,
            json=body,
            headers={"Idempotency-Key": idempotency_key},
        )

    def get_session(self, session_id: str) -> dict:
        """GET /v1/checkout-sessions/{id}, within the short verification timeout."""
        path = f"/v1/checkout-sessions/{quote(session_id, safe='')}"
        return self._call("get_session", "GET", path, deadline=self.verify_timeout)

    def _call(self, operation: str, method: str, path: str, *, deadline: float, **kwargs) -> dict:
        """Attempt until an answer, a 4xx, or the deadline, whichever comes first."""
        give_up_at = time.monotonic() + deadline
        for attempt in itertools.count():
            remaining = max(give_up_at - time.monotonic(), 0.001)
            timeout = (min(self.connect_timeout, remaining), min(self.read_timeout, remaining))
            response, failure = self._attempt(operation, method, path, timeout, **kwargs)
            if response is not None:
                return self._result(response)
            pause = _backoff(attempt)
            if time.monotonic() + pause + MIN_ATTEMPT > give_up_at:  # no time left for a real attempt
                raise failure
            time.sleep(pause)

    def _attempt(self, operation, method, path, timeout, **kwargs) -> tuple[requests.Response | None, MonimeError]:
        """One HTTP request, timed: the response, or the failure worth retrying. A 4xx is raised."""
        started = time.perf_counter()
        response, failure = None, None
        try:
            response = self.http.request(method, self.base_url + path, timeout=timeout, **kwargs)
            result = str(response.status_code)
        except requests.Timeout:
            result, failure = "timeout", MonimeTimeout(f"Monime did not answer within {timeout[1]:.1f} s")
        except requests.RequestException as exc:
            result, failure = "unreachable", MonimeUnavailable(f"Monime could not be reached ({type(exc).__name__})")
        MONIME_LATENCY.labels(operation, result).observe(time.perf_counter() - started)
        if response is None:
            return None, failure
        if response.status_code in RETRYABLE_STATUSES:
            return None, MonimeUnavailable(f"Monime answered {response.status_code}")
        if response.status_code >= 400:
            raise self._rejection(response)
        return response, None

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


def _backoff(attempt: int) -> float:
    return min(FIRST_BACKOFF * 2**attempt, MAX_BACKOFF) * random.uniform(0.5, 1.0)


def init_app(app) -> None:
    config = app.config
    app.extensions["monime"] = MonimeClient(
        config["MONIME_API_BASE_URL"],
        config["MONIME_ACCESS_TOKEN"],
        config["MONIME_SPACE_ID"],
        connect_timeout=config["MONIME_CONNECT_TIMEOUT"],
        read_timeout=config["MONIME_READ_TIMEOUT"],
        retry_deadline=config["MONIME_RETRY_DEADLINE"],
        verify_timeout=config["MONIME_VERIFY_TIMEOUT"],
    )


def client() -> MonimeClient:
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
