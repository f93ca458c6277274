"""What every request passes through: a request id, the log context, rate
limits, body limits and security headers."""

import logging
import re
import uuid

import limits
from flask import Flask, current_app, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import logs

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The API answers JSON and never wants to be framed, sniffed or cached.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}
# The docs page needs its own inline styles.
DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"

# Keyed by client address (behind a proxy, set PROXY_HOPS so it is the client's).
limiter = Limiter(key_func=get_remote_address)


def checkout_limit() -> str:
    return current_app.config["RATELIMIT_CHECKOUT"]


def within_redirect_lookup_limit() -> bool:
    """Count one Monime lookup for a redirect against the client's
    RATELIMIT_REDIRECT_LOOKUPS, in the limiter's storage (so per worker with
    memory://, shared with Redis); False once past it. When the storage
    cannot be reached the lookup is allowed, as RATELIMIT_SWALLOW_ERRORS lets
    checkouts through: the per-order interval still bounds the lookups."""
    rates = limits.parse_many(current_app.config["RATELIMIT_REDIRECT_LOOKUPS"])
    key = (current_app.config["RATELIMIT_KEY_PREFIX"], "redirect-lookups", get_remote_address())
    try:
        return all([limiter.limiter.hit(rate, *key) for rate in rates])  # every window counts the lookup
    except Exception as exc:  # whatever the storage's client raises (Redis down, a timeout)
        log.warning("rate-limit storage failed; redirect lookup allowed", extra={"data": {"error": str(exc)}})
        return True


def init_app(app: Flask) -> None:
    limiter.init_app(app)

    @app.before_request
    def identify_request():
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        logs.start(requestId=g.request_id)

    @app.after_request
    def label_and_harden(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.path == "/docs":
            response.headers["Content-Security-Policy"] = DOCS_CSP
        if request.is_secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response
