"""Monime webhook signatures.

    Monime-Signature: t=<unix seconds>,v1=<base64(HMAC-SHA256(secret, "<t>_" + raw body))>

The secret's UTF-8 bytes are the key. A signature is accepted when it was made
with any one of the configured secrets (so a secret can be rotated) and its
timestamp is within `tolerance` seconds of now.
"""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

HEADER = "Monime-Signature"
DEFAULT_TOLERANCE = 300
MAX_TIMESTAMP_DIGITS = 12  # unix seconds have 10 digits until the year 2286; more is not a time


class SignatureError(ValueError):
    """The request is not a fresh message signed by Monime. The message says why."""


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Monime-Signature header value for `body`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return f"t={timestamp},v1={_digest(body, secret, timestamp)}"


def verify(
    body: bytes,
    header: str | None,
    secrets: Iterable[str],
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
    load: Callable[[bytes], Any] = json.loads,
) -> Any:
    """The payload of `body` (raw bytes), `load`ed (parsed JSON by default) once `header`
    (the Monime-Signature value) proves that one of `secrets` signed it within `tolerance`
    seconds of `now` (unix seconds; the clock by default). As Stripe's construct_event and
    Standard Webhooks' verify do, so that nothing parses bytes nobody verified.

    Raises SignatureError when the signature is missing, malformed, stale or matches no
    secret (the body is not parsed then), and whatever `load` raises (ValueError for bytes
    that are not JSON) when a verified body cannot be parsed."""
    if not header:
        raise SignatureError(f"missing {HEADER} header")
    timestamp, signatures = _parse(header)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp is outside the {int(tolerance)} s tolerance")
    for secret in secrets:
        expected = _digest(body, secret, timestamp).encode()
        # compare_digest on every candidate: the time taken says nothing about which one came close
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return load(body)
    raise SignatureError("no signature matches the body with a configured secret")


def _parse(header: str) -> tuple[int, list[bytes]]:
    timestamp, signatures = None, []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {HEADER} header")
        if key == "t":
            if not value.isascii() or not value.isdigit() or len(value) > MAX_TIMESTAMP_DIGITS:
                raise SignatureError(f"malformed {HEADER} header: t must be unix seconds")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value.encode("ascii", "replace"))
    if timestamp is None or not signatures:
        raise SignatureError(f"malformed {HEADER} header: expected t=<unix seconds>,v1=<signature>")
    return timestamp, signatures


def _digest(body: bytes, secret: str, timestamp: int) -> str:
    message = f"{timestamp}_".encode() + body
    mac = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")
