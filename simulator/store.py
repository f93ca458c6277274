"""The simulator's memory: sessions, idempotency keys, faults, requests seen, settings, and
the outbox of webhook events."""

import hashlib
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from simulator import webhooks
from simulator.settings import Settings
from simulator.webhooks import Outbox

# never shown by the API
PRIVATE = ("callbackState", "paymentOptions", "paymentMethod", "expiresAt", "sequence")


@dataclass
class Faults:
    delay: float = 0.0  # seconds added before an API answer
    slow: int = 0  # ... to the next N API requests; 0 means to every one
    fail: int = 0  # the next N API requests answer fail_status without doing anything
    fail_status: int = 503
    # On a 429 or 503 fail: Retry-After, whole seconds or an HTTP date (None: no header), and,
    # on a 429, Monime-Rate-Limit naming the limit hit (Monime's "Standard headers" page).
    retry_after: int | str | None = 1
    rate_limit: str = "space-requests-per-second"
    in_flight: float = 0.0  # seconds each create holds its Idempotency-Key; the same key meanwhile: 409
    drop: int = 0  # the next N API requests are carried out, then the connection is closed unanswered
    trickle: float = 0.0  # seconds between bytes: an API answer dribbles out one byte at a time...
    trickled: int = 0  # ... for the next N API requests; 0 means for every one
    trickle_headers: bool = True  # the status line and headers dribble too, not only the body


@dataclass
class Store:
    defaults: Settings = field(default_factory=Settings)  # what a reset returns to
    sessions: dict = field(default_factory=dict)
    idempotency: dict = field(default_factory=dict)  # key -> (body hash, session id)
    making: dict = field(default_factory=dict)  # key -> body hash, of a create still being made
    requests: list = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)
    sequence: itertools.count = field(default_factory=lambda: itertools.count(1))  # creation order; never reset
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.defaults)

    @property
    def settings(self) -> Settings:
        return self.outbox.settings

    def configure(self, options: dict) -> Settings:
        """Change settings while running; ValueError for an unknown one or a bad value."""
        self.outbox.settings = self.settings.updated(options)
        self.settings.warn()
        return self.settings

    def enter(self) -> None:
        with self.idle:
            self.in_flight += 1

    def leave(self) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def reset(self) -> None:
        """Forget everything and restore the settings, once requests still being answered
        (a slow one, say) are done."""
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=30)
        with self.lock:
            self.sessions.clear()
            self.idempotency.clear()
            self.making.clear()
            self.requests.clear()
            self.faults = Faults()
        self.outbox.settings = self.defaults
        self.outbox.reset()

    def record(self, method: str, path: str, idempotency_key: str | None, body) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": path, "idempotencyKey": idempotency_key, "body": body})

    def take_delay(self) -> float:
        """Seconds to wait before answering this request."""
        with self.lock:
            if self.faults.slow == 0:
                return self.faults.delay
            self.faults.slow -= 1
            delay = self.faults.delay
            if self.faults.slow == 0:
                self.faults.delay = 0.0
            return delay

    def take_trickle(self) -> float:
        """Seconds between the bytes of this request's answer; 0 to answer at once."""
        with self.lock:
            interval = self.faults.trickle
            if interval and self.faults.trickled:
                self.faults.trickled -= 1
                if self.faults.trickled == 0:
                    self.faults.trickle = 0.0
            return interval

    def take_fault(self, kind: str) -> bool:
        """Use up one of the next-N faults of this kind ("fail" or "drop")."""
        with self.lock:
            left = getattr(self.faults, kind)
            if left > 0:
                setattr(self.faults, kind, left - 1)
            return left > 0

    def create_session(self, body: dict, key: str, base_url: str) -> tuple[str, dict | None]:
        """(outcome, session): ("created", new) or ("replayed", the key's session);
        ("in_use", None) when the key was used with another body; ("in_flight", None) when a
        create with this key and body is still being made, which only the in_flight fault makes
        last long enough to be met: the create then holds its key for that many seconds."""
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self.lock:
            if key in self.idempotency:
                known_digest, session_id = self.idempotency[key]
                return ("replayed", self.sessions[session_id]) if known_digest == digest else ("in_use", None)
            if key in self.making:
                return ("in_flight", None) if self.making[key] == digest else ("in_use", None)
            processing = self.faults.in_flight
            if not processing:
                return "created", self._made(body, key, digest, base_url)
            self.making[key] = digest
        try:
            time.sleep(processing)  # the fault: Monime is still making the session, its key held
            with self.lock:
                return "created", self._made(body, key, digest, base_url)
        finally:
            with self.lock:
                self.making.pop(key, None)

    def _made(self, body: dict, key: str, digest: str, base_url: str) -> dict:
        """A new session, kept with its key; called with the lock held."""
        session = new_session(body, base_url, self.settings.session_lifetime)
        session["sequence"] = next(self.sequence)
        self.sessions[session["id"]] = session
        self.idempotency[key] = (digest, session["id"])
        return session

    def page(self, limit: int, after: int = 0) -> tuple[list[dict], int | None]:
        """Up to `limit` sessions made after the one numbered `after` (0: from the first), in the
        order they were made, and the number of the last one shown if more follow, else None.
        Sessions made or deleted while a client pages move no other one: none is skipped or repeated."""
        with self.lock:
            later = [s for s in self.sessions.values() if s["sequence"] > after]
        shown = later[:limit]
        return shown, (shown[-1]["sequence"] if len(later) > limit else None)

    def delete_session(self, session_id: str) -> None:
        """Forget a session and the keys that made it: replaying that create makes a new one."""
        with self.lock:
            del self.sessions[session_id]
            for key in [key for key, (_, made) in self.idempotency.items() if made == session_id]:
                del self.idempotency[key]

    def transition(
        self, session_id: str, status: str, force: bool = False, paid_with: str | None = None
    ) -> dict | None:
        """Move a pending session to a final status; None if it is not pending (unless forced).
        A completion gives the session its orderNumber, once (a forced repeat keeps it); a
        session that is never paid keeps null."""
        with self.lock:
            session = self.sessions[session_id]
            if session["status"] != "pending" and not force:
                return None
            session["status"] = status
            session["paymentMethod"] = paid_with or session.get("paymentMethod")
            if status == "completed" and session["orderNumber"] is None:
                session["orderNumber"] = new_order_number()
            return session

    def emit(self, session: dict, status: str, deliver: bool = True, wait: bool = True, url: str = "") -> dict:
        """Monime's signed event for `session` reaching `status`, sent to `url` or the webhook URL
        unless not `deliver`: {"session", "event", "delivery"}, the first attempt if made now."""
        event = webhooks.event(public(session), status, self.settings.webhook_secret)
        delivery = self.outbox.send(event, url or self.settings.webhook_url, wait) if deliver else None
        return {"session": public(session), "event": event, "delivery": delivery}

    def sweep(self) -> None:
        """Expire every pending session past its expireTime and send its checkout_session.expired.
        Run on reads (lazily) and by the webhook worker (so one left alone expires too)."""
        with self.lock:
            overdue = [s for s in self.sessions.values() if s["status"] == "pending" and s["expiresAt"] <= time.time()]
            for session in overdue:
                session["status"] = "expired"
        for session in overdue:
            self.emit(session, "expired", wait=False)


# The payment's own reference, as Monime fills a checkout session's orderNumber once it is paid
# (OpenAPI CheckoutSession.orderNumber: "internally generated order number that uniquely
# identifies the payment"; null before). Monime publishes no sample value; what it does fix is
# that an order number names a receipt, GET /v1/receipts/{orderNumber}, whose path parameter is a
# string of at most 20 characters (OpenAPI RetrieveReceipt; monimejs ReceiptOrderNumberSchema,
# spikenardco/monimejs src/schemas.js, checks the same). Monime's official plugin stores the
# completion webhook's data.orderNumber as _monime_order_number (monimesl/Wp-Monime,
# src/adaptors/WC/WcMonimeGateway.php) and shows it as the "Monime Transaction ID"
# (src/adaptors/WC/WcAdapter.php). The simulator's: 12 upper-case letters and digits, readable
# aloud by a shopper quoting a receipt.
ORDER_NUMBER_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
ORDER_NUMBER_LENGTH = 12


def new_order_number() -> str:
    """A fresh orderNumber: ORDER_NUMBER_LENGTH characters of ORDER_NUMBER_ALPHABET."""
    return "".join(secrets.choice(ORDER_NUMBER_ALPHABET) for _ in range(ORDER_NUMBER_LENGTH))


def new_session(body: dict, base_url: str, lifetime: float) -> dict:
    session_id = f"scs-{secrets.token_hex(12)}"
    items = [
        {"type": "custom", "id": f"cli-{secrets.token_hex(8)}", "quantity": 1, **item}
        for item in (body.get("lineItems") or [])
    ]
    created = datetime.now(UTC)
    expires = created + timedelta(seconds=lifetime)
    return {
        "id": session_id,
        "name": body["name"],
        "status": "pending",
        "orderNumber": None,
        "reference": body.get("reference"),
        "description": body.get("description"),
        "redirectUrl": f"{base_url}checkout/{session_id}",
        "cancelUrl": body.get("cancelUrl"),
        "successUrl": body.get("successUrl"),
        "lineItems": {"data": items},
        "financialAccountId": body.get("financialAccountId"),
        "brandingOptions": body.get("brandingOptions"),
        "expireTime": webhooks.iso(expires),
        "createTime": webhooks.iso(created),
        "ownershipGraph": None,
        "metadata": body.get("metadata"),
        "callbackState": body.get("callbackState"),
        "paymentOptions": body.get("paymentOptions"),
        "expiresAt": expires.timestamp(),
    }


def public(session: dict) -> dict:
    """A session as the API shows it: callbackState is never exposed in read APIs, nor is
    what only the simulator keeps."""
    return {key: value for key, value in session.items() if key not in PRIVATE}
