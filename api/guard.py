"""What every request passes through: a request id, the log context, rate
limits, body limits and security headers."""

import logging
import re
import uuid

import limits
from flask import Flask, current_app, g, request
from flask import Request as FlaskRequest
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

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
# /docs runs Swagger UI from this origin: its script and styles (which it also sets inline on
# elements), its SVG icons as data: images, and a fetch of openapi.json. Nothing from elsewhere.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

# Keyed by client address (behind a proxy, set PROXY_HOPS so it is the client's).
limiter = Limiter(key_func=get_remote_address)


def checkout_limit() -> str:
    """RATELIMIT_CHECKOUT, the per-client limit of POST /api/checkout (Flask-Limiter syntax)."""
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


def keep_own_retry_after(response):
    """Put back the Retry-After an error answer chose (api.errors.error_response records it in
    g.retry_after). With RATELIMIT_HEADERS_ENABLED, Flask-Limiter (4.1, its __inject_headers)
    sets Retry-After on every answer of a rate-limited route to when the client's window ends:
    a checkout's 503 monime_busy (1 s) would tell the frontend to wait up to a minute. Runs
    after the limiter's hook, as it is registered before it."""
    own = g.get("retry_after")
    if own is not None:
        response.headers["Retry-After"] = own
    return response


class Request(FlaskRequest):
    """Flask's request, whose body is all of what the client sent or a 413.

    A body without Content-Length (Transfer-Encoding: chunked) is read by Werkzeug 3.1
    (`LimitedStream.readall`) only up to `max_content_length`, and what was read comes back
    as if it were everything: a webhook cut at 1 MiB then fails its signature (401) and a
    checkout fails as bad JSON. One more byte from the client tells them apart.

    A chunked body gunicorn cannot take apart (a chunk size that is not hex) raises gunicorn's
    ParseException from the read, and a body the client stopped sending (cut by gunicorn.conf.py's
    body deadline) an OSError: either is a 400, not a 500, also when it happens on the extra byte.
    """

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False):
        """As Flask's; raises RequestEntityTooLarge (413) when the body is over `max_content_length`
        bytes, BadRequest (400) when its chunked framing is broken or it ends before it is whole."""
        limit = self.max_content_length
        try:
            data = super().get_data(cache=cache, as_text=False, parse_form_data=parse_form_data)
            at_limit = self.content_length is None and limit is not None and len(data) >= limit
            over = at_limit and self.input_stream.read(1)
        except (ParseException, OSError) as exc:  # broken framing, or the body cut short (gunicorn's NoMoreData)
            raise BadRequest(f"The request body cannot be read: {exc}.") from None
        if over:
            raise RequestEntityTooLarge()
        return data.decode(errors="replace") if as_text else data


def init_app(app: Flask, before_limits: tuple = ()) -> None:
    """Request ids (X-Request-ID), rate limits, body limits and security headers for every
    request. `before_limits`: before_request functions that run ahead of the rate limiter
    (after the request id), such as the checkout's shedding when Monime's slots are taken."""
    app.request_class = Request
    app.after_request(keep_own_retry_after)  # before the limiter's: Flask runs them last first

    @app.before_request
    def identify_request():
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        logs.start(requestId=g.request_id)

    for hook in before_limits:
        app.before_request(hook)
    limiter.init_app(app)

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
