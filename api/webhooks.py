"""Monime's webhooks: the authoritative source of an order's status."""

import logging

from flask import Blueprint, current_app, request
from marshmallow import ValidationError

import events
import signatures
from api.errors import ApiError

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


@bp.post("/api/webhooks/monime")
def monime_webhook():
    body = request.get_data()  # the raw bytes are what was signed; over 1 MiB is refused with 413
    try:
        signatures.verify(
            body,
            request.headers.get(signatures.HEADER),
            current_app.config["MONIME_WEBHOOK_SECRETS"],
            tolerance=current_app.config["MONIME_WEBHOOK_TOLERANCE"],
        )
    except signatures.SignatureError as exc:
        log.warning("webhook signature refused", extra={"data": {"reason": str(exc)}})
        raise ApiError(401, "invalid_signature", f"Signature verification failed: {exc}.") from None

    try:
        envelope = events.parse(body)
    except (ValueError, ValidationError) as exc:
        details = exc.messages if isinstance(exc, ValidationError) else {}
        raise ApiError(400, "malformed_event", "The body is not a Monime event.", fields=details) from None

    try:
        receipt = events.receive(body.decode(), envelope)
    except events.VerificationUnavailable as exc:
        raise ApiError(503, "monime_unavailable", f"{exc}. Deliver the event again.", {"Retry-After": "30"}) from None
    return {"received": True, "eventId": receipt.event_id, "duplicate": receipt.duplicate, "outcome": receipt.outcome}
