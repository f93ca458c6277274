"""The simulator's command line: run it, and test a Monime webhook endpoint by hand.

    python -m simulator [serve] [--host 127.0.0.1] [--port 8001]
    python -m simulator trigger completed|cancelled|expired [--session scs-…] [--url URL]
    python -m simulator sign body.json [--secret whsec_…] [--url URL]
    python -m simulator verify --header 't=…,v1=…' --body body.json [--secret whsec_…]

Secrets default to MONIME_WEBHOOK_SECRET (a comma-separated list, as the service reads it),
else the simulator's own; the simulator's URL to SIMULATOR_URL, else 127.0.0.1:SIMULATOR_PORT,
else MONIME_API_BASE_URL, else 127.0.0.1:8001. Like the flask command, it reads .env and the
.flaskenv `make dev` writes (the environment wins), so in a second terminal it follows make dev.
A sample body to sign: simulator/samples/checkout_session.completed.json.
"""

import argparse
import os
import secrets
import shlex
import sys
from pathlib import Path

import requests
from flask.cli import get_load_dotenv, load_dotenv

import signatures
from simulator import ACCESS_TOKEN, SPACE_ID, WEBHOOK_SECRET, create_app
from simulator.diagnose import diagnose

COMMANDS = ("serve", "trigger", "sign", "verify")
ACTION_FOR = {"completed": "complete", "cancelled": "cancel", "expired": "expire"}
DEMO_SESSION = {
    "name": "Triggered from the command line",
    "lineItems": [{"type": "custom", "name": "Test item", "price": {"currency": "SLE", "value": 1000}}],
}


class Failure(Exception):
    """What went wrong, in one line for stderr (exit status 1)."""


def main(argv: list[str]) -> int:
    """Run `python -m simulator ARGV`; returns the exit status. Problems the user can fix (a file
    that cannot be read, a simulator that does not answer) are one line on stderr, status 1."""
    if get_load_dotenv():  # FLASK_SKIP_DOTENV=1 turns it off, as for the flask command
        load_dotenv()
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["serve", *argv]  # `python -m simulator --port 8001`, as ever
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Failure as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m simulator", description="The local Monime simulator.")
    commands = top.add_subparsers(required=True, metavar="command")

    serve_ = commands.add_parser("serve", help="run the simulator (the default)")
    serve_.add_argument("--host", default="127.0.0.1")
    serve_.add_argument("--port", type=int, default=8001)
    serve_.set_defaults(run=serve)

    trigger_ = commands.add_parser("trigger", help="finish a session and deliver its signed event")
    trigger_.add_argument("event", choices=ACTION_FOR, help="the session's new status")
    trigger_.add_argument(
        "--session", help="a session of the simulator, e.g. an order's checkoutSessionId (default: a new one)"
    )
    trigger_.add_argument("--url", default="", help="deliver here (default: the simulator's webhook URL)")
    trigger_.add_argument("--force", action="store_true", help="also when the session is no longer pending")
    trigger_.add_argument("--simulator", default=simulator_url(), help="the running simulator (%(default)s)")
    trigger_.set_defaults(run=trigger)

    sign_ = commands.add_parser("sign", help="print the Monime-Signature for a body, and a curl line")
    sign_.add_argument("body", type=Path, help="the file holding the exact body")
    sign_.add_argument("--secret", default=configured_secrets()[0])
    sign_.add_argument("--timestamp", type=int, help="unix seconds (default: now)")
    sign_.add_argument("--url", default=webhook_url(), help="for the curl line (%(default)s)")
    sign_.set_defaults(run=sign)

    verify_ = commands.add_parser("verify", help="check a captured request's signature; say why it fails")
    verify_.add_argument("--header", required=True, help="the Monime-Signature header's value")
    verify_.add_argument("--body", required=True, type=Path, help="the file holding the exact body received")
    verify_.add_argument("--secret", action="append", help="may be repeated or comma-separated")
    verify_.add_argument("--tolerance", type=float, default=signatures.DEFAULT_TOLERANCE, help="seconds")
    verify_.add_argument("--now", type=float, help="unix seconds to judge the timestamp by (default: now)")
    verify_.set_defaults(run=verify)
    return top


def serve(args) -> int:
    create_app().run(host=args.host, port=args.port, threaded=True)
    return 0


def trigger(args) -> int:
    base = args.simulator.rstrip("/")
    session_id = args.session or new_session(base)
    options = {"force": args.force, "url": args.url}
    answer = ask(requests.post, f"{base}/_sim/sessions/{session_id}/{ACTION_FOR[args.event]}", json=options)
    if answer.status_code != 200:
        print(f"error: the simulator answered {answer.status_code}: {answer.text.strip()}", file=sys.stderr)
        return 1
    event, delivery = answer.json()["event"], answer.json()["delivery"]
    print(f"checkout_session.{args.event} {event['id']} for {session_id}")
    if delivery is None:
        print(f"not sent now: no webhook URL (pass --url), or a delay or out-of-order switch is on; see {base}/_sim/")
        return 1
    print(f"POST {delivery['url']} -> {delivery['status'] or delivery['error']} {delivery['body']}".rstrip())
    if not args.session:
        print(
            f"note: {session_id} is a new session, which matches no order: the service acknowledges its event "
            "as unmatched and changes nothing. To settle an order, pass --session with its checkoutSessionId "
            f"(GET /api/orders/<orderId>, or the sessions on {base}/_sim/).",
            file=sys.stderr,
        )
    return 0 if delivery["status"] and 200 <= delivery["status"] < 300 else 1


def new_session(base: str) -> str:
    headers = {
        "Authorization": f"Bearer {os.environ.get('SIMULATOR_ACCESS_TOKEN', ACCESS_TOKEN)}",
        "Monime-Space-Id": os.environ.get("SIMULATOR_SPACE_ID", SPACE_ID),
        "Idempotency-Key": secrets.token_hex(16),
    }
    created = ask(requests.post, f"{base}/v1/checkout-sessions", json=DEMO_SESSION, headers=headers)
    if created.status_code not in (200, 201):
        raise Failure(f"the simulator at {base} refused a new session: {created.status_code} {created.text.strip()}")
    return created.json()["result"]["id"]


def ask(send, url: str, **options) -> requests.Response:
    """`send(url, **options)` within 60 s; Failure naming the URL when it cannot be reached."""
    try:
        return send(url, timeout=60, **options)
    except requests.ConnectionError:
        problem = "nothing answers there"
    except requests.Timeout:
        problem = "no answer within 60 s"
    except requests.RequestException as exc:
        problem = type(exc).__name__
    raise Failure(
        f"cannot reach the simulator at {url}: {problem}. Is it running (make dev)? "
        "--simulator, SIMULATOR_URL or SIMULATOR_PORT say where it is"
    )


def read_body(path: Path) -> bytes:
    """The exact bytes of the body file; Failure naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Failure(f"cannot read the body file {str(path)!r}: {exc.strerror or exc}") from None


def sign(args) -> int:
    header = signatures.sign(read_body(args.body), args.secret, args.timestamp)
    print(f"{signatures.HEADER}: {header}")
    print(f"# valid for {signatures.DEFAULT_TOLERANCE} s from t; the body is sent byte for byte (--data-binary)")
    command = [
        "curl",
        "-sS",
        "-X",
        "POST",
        args.url,
        "-H",
        "Content-Type: application/json",
        "-H",
        f"{signatures.HEADER}: {header}",
        "--data-binary",
        f"@{args.body}",
    ]
    print(shlex.join(command))
    return 0


def verify(args) -> int:
    given = [secret for value in args.secret or [] for secret in value.split(",") if secret]
    secrets_ = given or configured_secrets()
    verdict = diagnose(read_body(args.body), args.header, secrets_, args.tolerance, args.now)
    print(verdict.text)
    return 0 if verdict.ok else 1


def configured_secrets() -> list[str]:
    configured = os.environ.get("MONIME_WEBHOOK_SECRET") or os.environ.get("SIMULATOR_WEBHOOK_SECRET") or ""
    return [secret.strip() for secret in configured.split(",") if secret.strip()] or [WEBHOOK_SECRET]


def simulator_url() -> str:
    """Where the running simulator is: SIMULATOR_URL, 127.0.0.1:SIMULATOR_PORT, MONIME_API_BASE_URL
    (make dev points the service at the simulator), else the default 127.0.0.1:8001."""
    if os.environ.get("SIMULATOR_URL"):
        return os.environ["SIMULATOR_URL"]
    if os.environ.get("SIMULATOR_PORT"):
        return f"http://127.0.0.1:{os.environ['SIMULATOR_PORT']}"
    return os.environ.get("MONIME_API_BASE_URL") or "http://127.0.0.1:8001"


def webhook_url() -> str:
    return f"{os.environ.get('PUBLIC_BASE_URL', 'http://127.0.0.1:8000').rstrip('/')}/api/webhooks/monime"
