"""The simulator's command line for integrators: `sign` a body and curl it at an endpoint,
`verify` a captured request and say exactly why it fails, `trigger` an event at any URL."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from werkzeug.wrappers import Request, Response

import signatures
from conftest import ROOT, free_port
from simulator.cli import main
from support import WEBHOOK_PATH, WEBHOOK_SECRET, checkout, order, serving, signed_event

VECTORS = json.loads((ROOT / "tests/data/monime-webhook-vectors.json").read_text())["vectors"]
EVENT = VECTORS[0]  # a Monime event, its secret, timestamp and header


def run(capsys, *argv: str) -> tuple[int, str]:
    """`python -m simulator ARGV`, in process: (exit status, what it printed)."""
    status = main(list(argv))
    return status, capsys.readouterr().out


def python_m_simulator(*argv: str, cwd=ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "simulator", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


SAMPLE = ROOT / "simulator/samples/checkout_session.completed.json"


# --- sign ---------------------------------------------------------------------------------------


def test_sign_prints_the_header_of_monimes_test_vector(tmp_path, capsys):
    body = tmp_path / "event.json"
    body.write_text(EVENT["body"])

    status, out = run(capsys, "sign", str(body), "--secret", EVENT["secret"], "--timestamp", str(EVENT["timestamp"]))

    assert status == 0
    assert out.splitlines()[0] == f"Monime-Signature: {EVENT['header']}"


def test_sign_signs_the_exact_bytes_of_the_file_now(tmp_path, capsys):
    body = tmp_path / "event.json"
    body.write_bytes(b'{"hello": "world"}\n')  # the newline an editor adds is signed too

    status, out = run(capsys, "sign", str(body), "--secret", "whsec_mine")

    header = out.splitlines()[0].removeprefix("Monime-Signature: ")
    signatures.verify(body.read_bytes(), header, ["whsec_mine"])  # fresh: within the tolerance
    with pytest.raises(signatures.SignatureError):
        signatures.verify(b'{"hello": "world"}', header, ["whsec_mine"])


def test_the_printed_curl_line_has_the_shape_of_a_signed_webhook_post(tmp_path, capsys):
    body = tmp_path / "my event.json"
    body.write_text("{}")

    _, out = run(capsys, "sign", str(body), "--secret", "whsec_mine", "--url", "http://127.0.0.1:9/hooks")

    [curl] = [line for line in out.splitlines() if line.startswith("curl ")]
    header = out.splitlines()[0]
    assert shlex.split(curl) == [
        "curl",
        "-sS",
        "-X",
        "POST",
        "http://127.0.0.1:9/hooks",
        "-H",
        "Content-Type: application/json",
        "-H",
        header,
        "--data-binary",
        f"@{body}",
    ]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_printed_curl_line_delivers_a_webhook_the_service_accepts(tmp_path, capsys, app):
    body = tmp_path / "event.json"
    body.write_bytes(signed_event("checkout_session.completed", "scs-by-hand")["body"] + b"\n")

    with serving(app) as url:
        _, out = run(capsys, "sign", str(body), "--secret", WEBHOOK_SECRET, "--url", f"{url}{WEBHOOK_PATH}")
        [curl] = [line for line in out.splitlines() if line.startswith("curl ")]
        answer = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30, check=True)

    assert json.loads(answer.stdout) | {"eventId": None} == {
        "received": True,
        "eventId": None,
        "duplicate": False,
        "outcome": "unmatched",
    }


# --- verify -------------------------------------------------------------------------------------


def verify(capsys, tmp_path, body: bytes, header: str, *secrets: str, now: int = EVENT["timestamp"] + 5):
    path = tmp_path / "captured.body"
    path.write_bytes(body)
    secret_args = [arg for secret in secrets for arg in ("--secret", secret)]
    return run(capsys, "verify", "--header", header, "--body", str(path), *secret_args, "--now", str(now))


def test_verify_says_ok_and_which_secret_signed(tmp_path, capsys):
    status, out = verify(capsys, tmp_path, EVENT["body"].encode(), EVENT["header"], "whsec_old", EVENT["secret"])

    assert status == 0
    assert out.startswith("OK  signed with secret #2 (whsec_test…), 5 s ago.")


def test_verify_accepts_the_header_pasted_with_its_name(tmp_path, capsys):
    header = f"Monime-Signature: {EVENT['header']}"
    assert verify(capsys, tmp_path, EVENT["body"].encode(), header, EVENT["secret"])[0] == 0


def test_verify_names_a_wrong_secret_and_says_what_cannot_be_told_apart(tmp_path, capsys):
    status, out = verify(capsys, tmp_path, EVENT["body"].encode(), EVENT["header"], "whsec_someone_elses")

    assert status == 1
    assert out.startswith("FAIL wrong secret, or a body changed in a way not recognised")
    assert "An HMAC cannot tell these two apart" in out
    assert "Tried: whsec_some…" in out


def test_verify_names_a_secret_with_stray_quotes(tmp_path, capsys):
    status, out = verify(capsys, tmp_path, EVENT["body"].encode(), EVENT["header"], f'"{EVENT["secret"]}"')

    assert status == 1
    assert out.startswith("FAIL wrong secret: secret #1 has stray quotes or whitespace around it")


def test_verify_names_a_stale_timestamp_of_a_right_signature(tmp_path, capsys):
    now = EVENT["timestamp"] + 301

    status, out = verify(capsys, tmp_path, EVENT["body"].encode(), EVENT["header"], EVENT["secret"], now=now)

    assert status == 1
    stale = f"FAIL stale timestamp: t={EVENT['timestamp']} was 301 s ago, outside the 300 s tolerance."
    assert out.splitlines()[0] == stale
    assert "The secret and the body are right" in out


def test_verify_names_a_timestamp_from_the_future(tmp_path, capsys):
    status, out = verify(
        capsys, tmp_path, EVENT["body"].encode(), EVENT["header"], EVENT["secret"], now=EVENT["timestamp"] - 400
    )

    assert status == 1 and "was 400 s in the future" in out


BODY = EVENT["body"].encode()
PRETTY = b'{\n  "hello": "world"\n}'
UTF8 = json.dumps({"name": "Salone Goods \u00b7 3 items"}, separators=(",", ":"), ensure_ascii=False).encode()
CHANGED_BODIES = {  # (the body signed, the body received, the change verify must name)
    "a trailing newline added": (BODY, BODY + b"\n", "without its trailing newline"),
    "its trailing newline lost": (BODY + b"\n", BODY, "with a trailing newline"),
    "CRLF line endings": (PRETTY, PRETTY.replace(b"\n", b"\r\n"), "with LF line endings"),
    "a byte-order mark": (BODY, b"\xef\xbb\xbf" + BODY, "without the UTF-8 byte-order mark"),
    "JSON re-serialised with spaces": (BODY, json.dumps(json.loads(BODY)).encode(), "as JSON written compact"),
    "JSON re-serialised with \\u escapes": (UTF8, json.dumps(json.loads(UTF8)).encode(), "UTF-8 kept"),
}


@pytest.mark.parametrize(("signed", "received", "change"), CHANGED_BODIES.values(), ids=CHANGED_BODIES.keys())
def test_verify_names_a_changed_body_and_the_change_it_detected(tmp_path, capsys, signed, received, change):
    header = signatures.sign(signed, EVENT["secret"], EVENT["timestamp"])

    status, out = verify(capsys, tmp_path, received, header, "whsec_other", EVENT["secret"])

    assert status == 1
    first = out.splitlines()[0]
    assert first.startswith("FAIL body changed: the signature matches the body ")
    assert change in first and first.endswith("(secret #2).")
    assert "verify the raw request body" in out


def test_a_changed_body_with_a_stale_timestamp_names_both(tmp_path, capsys):
    status, out = verify(capsys, tmp_path, BODY + b"\n", EVENT["header"], EVENT["secret"], now=EVENT["timestamp"] + 999)

    assert status == 1
    assert out.splitlines()[0].startswith("FAIL body changed")
    assert out.splitlines()[-1].startswith("FAIL stale timestamp")


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("", "FAIL missing Monime-Signature header"),
        ("v1=abc", "FAIL malformed Monime-Signature header: expected t=<unix seconds>,v1=<signature>"),
        ("t=yesterday,v1=abc", "FAIL malformed Monime-Signature header: t must be unix seconds"),
        ("t1700000000 v1 abc", "FAIL malformed Monime-Signature header."),
    ],
)
def test_verify_names_a_missing_or_malformed_header(tmp_path, capsys, header, says):
    status, out = verify(capsys, tmp_path, BODY, header, EVENT["secret"])

    assert status == 1
    assert out.startswith(says)
    assert "Expected: Monime-Signature: t=<unix seconds>,v1=" in out


def test_verify_reads_the_secrets_as_the_service_does_from_the_environment(tmp_path):
    body = tmp_path / "captured.body"
    body.write_text(EVENT["body"])
    env = {"MONIME_WEBHOOK_SECRET": f"whsec_new,{EVENT['secret']}", "PATH": "/usr/bin:/bin"}

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator",
            "verify",
            "--header",
            EVENT["header"],
            "--body",
            str(body),
            "--now",
            str(EVENT["timestamp"]),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (done.returncode, done.stdout.split(",")[0]) == (0, "OK  signed with secret #2 (whsec_test…)")


# --- trigger ------------------------------------------------------------------------------------


@pytest.fixture
def endpoint():
    """Any webhook endpoint: records what it is sent."""
    received = []

    @Request.application
    def record(request: Request) -> Response:
        received.append((request.get_data(), request.headers.get(signatures.HEADER)))
        return Response('{"ok": true}', content_type="application/json")

    with serving(record) as url:
        yield f"{url}/my/hooks", received


def test_trigger_makes_a_session_and_delivers_its_signed_event_to_any_url(simulator, endpoint, capsys):
    url, received = endpoint

    status, out = run(capsys, "trigger", "cancelled", "--simulator", simulator.url, "--url", url)

    assert status == 0
    [body, header] = received[0]
    signatures.verify(body, header, [simulator.webhook_secret])
    envelope = json.loads(body)
    assert envelope["event"]["name"] == "checkout_session.cancelled"
    assert [s["status"] for s in simulator.sessions()] == ["cancelled"]
    first, second = out.splitlines()
    assert first == f"checkout_session.cancelled {envelope['event']['id']} for {envelope['object']['id']}"
    assert second == f'POST {url} -> 200 {{"ok": true}}'


def test_trigger_completes_a_checkout_of_the_service(app, client, simulator, capsys):
    body = checkout(client)

    with serving(app) as url:
        status, out = run(
            capsys,
            "trigger",
            "completed",
            "--session",
            body["sessionId"],
            "--simulator",
            simulator.url,
            "--url",
            f"{url}{WEBHOOK_PATH}",
        )

    assert status == 0
    answered = out.splitlines()[-1].split(" -> ")[1]
    assert answered.startswith("200 ") and json.loads(answered[4:])["outcome"] == "applied"
    assert order(client, body["orderId"])["status"] == "completed"


def test_trigger_fails_when_the_endpoint_refuses(simulator, capsys):
    refuse = Response('{"error": "invalid_signature"}', status=401, content_type="application/json")

    with serving(refuse) as url:
        status, out = run(capsys, "trigger", "completed", "--simulator", simulator.url, "--url", url)

    assert status == 1
    assert out.splitlines()[-1] == f'POST {url} -> 401 {{"error": "invalid_signature"}}'


def test_trigger_fails_when_nothing_is_sent(simulator, capsys):
    status, out = run(capsys, "trigger", "expired", "--simulator", simulator.url)  # no webhook URL anywhere

    assert status == 1
    assert "not sent now: no webhook URL (pass --url)" in out


def test_trigger_of_an_unknown_session_says_what_the_simulator_answered(simulator, capsys):
    status = main(["trigger", "completed", "--session", "scs-unknown", "--simulator", simulator.url])

    assert status == 1
    assert "error: the simulator answered 404" in capsys.readouterr().err


# --- serve, and the commands' help ----------------------------------------------------------------


def test_python_m_simulator_lists_its_commands():
    done = python_m_simulator("--help")

    assert done.returncode == 0
    for command in ("serve", "trigger", "sign", "verify"):
        assert command in done.stdout


def test_trigger_of_a_new_session_says_it_matches_no_order_and_how_to_pick_one(simulator, endpoint, capsys):
    status = main(["trigger", "completed", "--simulator", simulator.url, "--url", endpoint[0]])

    assert status == 0
    [note] = capsys.readouterr().err.splitlines()
    assert note.startswith("note: scs-") and "matches no order" in note
    assert "--session with its checkoutSessionId" in note and f"{simulator.url}/_sim/" in note


@pytest.mark.parametrize(
    "setting",
    [
        {"SIMULATOR_PORT": "{port}"},
        {"MONIME_API_BASE_URL": "http://127.0.0.1:{port}"},
        {"SIMULATOR_URL": "http://127.0.0.1:{port}", "SIMULATOR_PORT": "1"},
    ],
)
def test_trigger_follows_the_running_setup_and_a_simulator_not_there_is_one_line_naming_it(setting):
    port = free_port()  # nothing listens there
    env = {"PATH": os.environ["PATH"]} | {name: value.format(port=port) for name, value in setting.items()}

    done = python_m_simulator("trigger", "completed", env=env)

    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        f"error: cannot reach the simulator at http://127.0.0.1:{port}/v1/checkout-sessions: nothing answers "
        "there. Is it running (make dev)? --simulator, SIMULATOR_URL or SIMULATOR_PORT say where it is"
    ]


def test_trigger_reads_the_settings_make_dev_writes_to_flaskenv(tmp_path, simulator, endpoint):
    (tmp_path / ".flaskenv").write_text(f"SIMULATOR_PORT='{simulator.url.rsplit(':', 1)[1]}'\n")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}

    done = python_m_simulator("trigger", "cancelled", "--url", endpoint[0], cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert [session["status"] for session in simulator.sessions()] == ["cancelled"]


@pytest.mark.parametrize("command", [["verify", "--header", "t=1,v1=x", "--body"], ["sign"]])
def test_a_body_file_that_cannot_be_read_is_one_line(tmp_path, command):
    done = python_m_simulator(*command, str(tmp_path / "missing.json"))

    assert (done.returncode, done.stdout) == (1, "")
    assert (
        done.stderr
        == f"error: cannot read the body file {str(tmp_path / 'missing.json')!r}: No such file or directory\n"
    )


def test_the_sample_event_signs_and_verifies_as_the_readme_shows(capsys):
    status, out = run(capsys, "sign", str(SAMPLE), "--secret", WEBHOOK_SECRET)
    header = out.splitlines()[0].removeprefix("Monime-Signature: ")

    assert status == 0
    assert run(capsys, "verify", "--header", header, "--body", str(SAMPLE), "--secret", WEBHOOK_SECRET)[0] == 0
    assert json.loads(SAMPLE.read_text())["event"]["name"] == "checkout_session.completed"
