"""`make dev` (scripts/dev): the service and the simulator, paid in a browser's steps, stopped by Ctrl-C."""

import os
import signal
import subprocess

import pytest
import requests

from conftest import ROOT, free_port, wait_until_healthy
from support import order_payload


@pytest.fixture
def dev(tmp_path):
    ports = {"PORT": str(free_port()), "SIMULATOR_PORT": str(free_port())}
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MONIME_", "SIMULATOR_"))}
    env |= ports | {"DATABASE_URL": f"sqlite:///{tmp_path}/dev.sqlite3", "APP_URL": "http://127.0.0.1:3000"}
    log = tmp_path / "dev.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [ROOT / "scripts" / "dev"], env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{ports['PORT']}"
    try:
        wait_until_healthy(url, process, log)
        yield url, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_make_dev_takes_a_payment_through_the_hosted_page_and_stops_on_ctrl_c(dev):
    url, process = dev
    created = requests.post(f"{url}/api/checkout", json=order_payload("ord_dev"), timeout=10)
    assert created.status_code == 201, created.text

    hosted_page = requests.get(created.json()["redirectUrl"], timeout=10)
    assert hosted_page.status_code == 200 and "Pay" in hosted_page.text
    paid = requests.post(f"{created.json()['redirectUrl']}/pay", allow_redirects=False, timeout=10)
    assert paid.headers["Location"] == f"{url}/api/checkout/success?orderId=ord_dev"
    back = requests.get(paid.headers["Location"], allow_redirects=False, timeout=10)
    assert back.headers["Location"] == "http://127.0.0.1:3000/checkout/success?orderId=ord_dev"
    assert requests.get(f"{url}/api/orders/ord_dev", timeout=10).json()["status"] == "completed"

    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    process.wait(timeout=15)
    for address in (url, created.json()["redirectUrl"]):
        with pytest.raises(requests.ConnectionError):
            requests.get(address, timeout=2)
