"""The simulator's memory: sessions, idempotency keys, faults, requests seen, webhook deliveries."""

import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import requests

from signatures import HEADER, sign

API_VERSION = "caph.2025-08-23"
SESSION_LIFETIME = timedelta(minutes=30)
EVENT_FOR_STATUS = {
    "completed": "checkout_session.completed",
    "cancelled": "checkout_session.cancelled",
    "expired": "checkout_session.expired",
}


@dataclass
class Faults:
    delay: float = 0.0  # seconds added before an API answer
    slow: int = 0  # ... to the next N API requests; 0 means to every one
    fail: int = 0  # the next N API requests answer fail_status without doing anything
    fail_status: int = 503
    drop: int = 0  # the next N API requests are carried out, then the connection is closed unanswered


@dataclass
class Store:
    webhook_url: str = ""
    webhook_secret: str = ""
    sessions: dict = field(default_factory=dict)
    idempotency: dict = field(default_factory=dict)  # key -> (body hash, session id)
    requests: list = field(default_factory=list)
    deliveries: list = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)

    def enter(self) -> None:
        with self.idle:
            self.in_flight += 1

    def leave(self) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def reset(self) -> None:
        """Forget everything, once requests still being answered (a slow one, say) are done."""
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=30)
        with self.lock:
            self.sessions.clear()
            self.idempotency.clear()
            self.requests.clear()
            self.deliveries.clear()
            self.faults = Faults()

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

    def take_fault(self, kind: str) -> bool:
        """Use up one of the next-N faults of this kind ("fail" or "drop")."""
        with self.lock:
            left = getattr(self.faults, kind)
            if left > 0:
                setattr(self.faults, kind, left - 1)
            return left > 0

    def create_session(self, body: dict, key: str, base_url: str) -> tuple[dict | None, bool]:
        """(session, created). (None, False) when the key was used for another body."""
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self.lock:
            if key in self.idempotency:
                known_digest, session_id = self.idempotency[key]
                return (self.sessions[session_id], False) if known_digest == digest else (None, False)
            session = new_session(body, base_url)
            self.sessions[session["id"]] = session
            self.idempotency[key] = (digest, session["id"])
            return session, True

    def delete_session(self, session_id: str) -> None:
        """Forget a session and the keys that made it: replaying that create makes a new one."""
        with self.lock:
            del self.sessions[session_id]
            for key in [key for key, (_, made) in self.idempotency.items() if made == session_id]:
                del self.idempotency[key]

    def transition(self, session_id: str, status: str, force: bool = False) -> dict | None:
        """Move a pending session to a final status; None if it is not pending (unless forced)."""
        with self.lock:
            session = self.sessions[session_id]
            if session["status"] != "pending" and not force:
                return None
            session["status"] = status
            return session

    def event(self, session: dict, status: str) -> dict:
        """The signed webhook Monime sends when a session reaches `status`."""
        envelope = {
            "apiVersion": API_VERSION,
            "event": {"id": f"evt-{secrets.token_hex(10)}", "name": EVENT_FOR_STATUS[status], "timestamp": now()},
            "object": {"id": session["id"], "type": "checkout_session"},
            "data": public(session),
        }
        body = json.dumps(envelope, separators=(",", ":"))
        headers = {HEADER: sign(body.encode(), self.webhook_secret), "Content-Type": "application/json"}
        return {"id": envelope["event"]["id"], "headers": headers, "body": body}

    def deliver(self, event: dict) -> dict:
        """POST the event to the webhook URL, as Monime would; record the attempt."""
        try:
            response = requests.post(self.webhook_url, data=event["body"], headers=event["headers"], timeout=10)
            delivery = {"eventId": event["id"], "status": response.status_code, "body": response.text[:500]}
        except requests.RequestException as exc:
            delivery = {"eventId": event["id"], "status": None, "error": type(exc).__name__}
        with self.lock:
            self.deliveries.append(delivery)
        return delivery


def new_session(body: dict, base_url: str) -> dict:
    session_id = f"scs-{secrets.token_hex(12)}"
    items = [
        {"type": "custom", "id": f"cli-{secrets.token_hex(8)}", "quantity": 1, **item}
        for item in (body.get("lineItems") or [])
    ]
    created = datetime.now(UTC)
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
        "expireTime": iso(created + SESSION_LIFETIME),
        "createTime": iso(created),
        "ownershipGraph": None,
        "metadata": body.get("metadata"),
        "callbackState": body.get("callbackState"),
    }


def public(session: dict) -> dict:
    """A session as the API shows it: callbackState is never exposed in read APIs."""
    return {key: value for key, value in session.items() if key != "callbackState"}


def now() -> str:
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
