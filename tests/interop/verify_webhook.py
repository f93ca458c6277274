"""A Monime webhook endpoint that checks each event's signature as Monime's official WordPress
plugin does, written from that plugin and sharing nothing with the service's signatures.py:
standard library only, run in a process of its own by tests/test_interop.py.

    WEBHOOK_SECRET=whsec_… python -I -S verify_webhook.py PORT

Answers every POST on 127.0.0.1:PORT with 200 {"verified": true, "event": <event name>}, or
401 {"verified": false, "reason": …} naming what the plugin would refuse it for.

The scheme, as monimesl/Wp-Monime applies it (src/Monime/core/webhook.php, Webhook::verify,
https://github.com/monimesl/Wp-Monime): the Monime-Signature header is split on commas and each
part trimmed; "t=" gives the timestamp (as an integer) and "v1=" the signature; a header without
both is refused; a timestamp more than 300 s from now either way is refused; the signed payload
is the timestamp, "_", then the raw body exactly as received; the signature is the base64 of its
HMAC-SHA256 under the secret, compared in constant time.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE = 300  # seconds, as the plugin's abs($now - $timestamp) > 300


def refusal(header: str, body: bytes, secret: str, now: float) -> str | None:
    """Why the plugin would refuse (body, header) under `secret`, or None to accept it."""
    timestamp = signature = None
    for part in header.split(","):
        part = part.strip()
        if part.startswith("t="):
            digits = part[2:].strip()
            timestamp = int(digits) if digits.isdigit() else None  # not a number: as if absent
        if part.startswith("v1="):
            signature = part[3:].strip()
    if not timestamp or not signature:
        return "invalid signature format"
    if abs(now - timestamp) > TOLERANCE:
        return "timestamp expired"
    payload = str(timestamp).encode() + b"_" + body
    expected = base64.b64encode(hmac.new(secret.encode(), payload, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "invalid signature"
    return None


class Endpoint(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        header = self.headers.get("Monime-Signature")
        if not header:
            status, answer = 401, {"verified": False, "reason": "missing signature"}
        elif reason := refusal(header, body, os.environ["WEBHOOK_SECRET"].strip(), time.time()):
            status, answer = 401, {"verified": False, "reason": reason}
        else:
            status, answer = 200, {"verified": True, "event": json.loads(body)["event"]["name"]}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        sys.stderr.write(f"verify_webhook: {format % args}\n")


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Endpoint).serve_forever()
