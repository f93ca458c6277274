"""`make dev` (scripts/dev): the service, the simulator, the storefront and the notification receiver,
an order paid through them, in a browser's steps and in a browser, and all four stopped by
Ctrl-C, also when it was started with SIGINT ignored."""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from browser import chromium
from conftest import ROOT, free_port, wait_until_healthy
from support import order_payload, wait_for

NOT_INHERITED = (
    "MONIME_",
    "SIMULATOR_",
    "STOREFRONT_",
    "APP_URL",
    "CORS_ORIGINS",
    "PUBLIC_BASE_URL",
    "DATABASE_URL",
    "DEV_SIGNALS",
    "NOTIFY_",
    "ADMIN_TOKEN",
)


@dataclass
class Dev:
    service: str
    simulator: str
    storefront: str
    receiver: str
    process: subprocess.Popen
    log: Path
    started: float  # time.monotonic() when scripts/dev was started

    def wait_until_ready(self, deadline: float = 30) -> None:
        """The service healthy, and the storefront's URL printed and answering."""
        wait_until_healthy(self.service, self.process, self.log, deadline)
        wait_for(
            self.storefront_answers,
            deadline,
            lambda: f"the storefront at {self.storefront}:\n{self.log.read_text()[-3000:]}",
            interval=0.05,
        )

    def storefront_answers(self) -> bool:
        assert self.process.poll() is None, f"scripts/dev exited:\n{self.log.read_text()[-3000:]}"
        if f"Open the demo shop:  {self.storefront}" not in self.log.read_text():
            return False
        try:
            return requests.get(self.storefront, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def ctrl_c(self) -> None:
        """What Ctrl-C in the terminal does: SIGINT to the whole process group; then all four
        are stopped and scripts/dev has exited."""
        os.killpg(self.process.pid, signal.SIGINT)
        self.assert_all_stopped()

    def assert_all_stopped(self) -> None:
        """scripts/dev exits within 15 s, and none of the four answers any more."""
        self.process.wait(timeout=15)
        for address in (self.service, self.simulator, self.storefront, self.receiver):
            with pytest.raises(requests.ConnectionError):
                requests.get(address, timeout=2)


# Starts its arguments with SIGINT ignored, inherited through exec: as in a background job,
# or under a CI runner started with nohup or `&`.
IGNORING_SIGINT = [
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])",
]  # fmt: skip


@pytest.fixture
def dev(request, tmp_path):
    """scripts/dev started in a session of its own on free ports; `@pytest.mark.parametrize("dev",
    ["sigint ignored"], indirect=True)` starts it with SIGINT ignored."""
    ports = {name: free_port() for name in ("PORT", "SIMULATOR_PORT", "STOREFRONT_PORT", "NOTIFY_PORT")}
    env = {key: value for key, value in os.environ.items() if not key.startswith(NOT_INHERITED)}
    env |= {name: str(port) for name, port in ports.items()} | {"DATABASE_URL": f"sqlite:///{tmp_path}/dev.sqlite3"}
    log = tmp_path / "dev.log"
    launcher = IGNORING_SIGINT if getattr(request, "param", None) == "sigint ignored" else []
    flaskenv = ROOT / ".flaskenv"  # scripts/dev writes it; a developer's own make dev's is put back after
    kept = flaskenv.read_bytes() if flaskenv.exists() else None
    started = time.monotonic()
    with log.open("w") as output:
        process = subprocess.Popen(
            [*launcher, ROOT / "scripts" / "dev"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = "http://127.0.0.1:{}".format
    try:
        yield Dev(*(url(ports[name]) for name in ports), process, log, started)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if kept is None:
            flaskenv.unlink(missing_ok=True)
        else:
            flaskenv.write_bytes(kept)


def test_make_dev_serves_all_four_takes_a_payment_and_stops_them_on_ctrl_c(dev):
    dev.wait_until_ready()
    shop = requests.get(dev.storefront, timeout=10)
    assert "Salone Goods" in shop.text and 'src="/static/shop.js"' in shop.text
    assert dev.service in requests.get(f"{dev.storefront}/config.js", timeout=10).text
    assert requests.get(f"{dev.storefront}/checkout/success?orderId=x", timeout=10).status_code == 200

    created = requests.post(
        f"{dev.service}/api/checkout", json=order_payload("ord_dev"), headers={"Origin": dev.storefront}, timeout=10
    )
    assert created.status_code == 201, created.text
    assert created.headers["Access-Control-Allow-Origin"] == dev.storefront  # the storefront may call it
    hosted_page = requests.get(created.json()["redirectUrl"], timeout=10)
    assert hosted_page.status_code == 200 and "Pay" in hosted_page.text
    paid = requests.post(f"{created.json()['redirectUrl']}/pay", allow_redirects=False, timeout=10)
    assert paid.headers["Location"] == f"{dev.service}/api/checkout/success?orderId=ord_dev"
    back = requests.get(paid.headers["Location"], allow_redirects=False, timeout=10)
    assert back.headers["Location"] == f"{dev.storefront}/checkout/success?orderId=ord_dev"
    assert requests.get(f"{dev.service}/api/orders/ord_dev", timeout=10).json()["status"] == "completed"
    wait_for(  # the example receiver verified the order notification and printed it
        lambda: "order.completed ord_dev completed" in dev.log.read_text(),
        15,
        lambda: f"the receiver to print the notification:\n{dev.log.read_text()[-3000:]}",
    )
    printed = re.search(
        rf"Operator page +{re.escape(dev.service)}/admin/ +\(sign in with ADMIN_TOKEN: (\S+)\)", dev.log.read_text()
    )
    assert printed, dev.log.read_text()[-3000:]
    operator = requests.Session()
    form = operator.get(f"{dev.service}/admin/sign-in", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
    signed_in = operator.post(
        f"{dev.service}/admin/sign-in",
        data={"token": printed[1], "csrf_token": csrf},
        allow_redirects=False,
        timeout=10,
    )
    assert signed_in.status_code == 303
    assert "ord_dev" in operator.get(f"{dev.service}/admin/orders", timeout=10).text

    dev.ctrl_c()


@pytest.mark.parametrize("dev", ["sigint ignored"], indirect=True)
def test_ctrl_c_stops_all_four_even_when_make_dev_was_started_with_sigint_ignored(dev):
    dev.wait_until_ready()
    dev.ctrl_c()
    assert dev.process.returncode == 130, "scripts/dev ended by its own SIGINT trap"


def test_sigterm_to_make_dev_alone_stops_all_four(dev):
    """As a process supervisor or `kill` stops it: scripts/dev's own pid, not its process group."""
    dev.wait_until_ready()
    dev.process.terminate()
    dev.assert_all_stopped()
    assert dev.process.returncode == 143, "scripts/dev ended by its own SIGTERM trap"


def test_from_make_dev_to_an_order_paid_in_the_browser_within_a_minute(dev, capsys):
    with chromium() as browser:
        dev.wait_until_ready()
        page = browser.new_page()
        page.goto(dev.storefront)
        page.locator('.product[data-product="solar-lantern"] button').click()
        page.get_by_role("button", name="Check out").click()
        page.get_by_label("Orange Money").check()
        page.get_by_role("button", name=re.compile("^Pay")).click()
        expect(page.locator("#status")).to_have_text("completed")
        took = time.monotonic() - dev.started

    with capsys.disabled():
        print(f"\n  from starting scripts/dev to an order paid in the browser: {took:.1f} s")
    dev.ctrl_c()


def readme_commands() -> list[str]:
    """Every `flask --app app …` and `python -m simulator …` line of the README's sh blocks, as printed."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.MULTILINE | re.DOTALL)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith(("flask --app app ", "python -m simulator "))]


def test_every_operations_and_simulator_command_the_readme_prints_works_from_a_second_terminal(dev):
    """As a newcomer runs them during make dev: another shell in the checkout, the virtualenv active
    (PATH, as `. .venv/bin/activate` sets it), none of make dev's settings exported. The README's
    placeholders (ord_1001, scs-…, evt-…, msg_…, the signature header) become real ones."""
    dev.wait_until_ready()
    paid = requests.post(f"{dev.service}/api/checkout", json=order_payload("ord_dev_paid"), timeout=10).json()
    requests.post(f"{paid['redirectUrl']}/pay", allow_redirects=False, timeout=10)
    pending = requests.post(f"{dev.service}/api/checkout", json=order_payload("ord_dev_pending"), timeout=10).json()
    deliveries = requests.get(f"{dev.simulator}/_sim/deliveries", timeout=10).json()["deliveries"]
    [event] = [delivery for delivery in deliveries if delivery["attempt"] == 1]
    wait_for(lambda: "order.completed ord_dev_paid" in dev.log.read_text(), 15, "the paid order's notification")
    shell = {key: value for key, value in os.environ.items() if not key.startswith(NOT_INHERITED)}
    shell.pop("FLASK_SKIP_DOTENV")
    shell |= {"PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(ROOT / ".venv")}
    notification = subprocess.run(
        ["flask", "--app", "app", "notifications", "list"], cwd=ROOT, env=shell, capture_output=True, text=True
    ).stdout.split()[0]
    header = None
    commands = readme_commands()
    assert len(commands) >= 15 and any(c.startswith("python -m simulator verify") for c in commands)

    for printed in commands:
        command = (
            printed.replace("ord_1001", "ord_dev_paid")
            .replace("scs-…", pending["sessionId"])
            .replace("evt-…", event["eventId"])
            .replace("msg_…", notification)
            .replace("t=1764115200,v1=…", header or "")
        )
        run = subprocess.run(["bash", "-c", command], cwd=ROOT, env=shell, capture_output=True, text=True, timeout=60)

        said = f"{printed}\n{run.stdout}{run.stderr}"
        assert "Traceback" not in said and "Error:" not in run.stdout, said
        if " orders resolve " in printed:  # the paid order was never held: said in one line
            assert (run.returncode, run.stderr) == (1, "Error: order 'ord_dev_paid' is not held for review\n"), said
            continue
        assert run.returncode == 0, said
        assert (run.stdout + run.stderr).strip(), said  # every command says something, also when there is nothing
        if " sign " in printed:
            header = run.stdout.splitlines()[0].removeprefix("Monime-Signature: ")
        if " verify " in printed:
            assert run.stdout.startswith("OK"), said

    shown = subprocess.run(
        ["bash", "-c", "flask --app app orders show ord_dev_pending"],
        cwd=ROOT,
        env=shell,
        capture_output=True,
        text=True,
    ).stdout
    assert shown.startswith("order ord_dev_pending [completed] SLE 51.50 "), shown  # completed by `trigger --session`
    dev.ctrl_c()
