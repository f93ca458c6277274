"""Creating a checkout, and the shopper's way back from Monime's hosted page."""

import logging
from contextlib import ExitStack
from urllib.parse import urlencode

from flask import Blueprint, current_app, g, redirect, request

import checkout
import logs
import monime
import orders
import sync
from api.bodies import load_json_request
from api.errors import ApiError
from api.guard import checkout_limit, limiter, within_redirect_lookup_limit
from catalog import checkout_schema
from metrics import CHECKOUTS
from models import atomic

MAX_CHECKOUT_BYTES = 64 * 1024  # the largest valid order is about 30 KiB
# Retry-After of a checkout shed by the bulkhead (503 monime_busy), in whole seconds: a slot is
# held for as long as Monime takes to answer one checkout, usually well under a second. The
# frontend waits this long, spread by a random factor (e.g. 0.5-1.5x) so that the shoppers
# refused together do not come back together, and submits the same order again (README).
BUSY_RETRY_AFTER = 1

log = logging.getLogger(__name__)
bp = Blueprint("checkout", __name__)


@bp.post("/api/checkout")
@limiter.limit(checkout_limit)
def create_checkout():
    """Create a checkout for the order in the body (contract: POST /api/checkout): 201 with
    {orderId, sessionId, redirectUrl} when a Monime session was made, 200 with the order's
    session when it had one. Errors (JSON): 4xx for a bad body (load_checkout_request), 409
    order_conflict / order_completed, 502 monime_unavailable / monime_rejected, 503
    monime_busy with Retry-After (every slot for calls to Monime taken: nothing stored), 504
    monime_timeout. Each outcome is counted in checkouts_total."""
    try:
        result = start_checkout()
    except ApiError as exc:
        CHECKOUTS.labels(exc.code).inc()
        raise
    CHECKOUTS.labels("created" if result.created else "replayed").inc()
    body = {"orderId": result.order_id, "sessionId": result.session_id, "redirectUrl": result.redirect_url}
    return body, 201 if result.created else 200


def shed_when_monime_busy() -> None:
    """Before anything else of a `POST /api/checkout` (the rate limit, the body, the database):
    take one of this worker's slots for calls to Monime, held until the request ends
    (`give_back_the_slot`); when every slot is taken, answer 503 monime_busy at once, counted
    as the view counts it. A refusal then costs about what bare Flask costs a request, which is
    what keeps a crowd of shoppers retrying during a slow Monime from taking the threads kept
    free for webhooks and health checks (bench/run, slow Monime with 200 clients). A bad body
    gets its 4xx once a slot is free; checkout.start uses the slot taken here. Registered by
    api.guard.init_app ahead of the rate limiter, so a shed request does not count against the
    client's RATELIMIT_CHECKOUT either."""
    if request.endpoint != "checkout.create_checkout":
        return
    held = ExitStack()
    try:
        held.enter_context(monime.client().slot("create_session"))
    except monime.MonimeBusy:
        CHECKOUTS.labels("monime_busy").inc()
        raise monime_busy() from None
    g.monime_slot = held


@bp.teardown_request
def give_back_the_slot(_error=None) -> None:
    """Give back the slot `shed_when_monime_busy` took for the request, however it ended."""
    held = g.pop("monime_slot", None)
    if held is not None:
        held.close()


def monime_busy() -> ApiError:
    """The 503 monime_busy of a checkout shed by the bulkhead, with our Retry-After (BUSY_RETRY_AFTER)."""
    return ApiError(
        503,
        "monime_busy",
        "Too many payments are being started at this moment; nothing was stored. "
        "Submit the same order again after Retry-After seconds.",
        {"Retry-After": str(BUSY_RETRY_AFTER)},
    )


def start_checkout() -> checkout.Checkout:
    """checkout.start for the request's order, its errors raised as ApiError. Its slot for the
    call to Monime was taken at the door (`shed_when_monime_busy`), so checkout.start reuses it;
    a MonimeBusy from it is answered as the door answers."""
    draft = load_checkout_request()
    logs.bind(orderId=draft["orderId"])
    try:
        return checkout.start(draft)
    except monime.MonimeBusy:
        raise monime_busy() from None
    except checkout.OrderConflict as exc:
        raise ApiError(409, "order_conflict", str(exc)) from None
    except checkout.OrderAlreadyPaid as exc:
        raise ApiError(409, "order_completed", str(exc)) from None
    except monime.MonimeTimeout as exc:
        raise ApiError(504, "monime_timeout", f"{exc}. Submit the same order again to retry.") from None
    except monime.MonimeUnavailable as exc:
        raise ApiError(502, "monime_unavailable", f"{exc}. Submit the same order again to retry.") from None
    except monime.MonimeRejected as exc:
        log.error("Monime refused a checkout session", extra={"data": {"error": str(exc)}})
        raise ApiError(
            502,
            "monime_rejected",
            "Monime refused the checkout session.",
            monimeStatus=exc.status,
            monimeReason=exc.reason,
            monimeMessage=exc.message,
        ) from None


def load_checkout_request() -> dict:
    """The request's order, loaded by the checkout schema (amounts in minor units). Raises ApiError:
    415 not JSON, 413 over MAX_CHECKOUT_BYTES (chunked too), 400 not a JSON object within
    schemas.load_json's limits (invalid_json) or not a valid order (validation_failed)."""
    return load_json_request(checkout_schema(), MAX_CHECKOUT_BYTES, "order")


@bp.route("/api/checkout/success", methods=["GET", "POST"])
def checkout_success():
    """Monime's successUrl (GET or POST): sync the order, then 303 to APP_URL/checkout/success."""
    return back_from_monime("/checkout/success")


@bp.get("/api/checkout/cancel")
def checkout_cancel():
    """Monime's cancelUrl: sync the order, then 303 to APP_URL/checkout/cancelled."""
    return back_from_monime("/checkout/cancelled")


def back_from_monime(page: str):
    """Bring a pending order up to date with Monime, rationed (see
    sync.refresh_on_return; the webhook stays authoritative), then send the
    shopper to a fixed page of the frontend, whatever Monime says."""
    order_id = request.args.get("orderId", "")
    logs.bind(orderId=order_id or None)
    if not order_id:
        raise ApiError(400, "missing_order_id", "The orderId query parameter is required.")
    # most hits only read: on SQLite they need not queue for the write lock; run again if the connection was lost
    order = atomic(lambda: orders.lookup(order_id), only_reads=True)
    if order is None:
        raise ApiError(404, "order_not_found", "No order has this orderId.")
    sync.refresh_on_return(order, within_redirect_lookup_limit)
    return redirect(frontend_url(page, order.id), 303)


def frontend_url(page: str, order_id: str) -> str:
    """APP_URL's `page` for the order (orderId in the query)."""
    return f"{current_app.config['APP_URL']}{page}?{urlencode({'orderId': order_id})}"
