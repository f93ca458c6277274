"""Slow clients (issue 10, point 9): gunicorn drops a client that trickles its
body past GUNICORN_CLIENT_TIMEOUT, and deploy/nginx.conf, run in front of
gunicorn, buffers requests, drops stalled clients, refuses bodies over 1 MiB and
passes the client's address on."""

import http.client
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from config import MAX_BODY_BYTES
from conftest import ROOT, free_port, gunicorn
from support import WEBHOOK_PATH, chunked, exchange, wait_for

BODY_BYTES = 1000  # what each slow client announces; at its pace it would take minutes to send


def webhook_headers(port: int) -> bytes:
    return (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Monime-Signature: t=1,v1=x\r\nContent-Length: {BODY_BYTES}\r\n\r\n"
    ).encode()


class Tricklers:
    """`count` clients that each send a webhook's headers, then one byte of its body
    every `interval` seconds, all served by one background thread. A client is over
    when the server closes its connection; `over` holds what each one received."""

    def __init__(self, port: int, count: int, interval: float):
        self.interval, self.open, self.over = interval, {}, []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(webhook_headers(port))
            sock.setblocking(False)
            self.open[sock] = b""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in self.open:
                selector.register(sock, selectors.EVENT_READ)
            next_byte = time.monotonic() + self.interval
            while self.open and not self.stopping.is_set():
                for key, _ in selector.select(timeout=max(0.0, next_byte - time.monotonic())):
                    self._read(selector, key.fileobj)
                if time.monotonic() >= next_byte:
                    next_byte += self.interval
                    for sock in list(self.open):
                        try:
                            sock.send(b"x")
                        except OSError:
                            self._end(selector, sock)

    def _read(self, selector, sock) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:  # reset by the server
            data = b""
        if data:
            self.open[sock] += data
        else:
            self._end(selector, sock)

    def _end(self, selector, sock) -> None:
        selector.unregister(sock)
        self.over.append(self.open.pop(sock))
        sock.close()

    def still_open(self) -> int:
        return len(self.open)

    def wait_until_all_dropped(self, deadline: float) -> list[bytes]:
        """What each client received, once the server has closed every connection."""
        self.thread.join(deadline)
        assert not self.thread.is_alive(), f"{self.still_open()} slow clients still connected after {deadline} s"
        return self.over

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        for sock in self.open:
            sock.close()


@contextmanager
def trickling(port: int, count: int, interval: float):
    clients = Tricklers(port, count, interval)
    try:
        yield clients
    finally:
        clients.close()


def test_gunicorn_drops_a_client_still_sending_its_body_after_the_client_timeout(database_url, simulator, tmp_path):
    """Fewer slow clients than threads: /healthz answers while they trickle, and
    each is answered 4xx and disconnected long before it would have finished."""
    settings = {"GUNICORN_CLIENT_TIMEOUT": "3", "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "4"}
    with gunicorn(database_url, simulator.url, tmp_path / "gunicorn.log", **settings) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with trickling(port, count=3, interval=0.2) as clients:
            health = requests.get(server.url + "/healthz", timeout=10)
            open_meanwhile = clients.still_open()
            received = clients.wait_until_all_dropped(deadline=30)
        dropped = server.access_log(lambda line: line["path"] == WEBHOOK_PATH, at_least=3)

    assert health.status_code == 200
    assert open_meanwhile == 3
    assert len(received) == 3
    assert all(re.match(rb"HTTP/1\.1 4\d\d ", answer) for answer in received), received
    assert all(b"Connection: close" in answer for answer in received), received
    assert [line["status"] // 100 for line in dropped] == [4, 4, 4]


@pytest.mark.parametrize(("path", "limit"), [(WEBHOOK_PATH, MAX_BODY_BYTES), ("/api/checkout", 64 * 1024)])
def test_a_chunked_body_that_breaks_off_right_at_the_limit_is_400(database_url, simulator, tmp_path, path, limit):
    """The service reads one byte past the limit to tell a whole body from one over it: when
    that byte's chunk is malformed, or never comes before the client timeout, the answer is a
    JSON 400 (it was a 500 with a traceback)."""
    whole = chunked(path, b" " * limit, **{"Content-Type": "application/json"})
    body_end = whole.index(b"0\r\n\r\n", len(whole) - 5)  # the last-chunk marker
    settings = {"GUNICORN_CLIENT_TIMEOUT": "1", "GUNICORN_WORKERS": "1", "GUNICORN_THREADS": "4"}
    with gunicorn(database_url, simulator.url, tmp_path / "gunicorn.log", **settings) as server:
        malformed = exchange(server.url, whole[:body_end] + b"zz\r\n")
        stalled = exchange(server.url, whole[:body_end])  # then nothing: cut by the client timeout

    for status, answer in (malformed, stalled):
        assert status == 400, answer[:300]
        assert "cannot be read" in json.loads(answer)["error"]["message"]


# --- nginx in front ---------------------------------------------------------

NGINX = Path(shutil.which("nginx") or "/usr/sbin/nginx")
# The test's nginx drops a stalled client after this many seconds (deploy/nginx.conf: 10 s).
STALL_TIMEOUT = 4


def nginx_binary() -> Path:
    """Debian's nginx. Without it the test skips loudly, and under CI=true fails."""
    if NGINX.exists():
        return NGINX
    problem = "nginx is not installed (make test installs it: apt-get install -y nginx)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the proxy tests cannot run: {problem}", pytrace=False)
    pytest.skip(f"PROXY TESTS DID NOT RUN: {problem}")


def rendered_config(upstream_port: int, port: int) -> str:
    """deploy/nginx.conf with the test's ports and a short stall timeout, and nothing else changed."""
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    replacements = {
        r"server 127\.0\.0\.1:8000;": f"server 127.0.0.1:{upstream_port};",
        r"listen 8080;": f"listen 127.0.0.1:{port};",
        r"client_body_timeout \d+s;": f"client_body_timeout {STALL_TIMEOUT}s;",
        r"client_header_timeout \d+s;": f"client_header_timeout {STALL_TIMEOUT}s;",
    }
    for pattern, replacement in replacements.items():
        config, found = re.subn(pattern, replacement, config)
        assert found == 1, f"deploy/nginx.conf no longer has {pattern!r}"
    return config


@contextmanager
def nginx(upstream_url: str, directory: Path):
    """deploy/nginx.conf in front of `upstream_url`, as a process of this test; yields its URL."""
    binary = nginx_binary()
    port, prefix = free_port(), directory / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(rendered_config(int(upstream_url.rsplit(":", 1)[1]), port))
    log = prefix / "nginx.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [binary, "-p", prefix, "-e", "stderr", "-c", prefix / "nginx.conf",
             "-g", f"daemon off; pid {prefix / 'nginx.pid'};"],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, f"nginx exited with {process.returncode}:\n{log.read_text()}"
            return answers(url)

        wait_for(ready, 15, lambda: f"nginx to answer:\n{log.read_text()}", interval=0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def answers(url: str) -> bool:
    try:
        return requests.get(url + "/livez", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def proxied(database_url, simulator_server, tmp_path_factory):
    """gunicorn (two workers of four threads, PROXY_HOPS=1) behind deploy/nginx.conf."""
    directory = tmp_path_factory.mktemp("proxied")
    settings = {"GUNICORN_THREADS": "4", "PROXY_HOPS": "1"}
    with (
        gunicorn(database_url, simulator_server.url, directory / "gunicorn.log", **settings) as server,
        nginx(server.url, directory) as url,
    ):
        yield server, url


def test_behind_nginx_seventy_stalled_clients_do_not_reach_gunicorn(proxied, simulator):
    server, url = proxied
    port = int(url.rsplit(":", 1)[1])
    webhooks_before = len(server.access_log(lambda line: line["path"] == WEBHOOK_PATH))

    with trickling(port, count=70, interval=60) as clients:  # headers, then silence
        health = requests.get(url + "/healthz", timeout=10)
        open_meanwhile = clients.still_open()
        received = clients.wait_until_all_dropped(deadline=STALL_TIMEOUT + 20)

    assert health.status_code == 200  # 70 stalled clients, 8 gunicorn threads
    assert open_meanwhile == 70
    assert len(received) == 70  # every one dropped by client_body_timeout
    assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408") for answer in received), received[:3]
    assert len(server.access_log(lambda line: line["path"] == WEBHOOK_PATH)) == webhooks_before


def test_behind_nginx_a_body_over_1_mib_is_413_and_1_mib_reaches_the_service(proxied, simulator):
    _server, url = proxied
    over = requests.post(url + WEBHOOK_PATH, data=b"x" * (MAX_BODY_BYTES + 1), timeout=30)
    at_limit = requests.post(url + WEBHOOK_PATH, data=b"x" * MAX_BODY_BYTES, timeout=30)

    assert over.status_code == 413
    assert over.json()["error"]["code"] == "request_entity_too_large"
    assert at_limit.status_code == 401  # the service's answer: the signature is missing
    assert at_limit.json()["error"]["code"]


def test_behind_nginx_the_service_sees_the_client_address_and_scheme_nginx_saw(proxied, simulator):
    """With PROXY_HOPS=1 the service takes the address nginx appends, not one the client sends."""
    server, url = proxied
    connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), source_address=("127.0.0.5", 0))
    spoofed = {"X-Request-ID": "proxied-client-address", "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    connection.request("GET", "/healthz", headers=spoofed)
    response = connection.getresponse()
    connection.close()

    [logged] = server.access_log(lambda line: line["requestId"] == "proxied-client-address", at_least=1)
    assert response.status == 200
    assert logged["remote"] == "127.0.0.5"  # the rate limiter's key too
    assert response.getheader("Strict-Transport-Security") is None  # nginx said http
