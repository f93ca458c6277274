"""Why a Monime-Signature does not verify, as far as can be told.

The HMAC alone cannot tell a wrong secret from a changed body: both just fail to match.
So the header's shape and the timestamp's age are checked on their own, each secret is
tried, and then the body as it probably was before the usual accidents (a newline added
or lost, CRLF, a byte-order mark, JSON parsed and encoded again) and secrets with stray
quotes or whitespace: a variant that matches says what happened.
"""

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

from signatures import DEFAULT_TOLERANCE, HEADER, SignatureError, verify
from signatures import _parse as parse_header  # the service's own reading of the header

BOM = b"\xef\xbb\xbf"
RAW_BODY_ADVICE = (
    "You verified other bytes than Monime signed: verify the raw request body exactly as received "
    "(Flask: request.get_data(); Express: express.raw()) before any parsing or re-encoding."
)


@dataclass
class Verdict:
    ok: bool
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def diagnose(
    body: bytes, header: str | None, secrets: list[str], tolerance: float = DEFAULT_TOLERANCE, now: float | None = None
) -> Verdict:
    """OK, or each thing that is wrong with this signed request."""
    header = without_name((header or "").strip())
    if not header:
        return Verdict(False, [f"FAIL missing {HEADER} header: the request carries no signature.", expected()])
    try:
        timestamp, _ = parse_header(header)
    except SignatureError as exc:
        return Verdict(False, [f"FAIL {exc}.", expected()])
    age = (time.time() if now is None else now) - timestamp
    stale = abs(age) > tolerance
    matching = [number for number, secret in enumerate(secrets, 1) if signs(body, header, secret)]
    if matching and not stale:
        number = matching[0]
        return Verdict(True, [f"OK  signed with secret #{number} ({masked(secrets[number - 1])}), {ago(age)}."])
    if matching:
        return Verdict(
            False,
            [
                stale_line(timestamp, age, tolerance),
                "The secret and the body are right: "
                "a replayed or long-captured request, or a clock that is off (check NTP).",
            ],
        )
    lines = body_changed(body, header, secrets) or wrong_secret(header, secrets, body)
    return Verdict(False, lines + ([stale_line(timestamp, age, tolerance)] if stale else []))


def body_changed(body: bytes, header: str, secrets: list[str]) -> list[str]:
    for label, variant in body_variants(body):
        for number, secret in enumerate(secrets, 1):
            if signs(variant, header, secret):
                return [
                    f"FAIL body changed: the signature matches the body {label} (secret #{number}).",
                    RAW_BODY_ADVICE,
                ]
    return []


def wrong_secret(header: str, secrets: list[str], body: bytes) -> list[str]:
    for number, secret in enumerate(secrets, 1):
        cleaned = secret.strip().strip("\"'").strip()
        if cleaned != secret and signs(body, header, cleaned):
            return [
                f"FAIL wrong secret: secret #{number} has stray quotes or whitespace around it; "
                f"without them it matches ({masked(cleaned)})."
            ]
    return [
        f"FAIL wrong secret, or a body changed in a way not recognised: none of the {len(secrets)} "
        "secret(s) signs this body, and no usual change of the body (trailing newline, CRLF, byte-order "
        "mark, re-serialised JSON) explains it. An HMAC cannot tell these two apart.",
        "Check the secret first: each Monime webhook has its own (whsec_…); while rotating, list both "
        f"(MONIME_WEBHOOK_SECRET=new,old). Tried: {', '.join(masked(s) for s in secrets) or 'none'}.",
    ]


def body_variants(body: bytes) -> Iterator[tuple[str, bytes]]:
    """(what differs, the body as it probably was when signed), for the usual accidents."""
    if body.endswith(b"\n"):
        newline = ("without its trailing newline (one was added: an editor, echo)", body.removesuffix(b"\n"))
    else:
        newline = ("with a trailing newline (yours lost it: stripped somewhere)", body + b"\n")
    candidates = [
        newline,
        ("with LF line endings (yours has CRLF: a Windows editor or transfer)", body.replace(b"\r\n", b"\n")),
        ("with CRLF line endings (yours has LF)", body.replace(b"\n", b"\r\n")),
        ("without the UTF-8 byte-order mark yours starts with", body.removeprefix(BOM)),
        *json_variants(body),
    ]
    seen = {body}
    for label, variant in candidates:
        if variant not in seen:
            seen.add(variant)
            yield label, variant


def json_variants(body: bytes) -> list[tuple[str, bytes]]:
    """The JSON encoded again the ways libraries do: the original if yours was re-serialised."""
    try:
        document = json.loads(body.removeprefix(BOM))
    except ValueError:
        return []
    why = "(yours was parsed and encoded again: whitespace, key order or escapes differ from the raw bytes)"
    encodings = {
        "compact, keys in their order, UTF-8 kept": {"separators": (",", ":"), "ensure_ascii": False},
        "compact, keys in their order, \\u escapes": {"separators": (",", ":")},
        "compact, keys sorted": {"separators": (",", ":"), "sort_keys": True, "ensure_ascii": False},
        "with spaces after , and :": {"ensure_ascii": False},
        "indented by 2": {"indent": 2, "ensure_ascii": False},
    }
    return [
        (f"as JSON written {name} {why}", json.dumps(document, **options).encode())
        for name, options in encodings.items()
    ]


def signs(body: bytes, header: str, secret: str) -> bool:
    """Whether `header` signs `body` with `secret`, whatever its timestamp."""
    try:
        verify(body, header, [secret], tolerance=math.inf, load=bytes)  # any bytes: JSON or not
    except SignatureError:
        return False
    return True


def without_name(header: str) -> str:
    """'Monime-Signature: t=…' pasted whole is read as 't=…'."""
    name, sep, value = header.partition(":")
    return value.strip() if sep and name.strip().lower() == HEADER.lower() else header


def expected() -> str:
    return f"Expected: {HEADER}: t=<unix seconds>,v1=<base64 HMAC-SHA256 of '<t>_' + the raw body>"


def stale_line(timestamp: int, age: float, tolerance: float) -> str:
    return f"FAIL stale timestamp: t={timestamp} was {ago(age)}, outside the {tolerance:g} s tolerance."


def ago(age: float) -> str:
    return f"{round(age)} s ago" if age >= 0 else f"{round(-age)} s in the future"


def masked(secret: str) -> str:
    return f"{secret[:10]}…" if len(secret) > 12 else "a short secret"
