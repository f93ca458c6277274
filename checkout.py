"""Creating a checkout: an order placed once per orderId, and one Monime checkout session for
its current attempt, however often and however concurrently it is submitted.

`start` is the whole flow; the HTTP layer (api/checkout.py) loads the request and maps the
errors raised here to responses. No database transaction is held open while Monime is asked.
"""

import logging
from dataclasses import dataclass
from urllib.parse import quote

from flask import current_app

import monime
import orders
from models import Status, atomic

log = logging.getLogger(__name__)


class OrderConflict(Exception):
    """The orderId was already submitted with different content (contract: 409 order_conflict)."""


class OrderAlreadyPaid(Exception):
    """The order is completed: it gets no new session (contract: 409 order_completed)."""


@dataclass(frozen=True)
class Checkout:
    """Where to send the shopper: the order's current Monime session. `created` is True when
    this call made the session, False when an earlier (or concurrent) submission had."""

    order_id: str
    session_id: str
    redirect_url: str | None
    created: bool


def start(draft: dict) -> Checkout:
    """Place the order `draft` (a loaded checkout request, amounts in minor units) and give it
    a Monime checkout session: the one it has, else a new one made under the order's stored
    Idempotency-Key (a cancelled or expired order starts a new attempt under a new key).

    Raises OrderConflict (same orderId, other content), OrderAlreadyPaid, and monime's typed
    errors (MonimeTimeout, MonimeUnavailable, MonimeRejected) when Monime made no session;
    submitting the same order again retries under the same key.

    First of all it takes one of the worker's slots for calls to Monime and holds it to the
    end (MonimeClient.slot, MONIME_MAX_IN_FLIGHT; a request's own, taken at the door by
    api/checkout.py, is reused): when every slot is taken it raises
    MonimeBusy at once, having read nothing, stored nothing and asked Monime nothing. So is an
    order that has its session already, and would need no call: telling it apart takes a
    database round trip, and refusing at the door with none is what keeps a surge of checkouts
    cheap to refuse while a slow Monime holds the slots; submitted again after Retry-After,
    the order gets that same session."""
    with monime.client().slot("create_session"):
        return _start(draft)


def _start(draft: dict) -> Checkout:
    """`start`'s flow, with the slot held."""
    order = atomic(lambda: _placed(draft), idempotent=True)  # run again if the connection was lost
    # the order and its Idempotency-Key are stored before Monime is called
    if order.session_id is not None:
        return Checkout(order.id, order.session_id, order.redirect_url, created=False)

    made = monime.client().create_session(session_request(order), order.idempotency_key)
    made_id, made_url = made["id"], made.get("redirectUrl")
    recorded = atomic(lambda: orders.record_session(order, made_id, made_url), idempotent=True)
    if not recorded:
        # While Monime answered, a concurrent request recorded a session, or a late
        # completion of an earlier session paid the order: never hand out a second one.
        order = atomic(lambda: orders.for_checkout(order.id), only_reads=True)
    if recorded:
        log.info("checkout session created", extra={"data": {"sessionId": made_id}})
        return Checkout(order.id, made_id, made_url, created=True)
    _refuse_if_paid(order)
    if order.session_id is None:  # a newer attempt has begun and not recorded its session yet
        return Checkout(order.id, made_id, made_url, created=False)
    return Checkout(order.id, order.session_id, order.redirect_url, created=False)


def _placed(draft: dict):
    """`start`'s first unit of work: the order stored for `draft` (orders.for_checkout's row), on
    a new attempt if it had ended unpaid, with its current session's id and redirect URL (None:
    Monime is to be asked). Running it twice changes nothing more than once. Raises
    OrderConflict, OrderAlreadyPaid."""
    order = orders.place(draft)
    if order.fingerprint != orders.fingerprint(draft):
        raise OrderConflict(f"Order {order.id!r} was already submitted with different content.")
    _refuse_if_paid(order)
    if order.status in orders.FINAL_UNPAID:
        order = orders.start_new_attempt(order)
    return order


def session_request(order) -> dict:
    """The CreateCheckoutSession body (Monime's OpenAPI) for an order (orders.for_checkout's
    row, or an Order), built only from what is stored, so every retry under the order's
    Idempotency-Key sends the same request."""
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


def own_url(path: str, order_id: str) -> str:
    """This service's URL (PUBLIC_BASE_URL) of `path` for the order: where Monime sends the shopper back."""
    # ':' is legal in a query and keeps a 100-character orderId inside Monime's URL limit
    return f"{current_app.config['PUBLIC_BASE_URL']}{path}?orderId={quote(order_id, safe=':')}"


def _refuse_if_paid(order) -> None:
    if order.status == Status.COMPLETED:
        raise OrderAlreadyPaid(f"Order {order.id!r} is already paid.")
