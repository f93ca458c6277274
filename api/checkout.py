"""Creating a checkout, and the shopper's way back from Monime's hosted page."""

import logging
from urllib.parse import quote, urlencode

from flask import Blueprint, current_app, redirect, request

import events
import logs
import monime
import orders
from api.bodies import load_json_request
from api.errors import ApiError
from api.guard import checkout_limit, limiter, within_redirect_lookup_limit
from catalog import checkout_schema
from metrics import CHECKOUTS
from models import Order, Status, db, read_only

MAX_CHECKOUT_BYTES = 64 * 1024  # the largest valid order is about 30 KiB

log = logging.getLogger(__name__)
bp = Blueprint("checkout", __name__)


@bp.post("/api/checkout")
@limiter.limit(checkout_limit)
def create_checkout():
    try:
        status, body = start_checkout()
    except ApiError as exc:
        CHECKOUTS.labels(exc.code).inc()
        raise
    CHECKOUTS.labels("created" if status == 201 else "replayed").inc()
    return body, status


def start_checkout() -> tuple[int, dict]:
    draft = load_checkout_request()
    logs.bind(orderId=draft["orderId"])
    order = orders.place(draft)
    if order.fingerprint != orders.fingerprint(draft):
        raise ApiError(409, "order_conflict", f"Order {order.id!r} was already submitted with different content.")
    refuse_if_paid(order)
    if order.status in orders.FINAL_UNPAID:
        order = orders.start_new_attempt(order)
    session = orders.current_session(order)
    db.session.commit()  # the order and its Idempotency-Key are stored before Monime is called
    if session is not None:
        return 200, checkout_response(order.id, session.id, session.redirect_url)

    created = call_monime(order)
    if orders.record_session(order, created["id"], created.get("redirectUrl")):
        db.session.commit()
        log.info("checkout session created", extra={"data": {"sessionId": created["id"]}})
        return 201, checkout_response(order.id, created["id"], created.get("redirectUrl"))
    # While Monime answered, a concurrent request recorded a session, or a late
    # completion of an earlier session paid the order: never hand out a second one.
    order = orders.reload(order.id)
    session = orders.current_session(order)
    db.session.commit()
    refuse_if_paid(order)
    if session is None:  # a newer attempt has begun and not recorded its session yet
        return 200, checkout_response(order.id, created["id"], created.get("redirectUrl"))
    return 200, checkout_response(order.id, session.id, session.redirect_url)


def refuse_if_paid(order: Order) -> None:
    if order.status == Status.COMPLETED:
        raise ApiError(409, "order_completed", f"Order {order.id!r} is already paid.")


def load_checkout_request() -> dict:
    """The request's order, loaded by the checkout schema (amounts in minor units). Raises ApiError:
    415 not JSON, 413 over MAX_CHECKOUT_BYTES (chunked too), 400 not a JSON object within
    schemas.load_json's limits (invalid_json) or not a valid order (validation_failed)."""
    return load_json_request(checkout_schema(), MAX_CHECKOUT_BYTES, "order")


def call_monime(order: Order) -> dict:
    try:
        return monime.client().create_session(session_request(order), order.idempotency_key)
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


def session_request(order: Order) -> dict:
    """The CreateCheckoutSession body for an order, built only from what is stored,
    so every retry under the order's Idempotency-Key sends the same request."""
    body = {
        "name": order.name,
        "reference": order.id,
        "successUrl": own_url("/api/checkout/success", order.id),
        "cancelUrl": own_url("/api/checkout/cancel", order.id),
        "lineItems": [{key: value for key, value in item.items() if value is not None} for item in order.line_items],
        "metadata": {**order.client_metadata, "orderId": order.id},
    }
    optional = {"description": order.description, "callbackState": order.callback_state}
    return body | {key: value for key, value in optional.items() if value is not None}


def checkout_response(order_id: str, session_id: str, redirect_url: str | None) -> dict:
    return {"orderId": order_id, "sessionId": session_id, "redirectUrl": redirect_url}


@bp.route("/api/checkout/success", methods=["GET", "POST"])
def checkout_success():
    return back_from_monime("/checkout/success")


@bp.get("/api/checkout/cancel")
def checkout_cancel():
    return back_from_monime("/checkout/cancelled")


def back_from_monime(page: str):
    """Bring a pending order up to date with Monime, rationed (see
    events.refresh_on_return; the webhook stays authoritative), then send the
    shopper to a fixed page of the frontend, whatever Monime says."""
    order_id = request.args.get("orderId", "")
    logs.bind(orderId=order_id or None)
    if not order_id:
        raise ApiError(400, "missing_order_id", "The orderId query parameter is required.")
    read_only()  # most hits only read: on SQLite they need not queue for the write lock
    order = orders.get(order_id)
    if order is None:
        raise ApiError(404, "order_not_found", "No order has this orderId.")
    events.refresh_on_return(order, within_redirect_lookup_limit)
    return redirect(frontend_url(page, order.id), 303)


def own_url(path: str, order_id: str) -> str:
    # ':' is legal in a query and keeps a 100-character orderId inside Monime's URL limit
    return f"{current_app.config['PUBLIC_BASE_URL']}{path}?orderId={quote(order_id, safe=':')}"


def frontend_url(page: str, order_id: str) -> str:
    return f"{current_app.config['APP_URL']}{page}?{urlencode({'orderId': order_id})}"
