"""Monime's webhooks: the authoritative source of an order's status."""

import logging

from flask import Blueprint, current_app, request
from marshmallow import ValidationError

import events
import logs
import signatures
from api.errors import ApiError
from metrics import WEBHOOK_EVENTS, WEBHOOK_SIGNATURES
from models import Outcome
from schemas import load_json

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


@bp.post("/api/webhooks/monime")
def monime_webhook():
    """POST /api/webhooks/monime: verify the Monime-Signature over the raw body (401
    invalid_signature), load the event (400 malformed_event) and process it once per event id
    (events.receive). 200 {received, eventId, duplicate, outcome}; 503 monime_unavailable with
    Retry-After when a completion cannot be confirmed with Monime, so Monime delivers again."""
    body = request.get_data()  # the raw bytes are what was signed; over 1 MiB is refused with 413
    try:
        payload = signatures.verify(
            body,
            request.headers.get(signatures.HEADER),
            current_app.config["MONIME_WEBHOOK_SECRETS"],
            tolerance=current_app.config["MONIME_WEBHOOK_TOLERANCE"],
            load=load_json,  # strict UTF-8 JSON within the depth and number limits
        )
    except signatures.SignatureError as exc:
        WEBHOOK_SIGNATURES.labels("rejected").inc()
        log.warning("webhook signature refused", extra={"data": {"reason": str(exc)}})
        raise ApiError(401, "invalid_signature", f"Signature verification failed: {exc}.") from None
    except ValueError as exc:  # signed, but not UTF-8, not JSON, or JSON too deep or with too large numbers
        WEBHOOK_SIGNATURES.labels("verified").inc()
        raise ApiError(400, "malformed_event", f"The body is not a Monime event: {exc}.", fields={}) from None
    WEBHOOK_SIGNATURES.labels("verified").inc()
    try:
        envelope = events.parse(payload)
    except ValidationError as exc:
        raise ApiError(400, "malformed_event", "The body is not a Monime event.", fields=exc.messages) from None
    text = body.decode()  # valid UTF-8: load_json decoded it; stored as received

    logs.bind(eventId=envelope["event"]["id"])
    try:
        receipt = events.receive(text, envelope)
    except events.VerificationUnavailable as exc:
        WEBHOOK_EVENTS.labels(Outcome.FAILED).inc()
        raise ApiError(503, "monime_unavailable", f"{exc}. Deliver the event again.", {"Retry-After": "30"}) from None
    WEBHOOK_EVENTS.labels("duplicate" if receipt.duplicate else receipt.outcome).inc()
    return {"received": True, "eventId": receipt.event_id, "duplicate": receipt.duplicate, "outcome": receipt.outcome}
