"""The order feed: every order, in the order of its last change, for a shop's backend that
polls or catches up after downtime (GET /api/orders).

Orders come by (updated_at, id), ascending, and a cursor is the last (updated_at, id) a page
held. An order that changes after the backend paged past it moves to the end and comes
again, in its new state: a backend that follows the feed from its last cursor sees every
order's latest state, and sees an order again only when it changed (a repeat is news, and
safe to apply twice). A sequence number would do no better: like updated_at, it is taken
when the UPDATE runs, not when its transaction commits, so on Postgres a change can become
visible after a later-numbered one was already served.

That is why the feed never serves the last ORDER_FEED_DELAY seconds: a change is served only
once its updated_at is that old, by when the transaction that made it has committed (this
service commits within milliseconds of a change) and other replicas' clocks have caught up.
Without that margin a backend could page past a change still being committed and never see
it; with it, a gap needs a commit slower than the delay, or clocks further apart.
"""

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, tuple_

from models import ORDER_ID_PATTERN, Order, db, utcnow


class InvalidCursor(ValueError):
    """A cursor this feed did not make."""


def page(status: str | None, after: str | None, limit: int, delay: float) -> tuple[list[Order], str | None]:
    """Up to `limit` orders (of `status`, if given) changed after the cursor `after` (from the
    start without one) and at least `delay` seconds ago, in feed order; and the cursor of the
    last one, or None when there is none yet (keep your cursor and ask again later).
    Raises InvalidCursor for an `after` this feed did not make."""
    query = select(Order).where(Order.updated_at <= utcnow() - timedelta(seconds=delay))
    if status:
        query = query.where(Order.status == status)
    if after:
        query = query.where(tuple_(Order.updated_at, Order.id) > tuple_(*decode(after)))
    found = list(db.session.scalars(query.order_by(Order.updated_at, Order.id).limit(limit)))
    return found, (encode(found[-1]) if found else None)


def encode(order: Order) -> str:
    """The opaque cursor just past `order`: base64url of JSON [updated_at (ISO 8601, UTC), id]."""
    changed = order.updated_at.replace(tzinfo=order.updated_at.tzinfo or UTC).astimezone(UTC)
    text = json.dumps([changed.isoformat(), order.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, str]:
    """(updated_at, id) from a cursor made by `encode`; raises InvalidCursor otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        changed, order_id = json.loads(raw)
        moment = datetime.fromisoformat(changed)
        if not isinstance(order_id, str) or not re.match(ORDER_ID_PATTERN, order_id) or moment.tzinfo is None:
            raise ValueError("not a cursor")
        return moment.astimezone(UTC), order_id
    except (binascii.Error, ValueError, TypeError, OverflowError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise InvalidCursor(cursor) from exc
