"""Syncing orders with Monime on our initiative: looking an order's current checkout session
up at Monime (`refresh`) and applying what it says through the order state rules. Used by
`reconcile` (flask orders reconcile) for webhooks that never came and, rationed
(`refresh_on_return`), when the shopper comes back through a redirect. The webhook
(events.py) stays the authoritative updater; no database transaction is held open while
Monime is being asked.
"""

import logging
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

import events
import monime
import orders
from metrics import REDIRECT_LOOKUPS_SKIPPED
from models import CheckoutSession, Order, Outcome, Status, atomic, db, transaction, utcnow
from orders import SessionReport

log = logging.getLogger(__name__)

# A shopper's redirects ask Monime about one order at most once in this many seconds.
REDIRECT_LOOKUP_INTERVAL = 5.0


def refresh(order_id: str, dry_run: bool = False) -> Outcome | None:
    """Ask Monime for the order's current session and apply what it says
    (with `dry_run`, work out what would change and undo it). None when there
    is nothing to ask; FAILED when Monime cannot be reached; HELD when Monime
    does not know the session. The lookup is monime.MonimeClient.get_session
    (within MONIME_VERIFY_TIMEOUT seconds)."""
    order = atomic(lambda: orders.reread(order_id), only_reads=True)  # run again if the connection was lost
    if order.status == Status.COMPLETED or not order.checkout_session_id:
        return None
    session_id, report = order.checkout_session_id, None
    try:
        session = monime.client().get_session(session_id)
    except monime.MonimeNotFound:
        with transaction(dry_run=dry_run):
            outcome, detail = orders.hold(orders.reread(order_id), f"Monime does not know session {session_id}", None)
    except monime.MonimeError as exc:
        log.warning("session lookup failed", extra={"data": {"orderId": order_id, "error": str(exc)}})
        return Outcome.FAILED
    else:
        report = events.looked_up(SessionReport(session_id, session.get("status"), None), session)
        with transaction(dry_run=dry_run):
            outcome, detail = orders.apply(orders.reread(order_id), report)
    log.info(
        "order refreshed from Monime",
        extra={
            "data": {
                "orderId": order_id,
                "outcome": outcome,
                "detail": detail,
                "dryRun": dry_run,
                "orderNumber": report and report.order_number,
            }
        },
    )
    return outcome


def refresh_on_return(order: Order, within_client_limit: Callable[[], bool]) -> str | None:
    """`refresh` for a shopper's redirect, rationed so the unauthenticated
    redirect cannot be used to drain Monime. Skipped, in this order:

    - "final": the order is completed, cancelled or expired. The webhook is
      authoritative and brings a late completion of a cancelled or expired
      session; reconcile, like this, looks only at pending orders.
    - "recent": another redirect, in any worker, asked about the order less
      than REDIRECT_LOOKUP_INTERVAL seconds ago (seen on the order as read, or
      lost the race for its turn in orders.claim_lookup).
    - "busy": every one of the worker's slots for calls to Monime is taken
      (MONIME_MAX_IN_FLIGHT). The slot is taken before the two steps below,
      so a lookup shed here neither counts against the client's limit nor
      takes the order's turn: the next redirect may ask as soon as a slot
      is free.
    - "client_limit": `within_client_limit()` (counting this lookup against
      the client's RATELIMIT_REDIRECT_LOOKUPS) says no. Only a hit that would
      ask Monime is counted, so a shopper reloading the success page does not
      use up the limit.

    Returns the reason it skipped (also counted in redirect_lookups_skipped_total),
    or None when it asked Monime. `reconcile` calls `refresh` directly, unrationed.
    Call it with no transaction open: none is held while the limit is asked."""
    if order.status != Status.PENDING:
        reason = "final"
    elif not orders.lookup_due(order, REDIRECT_LOOKUP_INTERVAL):
        reason = "recent"
    else:
        try:
            with monime.client().slot("get_session"):  # refresh's lookup uses it
                reason = _look_up_in_turn(order, within_client_limit)
        except monime.MonimeBusy:
            reason = "busy"
    if reason is not None:
        REDIRECT_LOOKUPS_SKIPPED.labels(reason).inc()
    return reason


def _look_up_in_turn(order: Order, within_client_limit: Callable[[], bool]) -> str | None:
    """`refresh` the order if the client's limit allows and the order's turn is won (see
    refresh_on_return); the reason it did not, else None."""
    if not within_client_limit():
        return "client_limit"
    with transaction():  # the turn is taken before Monime is asked
        claimed = orders.claim_lookup(order, REDIRECT_LOOKUP_INTERVAL)
    if not claimed:
        return "recent"
    refresh(order.id)
    return None


def reconcile(older_than: timedelta, limit: int, dry_run: bool = False) -> Counter:
    """Bring pending orders whose session is older than `older_than` up to
    Monime's truth, asking about at most `limit` sessions, oldest first. Safe
    beside webhooks and other reconcilers: every change is a conditional
    UPDATE in orders.py. Returns how many orders ended in each outcome."""
    stale = (
        select(Order.id)
        .join(CheckoutSession, CheckoutSession.id == Order.checkout_session_id)
        .where(Order.status == Status.PENDING, Order.review_reason.is_(None))
        .where(CheckoutSession.created_at <= utcnow() - older_than)
        .order_by(CheckoutSession.created_at)
        .limit(limit)
    )
    stale_ids = atomic(lambda: db.session.scalars(stale).all(), only_reads=True)
    tally = Counter()
    for order_id in stale_ids:
        tally[refresh(order_id, dry_run) or Outcome.UNCHANGED] += 1
    return tally
