"""The container image, built and run: `make docker-test` (deselected otherwise).

There is no Docker daemon and no registry of base images here: buildah builds
the Dockerfile on a Debian base made with debootstrap (cached between runs) and
podman runs it on the host's network against this run's Postgres database and
the Monime simulator.
"""

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port
from support import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

TOOLS = ("buildah", "podman", "runc", "debootstrap")
BASE = "localhost/monime-checkout-base:bookworm"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "monime-checkout"
# No curl, as in python:*-slim: a HEALTHCHECK that needs it must fail here too.
DEBOOTSTRAP = [
    "debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
    "bookworm", "{root}", "{mirror}",
]  # fmt: skip
APT_SOURCES = [Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list")]
# This machine's pip settings, package mirrors and CA bundle, lent read-only to
# the build where they exist (the build runs as root, so ~/.config is /root's).
BUILD_MOUNTS = {
    "/etc/pip.conf": "/etc/pip.conf",
    "/etc/xdg/pip": "/etc/xdg/pip",
    str(Path.home() / ".config/pip"): "/root/.config/pip",
    "/etc/ssl/certs": "/etc/ssl/certs",
    "/opt/pypi": "/opt/pypi",
    "/opt/pypi-more": "/opt/pypi-more",
    "/opt/wheels": "/opt/wheels",
}
BUNDLE = {"type": "custom", "name": "Starter bundle", "price": {"currency": "SLE", "value": 2500}, "quantity": 1}
ORDER = {"name": "Order 1", "lineItems": [BUNDLE]}
# without the ulimits, runc fails running a container with "error setting rlimit type 7"
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    command = ["podman", "--storage-driver", "vfs", "--runtime", "runc", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr}", pytrace=False)
    return result


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout)


def debian_mirror(suite: str = "bookworm", sources: list[Path] = APT_SOURCES) -> str:
    """The Debian mirror this machine's apt uses for `suite`: the first `deb` source naming it, in
    deb822 files (*.sources: Types, URIs, Suites) or one-line lists (sources.list, *.list). The
    repository names no mirror host: debootstrap takes whatever apt is configured with here."""
    files = [path for source in sources for path in (sorted(source.glob("*")) if source.is_dir() else [source])]
    for path in files:
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.MULTILINE))
                if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                    return fields["URIs"].split()[0]
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    pytest.fail(f"no apt source for Debian {suite} in {', '.join(map(str, sources))}: debootstrap needs a mirror")


@dataclass
class Image:
    name: str
    build_seconds: float
    size: int
    base_size: int


@dataclass
class Container:
    name: str
    url: str


@pytest.fixture(scope="module")
def base_image(tmp_path_factory) -> str:
    """Debian bookworm with python3, imported into podman; the tarball is cached."""
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    assert not missing, f"{', '.join(missing)} not installed: `make docker-test` installs them"
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return BASE
    tarball = CACHE / "base-bookworm.tar"
    if not tarball.exists():
        root = tmp_path_factory.mktemp("debootstrap") / "root"
        mirror = debian_mirror()
        subprocess.run(
            [arg.format(root=root, mirror=mirror) for arg in DEBOOTSTRAP], check=True, capture_output=True, timeout=600
        )
        # apt's downloaded packages and lists are of no use in an image
        for leftover in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/cache/apt/*.bin")]:
            leftover.unlink()
        shutil.rmtree(root / "var/lib/apt/lists")
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", root, "-cf", partial, "."], check=True, timeout=300)
        partial.rename(tarball)
        shutil.rmtree(root)
    with tarball.open("rb") as stream:
        podman("import", "-", BASE, stdin=stream)
    return BASE


@pytest.fixture(scope="module")
def image(base_image):
    name = f"localhost/monime-checkout:test-{uuid.uuid4().hex[:8]}"
    mounts = [f"--volume={host}:{inside}:ro" for host, inside in BUILD_MOUNTS.items() if os.path.exists(host)]
    command = [
        "buildah", "--storage-driver", "vfs", "bud", "--isolation", "chroot", "--network", "host",
        "--format", "docker",  # the OCI format has no HEALTHCHECK
        "--build-arg", f"BASE={base_image}", *mounts, "--tag", name, str(ROOT),
    ]  # fmt: skip
    started = time.monotonic()
    build = subprocess.run(command, capture_output=True, text=True, timeout=600)
    build_seconds = time.monotonic() - started
    assert build.returncode == 0, f"the build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    try:
        yield Image(name, build_seconds, image_size(name), image_size(base_image))
    finally:
        podman("rmi", name, check=False)


@pytest.fixture(scope="module")
def container(image, postgres_url, simulator_server):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "PORT": str(port),
        "DATABASE_URL": postgres_url,
        "MONIME_API_BASE_URL": simulator_server.url,
        "MONIME_ACCESS_TOKEN": simulator_server.access_token,
        "MONIME_SPACE_ID": simulator_server.space_id,
        "MONIME_WEBHOOK_SECRET": simulator_server.webhook_secret,
        "PUBLIC_BASE_URL": url,
        "APP_URL": "http://127.0.0.1:3000",
        "GUNICORN_WORKERS": "2",
    }
    name = f"monime-checkout-test-{uuid.uuid4().hex[:8]}"
    environment = [f"--env={key}={value}" for key, value in env.items()]
    try:
        podman("run", "--detach", "--name", name, "--network", "host", *LIMITS, *environment, image.name)
        wait_until_healthy(name, url)
        yield Container(name, url)
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def wait_until_healthy(name: str, url: str, deadline: float = 60) -> None:
    """Until the container `name` answers 200 at `url`/healthz; AssertionError with its logs if it
    stops running or is not healthy within `deadline` seconds."""

    def healthy() -> bool:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert state == "running", f"the container is {state}:\n{container_logs(name)}"
        return False

    wait_for(healthy, deadline, lambda: f"the container's /healthz to answer 200:\n{container_logs(name)}", 0.25)


def container_logs(name: str) -> str:
    logs = podman("logs", name, check=False)
    return f"{logs.stdout[-3000:]}{logs.stderr[-3000:]}"


def in_container(container: Container, *command: str) -> str:
    return podman("exec", container.name, *command).stdout


def checkout(container: Container) -> tuple[str, dict]:
    order_id = f"ord_image_{uuid.uuid4().hex[:12]}"
    response = requests.post(f"{container.url}/api/checkout", json=ORDER | {"orderId": order_id}, timeout=30)
    assert response.status_code == 201, response.text
    return order_id, response.json()


def test_the_image_builds_and_stays_small(image, capsys):
    added = image.size - image.base_size
    with capsys.disabled():
        print(
            f"\n{image.name}: built in {image.build_seconds:.1f} s; {image.size / 1e6:.0f} MB, "
            f"of which {added / 1e6:.0f} MB over the base"
        )
    # the virtualenv and the code; a pip cache or a copied .venv would exceed it
    assert added < 120e6


def test_healthz_answers_200(container):
    response = requests.get(f"{container.url}/healthz", timeout=5)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok"}


def test_a_checkout_creates_a_monime_session(container):
    order_id, body = checkout(container)
    assert body["orderId"] == order_id
    assert body["sessionId"].startswith("scs-")
    assert body["redirectUrl"].startswith("http")


def test_a_signed_webhook_completes_the_order(container, simulator):
    simulator.configure(webhook_url=f"{container.url}/api/webhooks/monime")
    order_id, body = checkout(container)

    result = simulator.complete(body["sessionId"], deliver=True)

    assert json.loads(result["event"]["body"])["event"]["name"] == "checkout_session.completed"
    assert result["delivery"]["status"] == 200, result["delivery"]
    response = requests.get(f"{container.url}/api/orders/{order_id}", timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"


def test_the_service_runs_as_a_user_who_can_write_only_instance(container):
    status = dict(line.split(":", 1) for line in in_container(container, "cat", "/proc/1/status").splitlines())
    assert status["Uid"].split() == ["10001"] * 4
    assert status["Gid"].split() == ["10001"] * 4
    writable = in_container(
        container, "python3", "-c",
        "import os; print([p for top in ('/app', '/opt/venv') for d, ds, fs in os.walk(top)"
        " for p in [d, *(os.path.join(d, f) for f in fs)] if os.access(p, os.W_OK)])",
    )  # fmt: skip
    assert writable.strip() == "['/app/instance']"


def test_the_healthcheck_is_in_the_image_and_passes(container, image):
    healthcheck = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image.name).stdout)
    assert healthcheck and "/healthz" in " ".join(healthcheck["Test"])
    run = podman("healthcheck", "run", container.name, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_instance_is_a_volume_for_sqlite(image):
    volumes = json.loads(podman("image", "inspect", "--format", "{{json .Config.Volumes}}", image.name).stdout)
    assert list(volumes) == ["/app/instance"]


def test_without_database_url_the_container_refuses_to_start(image, simulator_server):
    env = {
        "MONIME_ACCESS_TOKEN": simulator_server.access_token,
        "MONIME_SPACE_ID": simulator_server.space_id,
        "MONIME_WEBHOOK_SECRET": simulator_server.webhook_secret,
        "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
        "APP_URL": "http://127.0.0.1:3000",
    }
    environment = [f"--env={key}={value}" for key, value in env.items()]
    run = podman("run", "--rm", "--network", "host", *LIMITS, *environment, image.name, check=False)
    assert run.returncode != 0
    assert "Invalid configuration: DATABASE_URL is required" in run.stderr


# Stops the shared container, so it must stay the last test of the module.
def test_sigterm_stops_gunicorn_gracefully(container):
    assert "gunicorn" in in_container(container, "cat", "/proc/1/cmdline")

    started = time.monotonic()
    podman("stop", "--time", "30", container.name)
    seconds = time.monotonic() - started

    exit_code = int(podman("inspect", "--format", "{{.State.ExitCode}}", container.name).stdout)
    logs = podman("logs", container.name).stderr
    assert exit_code == 0, logs[-3000:]  # 137 or 143: killed rather than shut down
    assert seconds < 10, f"stopping took {seconds:.1f} s"
