"""Monime clients nobody here wrote, against the simulator over real HTTP:

- monime-package, a Monime client from the npm registry (tests/interop/, pinned by its
  package-lock.json, installed by `make test` with npm ci), run by node for every
  checkout-session call it offers, and for Monime's error envelope;
- a webhook endpoint checking signatures as Monime's official WordPress plugin does
  (tests/interop/verify_webhook.py: the standard library only, in its own process), which
  must accept every event the simulator delivers, and only those.

Without node, or npm to install the package, the npm half skips loudly; under CI=true it fails.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import requests

from conftest import ROOT, free_port
from support import require, wait_for

INTEROP = ROOT / "tests" / "interop"
PACKAGE = INTEROP / "node_modules" / "monime-package" / "package.json"
SUCCESS_URL, CANCEL_URL = "https://shop.example/checkout/success", "https://shop.example/checkout/cancel"


def installed() -> str | None:
    """Why monime-package cannot run here (None: it can); installs it with npm ci if it is missing."""
    if not shutil.which("node"):
        return "node is not installed"
    if not PACKAGE.exists():
        if not shutil.which("npm"):
            return "npm is not installed, and tests/interop/node_modules is missing"
        ran = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=INTEROP, capture_output=True, text=True, timeout=300
        )
        if ran.returncode != 0:
            return f"npm ci in tests/interop failed: {ran.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="module")
def node():
    require(installed(), "monime-package interop tests", "make test installs it: apt-get install -y nodejs npm")


def monime_package(simulator, *calls, token: str | None = None) -> list[dict]:
    """Make `calls` ([method, args…] of the client's checkoutSession) in one node process;
    one result per call: {"success": True, "data"} or {"success": False, "status", "body"}."""
    env = {
        "PATH": os.environ["PATH"],
        "MONIME_ACCESS_TOKEN": token or simulator.access_token,
        "MONIME_SPACE_ID": simulator.space_id,
    }
    ran = subprocess.run(
        ["node", "monime_package.js", simulator.url, json.dumps(calls)],
        cwd=INTEROP,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    results = json.loads(ran.stdout)
    assert len(results) == len(calls)
    return results


def create(name: str = "Starter bundle", amount: int = 2500, quantity: int = 2) -> list:
    """The package's create(name, amount, quantity, successUrl, cancelUrl, description)."""
    return ["create", name, amount, quantity, SUCCESS_URL, CANCEL_URL, "Two bundles"]


def monime_error(result: dict, status: int, reason: str) -> dict:
    """Monime's error envelope, as the package's error carries it."""
    assert (result["success"], result["status"]) == (False, status), result
    assert result["body"]["success"] is False and result["body"]["messages"] == []
    assert (result["body"]["error"]["code"], result["body"]["error"]["reason"]) == (status, reason)
    return result["body"]["error"]


def test_create_makes_a_pending_session_from_the_packages_own_body(node, simulator):
    [made] = monime_package(simulator, create())

    assert made["success"] is True and made["data"]["success"] is True
    session = made["data"]["result"]
    assert session["status"] == "pending" and session["id"].startswith("scs-")
    assert session["lineItems"]["data"][0]["price"] == {"currency": "SLE", "value": 2500}
    assert session["lineItems"]["data"][0]["quantity"] == 2
    assert (session["successUrl"], session["cancelUrl"]) == (SUCCESS_URL, CANCEL_URL)
    [request] = simulator.requests("POST")
    assert request["idempotencyKey"] and request["body"]["paymentOptions"]["momo"]["enabledProviders"] == ["m17", "m18"]


def test_get_one_list_and_delete_work_and_a_deleted_session_is_a_404_envelope(node, simulator):
    [made] = monime_package(simulator, create())
    session_id = made["data"]["result"]["id"]

    got, listed, deleted, gone, deleted_again = monime_package(
        simulator,
        ["getOne", session_id],
        ["get"],
        ["delete", session_id],
        ["getOne", session_id],
        ["delete", session_id],
    )

    assert got["data"]["result"] == made["data"]["result"]
    assert [s["id"] for s in listed["data"]["result"]] == [session_id]
    assert listed["data"]["pagination"] == {"count": 1, "next": None}
    assert deleted == {"success": True, "data": None}
    assert session_id in monime_error(gone, 404, "not_found")["message"]
    monime_error(deleted_again, 404, "not_found")
    assert simulator.sessions() == []


def test_the_list_the_package_reads_is_monimes_first_page_with_a_cursor_to_the_next(node, simulator):
    for n in range(11):
        monime_package(simulator, create(f"Order {n}"))  # the package makes one key per process

    [listed] = monime_package(simulator, ["get"])

    assert listed["data"]["pagination"]["count"] == 10 == len(listed["data"]["result"])
    assert listed["data"]["pagination"]["next"], "the package cannot page (it sends no `after`), but sees there is more"


def test_the_package_reuses_one_idempotency_key_per_process_so_its_second_create_is_a_409(node, simulator):
    # monime-package 1.0.8 draws its Idempotency-Key once, when it is loaded: within one process,
    # the same create is replayed to the same session and any other create is a conflict.
    first, again, other = monime_package(simulator, create(), create(), create("Another order"))

    assert again["data"]["result"]["id"] == first["data"]["result"]["id"]
    monime_error(other, 409, "idempotency_key_in_use")
    assert len(simulator.sessions()) == 1


@pytest.mark.parametrize("call", [["get"], ["getOne", "scs-anything"], ["delete", "scs-anything"], create()])
def test_a_wrong_access_token_is_a_401_envelope_for_every_call(node, simulator, call):
    [refused] = monime_package(simulator, call, token="mon_test_someone_else")

    monime_error(refused, 401, "unauthenticated")
    assert simulator.sessions() == []


# --- webhooks, verified as Monime's official plugin verifies them ---------------------------------


@pytest.fixture
def plugin_endpoint(simulator, tmp_path):
    """verify_webhook.py serving on a free port in a process of its own, knowing the simulator's
    secret, run with -I -S: no site-packages, so the standard library only. Yields its URL."""
    port, log = free_port(), (tmp_path / "verify_webhook.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(INTEROP / "verify_webhook.py"), str(port)],
        env={"WEBHOOK_SECRET": simulator.webhook_secret},
        stdout=log,
        stderr=log,
    )
    try:

        def listening() -> bool:
            assert process.poll() is None, (tmp_path / "verify_webhook.log").read_text()
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 10, f"verify_webhook.py listening on port {port}")
        yield f"http://127.0.0.1:{port}/monime/webhook"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def new_session(simulator, key: str) -> str:
    """A pending session, made with plain HTTP (these tests need no node)."""
    headers = {"Authorization": f"Bearer {simulator.access_token}", "Monime-Space-Id": simulator.space_id}
    body = {"name": "Order", "lineItems": [{"name": "Bundle", "price": {"currency": "SLE", "value": 2500}}]}
    response = requests.post(
        f"{simulator.url}/v1/checkout-sessions", json=body, headers=headers | {"Idempotency-Key": key}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["result"]["id"]


@pytest.mark.parametrize("action", ["complete", "cancel", "expire"])
def test_every_event_the_simulator_delivers_passes_the_plugins_check(simulator, plugin_endpoint, action):
    simulator.configure(webhook_url=plugin_endpoint, twice=True)

    finished = simulator.finish(new_session(simulator, f"key-{action}"), action)

    name = json.loads(finished["event"]["body"])["event"]["name"]
    deliveries = simulator.wait_for_deliveries(2)  # the second copy is sent by the worker
    assert [(d["status"], json.loads(d["body"])) for d in deliveries] == [(200, {"verified": True, "event": name})] * 2


def test_a_redelivered_event_signed_anew_passes_the_plugins_check(simulator, plugin_endpoint):
    simulator.configure(webhook_url=plugin_endpoint)
    event_id = simulator.complete(new_session(simulator, "key-redeliver"))["event"]["id"]

    redelivered = simulator.redeliver(event_id)

    assert (redelivered["status"], json.loads(redelivered["body"])["verified"]) == (200, True)


def test_an_event_signed_with_another_secret_is_refused_by_the_plugins_check(simulator, plugin_endpoint):
    simulator.configure(webhook_url=plugin_endpoint, webhook_secret="whsec_" + "x" * 40, retry_attempts=1)

    delivery = simulator.complete(new_session(simulator, "key-other-secret"))["delivery"]

    assert (delivery["status"], json.loads(delivery["body"])) == (
        401,
        {"verified": False, "reason": "invalid signature"},
    )
