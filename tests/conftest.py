"""Fixtures: the service on SQLite and on a fresh Postgres database, in process
and under gunicorn with two workers, against the Monime simulator over HTTP.

Every HTTP-level test takes `api`, which runs it four ways: {sqlite, postgres}
x {Flask test client, gunicorn}.
"""

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import requests
from flask_migrate import upgrade
from sqlalchemy.engine import make_url

import simulator as simulator_package
from app import create_app
from models import db
from support import (
    API_KEYS,
    APP_URL,
    ORDER_FEED_DELAY,
    PREVIOUS_WEBHOOK_SECRET,
    PUBLIC_BASE_URL,
    WEBHOOK_SECRET,
    serving,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
# The .flaskenv that `make dev` writes (and a developer's .env) hold a running setup's settings:
# no test, nor a flask or simulator command a test starts, reads them unless it asks to.
os.environ["FLASK_SKIP_DOTENV"] = "1"
SKIPPED_POSTGRES: list[str] = []
SKIPPED_THROWAWAY_POSTGRES: list[str] = []


def service_settings(database_url: str, simulator_url: str) -> dict[str, str]:
    """The configuration shared by the in-process app and the gunicorn server."""
    return {
        "DATABASE_URL": database_url,
        "MONIME_API_BASE_URL": simulator_url,
        "MONIME_ACCESS_TOKEN": simulator_package.ACCESS_TOKEN,
        "MONIME_SPACE_ID": simulator_package.SPACE_ID,
        "MONIME_WEBHOOK_SECRET": f"{WEBHOOK_SECRET},{PREVIOUS_WEBHOOK_SECRET}",
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "APP_URL": APP_URL,
        "API_KEYS": API_KEYS,
        "ORDER_FEED_DELAY": str(ORDER_FEED_DELAY),
        "RATELIMIT_CHECKOUT": "100000/minute",  # the rate-limit tests set their own
        "RATELIMIT_REDIRECT_LOOKUPS": "100000/minute",
        # short, so failure paths are quick to test
        "MONIME_CONNECT_TIMEOUT": "0.5",
        "MONIME_READ_TIMEOUT": "0.5",
        "MONIME_RETRY_DEADLINE": "1.5",
        "MONIME_VERIFY_TIMEOUT": "0.5",
    }


MADE_APPS = []


def make_app(settings: dict[str, str], **overrides):
    from config import from_environment

    config = from_environment(settings) | {"TESTING": True} | overrides
    MADE_APPS.append(create_app(config))
    return MADE_APPS[-1]


@pytest.fixture(autouse=True)
def close_database_connections():
    """Every app a test made gives its database connections back when the test ends:
    a Flask app is freed only by the cycle collector, and Postgres allows 100 clients."""
    yield
    while MADE_APPS:
        with MADE_APPS.pop().app_context():
            db.engine.dispose()


# --- the Monime simulator -------------------------------------------------


class Simulator:
    """The simulator's control API, over HTTP."""

    access_token = simulator_package.ACCESS_TOKEN
    space_id = simulator_package.SPACE_ID
    webhook_secret = WEBHOOK_SECRET

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def _post(self, path: str, body: dict | None = None, expect: int = 200) -> dict:
        response = self.http.post(f"{self.url}/_sim{path}", json=body or {}, timeout=30)
        assert response.status_code == expect, response.text
        return response.json()

    def reset(self) -> None:
        self._post("/reset")
        self.configure(webhook_url="", webhook_secret=WEBHOOK_SECRET)

    def configure(self, **options) -> dict:
        """Any of GET /_sim/config's settings: webhook_url=…, twice=True, retry_backoff=0.05…"""
        return self._post("/config", options)

    def faults(self, **faults) -> None:
        """delay=seconds, slow=N, fail=N, fail_status=503, retry_after=1 (None: no Retry-After),
        rate_limit="name", in_flight=seconds, drop=N, trickle={...}"""
        names = {"fail_status": "failStatus", "retry_after": "retryAfter", "rate_limit": "rateLimit"}
        names |= {"in_flight": "inFlight"}
        self._post("/faults", {names.get(key, key): value for key, value in faults.items()})

    def requests(self, method: str | None = None) -> list[dict]:
        seen = self.http.get(f"{self.url}/_sim/requests", timeout=10).json()["requests"]
        return [r for r in seen if method is None or r["method"] == method]

    def sessions(self) -> list[dict]:
        return self.http.get(f"{self.url}/_sim/sessions", timeout=10).json()["sessions"]

    def deliveries(self) -> list[dict]:
        return self.http.get(f"{self.url}/_sim/deliveries", timeout=10).json()["deliveries"]

    def wait_for_deliveries(self, count: int, deadline: float = 15) -> list[dict]:
        """Every delivery attempt, once there are at least `count`: retries come from a worker thread."""
        wait_for(
            lambda: len(self.deliveries()) >= count,
            deadline,
            lambda: f"{count} webhook delivery attempts from the simulator; made: {self.deliveries()}",
        )
        return self.deliveries()

    def redeliver(self, event_id: str) -> dict:
        return self._post(f"/events/{event_id}/redeliver")["delivery"]

    def finish(self, session_id: str, action: str, deliver: bool = True, force: bool = False) -> dict:
        return self._post(f"/sessions/{session_id}/{action}", {"deliver": deliver, "force": force})

    def complete(self, session_id: str, deliver: bool = True, force: bool = False) -> dict:
        return self.finish(session_id, "complete", deliver, force)

    def cancel(self, session_id: str, deliver: bool = True, force: bool = False) -> dict:
        return self.finish(session_id, "cancel", deliver, force)

    def expire(self, session_id: str, deliver: bool = True, force: bool = False) -> dict:
        return self.finish(session_id, "expire", deliver, force)


@pytest.fixture(scope="session")
def simulator_server():
    with serving(simulator_package.create_app({"WEBHOOK_SECRET": WEBHOOK_SECRET})) as url:
        yield Simulator(url)


@pytest.fixture
def simulator(simulator_server):
    """The simulator, emptied: no sessions, no faults, no webhook URL; no fault outlives the test."""
    simulator_server.reset()
    yield simulator_server
    simulator_server.faults()


# --- databases --------------------------------------------------------------


@contextmanager
def fresh_postgres_database():
    """A new, empty Postgres database on TEST_POSTGRES_ADMIN_URL's server; yields its
    SQLAlchemy URL and drops it after. Skips (fails under CI=true) when Postgres is unreachable."""
    admin_url = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and Postgres is unreachable at {admin_url}: {exc}", pytrace=False)
        SKIPPED_POSTGRES.append(str(exc).strip())
        pytest.skip("Postgres is unreachable: the Postgres half of the suite did NOT run")
    name = f"monime_checkout_test_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(False)
    finally:  # a new connection: a test may have restarted the server meanwhile
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url():
    """A Postgres database made for this run (or TEST_DATABASE_URL), dropped after."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request, tmp_path_factory):
    """Each database the service supports, with the schema made by the migrations."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/checkout.sqlite3"
    else:
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    return url


def migrate(url: str) -> None:
    """Make the schema of the database at `url` (a SQLAlchemy URL) with the migrations."""
    app = make_app(service_settings(url, "http://127.0.0.1:9"))
    with app.app_context():
        upgrade()
        db.engine.dispose()


def pytest_terminal_summary(terminalreporter):
    if SKIPPED_POSTGRES:
        terminalreporter.section("POSTGRES WAS NOT TESTED", sep="!", red=True, bold=True)
        terminalreporter.line(f"Postgres was unreachable ({SKIPPED_POSTGRES[0]}).", red=True, bold=True)
        terminalreporter.line("Every Postgres test was skipped. Under CI=true this is a failure.", red=True)
    if SKIPPED_THROWAWAY_POSTGRES:
        terminalreporter.section("NO THROWAWAY POSTGRES", sep="!", red=True, bold=True)
        terminalreporter.line(f"{SKIPPED_THROWAWAY_POSTGRES[0]}.", red=True, bold=True)
        terminalreporter.line("The tests that stop a database were skipped. Under CI=true this is a failure.", red=True)


# --- a Postgres cluster of a test's own, for a database that dies ------------------


class ThrowawayPostgres:
    """A PostgreSQL cluster of one test's own, so that a test can stop and restart its database
    without touching the machine's: made by `initdb` in a temporary directory, serving on a free
    port of 127.0.0.1 as a child process of the tests, stopped and started by its own pid.

    `url` is a SQLAlchemy URL of its `postgres` database (user postgres, trust authentication).
    Run as the `postgres` OS user when the tests run as root, which initdb and postgres refuse.
    """

    def __init__(self, binaries: Path, owner: pwd.struct_passwd | None, log: Path):
        self.binaries, self.log, self.port = binaries, log, free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="throwaway-postgres-"))  # its data and socket
        self.as_owner: dict = {"cwd": self.directory}
        if owner:
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self.as_owner |= {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.url = self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
        self.process: subprocess.Popen | None = None

    def initdb(self) -> None:
        """Make the cluster: user postgres, trust authentication, no locale, UTF-8."""
        made = subprocess.run(
            [self.binaries / "initdb", "-D", self.directory / "data", "-U", "postgres", "--auth=trust",
             "--no-locale", "--encoding=UTF8", "--no-sync"],
            capture_output=True, text=True, timeout=120, **self.as_owner,
        )  # fmt: skip
        assert made.returncode == 0, f"initdb failed:\n{made.stdout[-3000:]}{made.stderr[-3000:]}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections (AssertionError after 60 s)."""
        with self.log.open("a") as output:
            self.process = subprocess.Popen(
                [self.binaries / "postgres", "-D", self.directory / "data", "-p", str(self.port),
                 "-k", self.directory, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                stdout=output, stderr=subprocess.STDOUT, **self.as_owner,
            )  # fmt: skip
        wait_for(
            self.accepting, 60, lambda: f"the throwaway Postgres to accept connections:\n{self.log.read_text()[-3000:]}"
        )

    def accepting(self) -> bool:
        """Whether the server accepts a connection; AssertionError if it has exited."""
        if self.process.poll() is not None:
            raise AssertionError(f"postgres exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            psycopg.connect(self.dsn, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        """A fast shutdown, as `pg_ctl stop -m fast`: SIGINT to the postmaster, which ends every
        session and exits; waits for it (up to 60 s)."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)

    def remove(self) -> None:
        """Stop the server if it runs (killed if a fast shutdown does not end it) and delete its files."""
        if self.process and self.process.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory)


def postgres_binaries() -> Path | None:
    """The directory holding the newest installed PostgreSQL's initdb and postgres, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    on_path = shutil.which("initdb")
    return found[-1].parent if found else Path(on_path).parent if on_path else None


@pytest.fixture
def throwaway_postgres(tmp_path):
    """A running `ThrowawayPostgres` (url, stop(), start()), removed after the test. Without
    initdb the test is skipped loudly, and under CI=true it fails."""
    binaries, owner, problem = postgres_binaries(), None, None
    if binaries is None:
        problem = "initdb was not found under /usr/lib/postgresql/*/bin nor on PATH"
    elif os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            problem = "the tests run as root and there is no postgres user for initdb to run as"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and there can be no throwaway Postgres: {problem}", pytrace=False)
        SKIPPED_THROWAWAY_POSTGRES.append(problem)
        pytest.skip(f"no throwaway Postgres ({problem}): this test did NOT run")
    cluster = ThrowawayPostgres(binaries, owner, tmp_path / "postgres.log")
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


# --- the service --------------------------------------------------------------


@pytest.fixture
def app(database_url, simulator):
    app = make_app(service_settings(database_url, simulator.url))
    with app.app_context():
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()
    return app


@pytest.fixture(
    params=["postgresql+psycopg://postgres@127.0.0.1:9/nowhere", "sqlite:////nonexistent-directory/x.sqlite3"],
    ids=["postgres", "sqlite"],
)
def database_down(request):
    """A test client of the service whose database does not answer."""
    return make_app(service_settings(request.param, "http://127.0.0.1:9")).test_client()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


class LiveResponse:
    """A requests response that reads like a Flask test response."""

    def __init__(self, response: requests.Response):
        self.status_code, self.headers, self.data = response.status_code, response.headers, response.content

    @property
    def json(self):
        return self.get_json()

    def get_json(self):
        return json.loads(self.data) if self.data else None

    @property
    def text(self) -> str:
        return self.data.decode()


class LiveClient:
    """Speaks to the gunicorn server with the Flask test client's vocabulary."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def open(self, path, method="GET", json=None, data=None, headers=None, query_string=None):
        response = self.http.request(
            method, self.url + path, json=json, data=data, headers=headers, params=query_string,
            allow_redirects=False, timeout=60,
        )  # fmt: skip
        return LiveResponse(response)

    def get(self, path, **kwargs):
        return self.open(path, "GET", **kwargs)

    def post(self, path, **kwargs):
        return self.open(path, "POST", **kwargs)

    def put(self, path, **kwargs):
        return self.open(path, "PUT", **kwargs)

    def delete(self, path, **kwargs):
        return self.open(path, "DELETE", **kwargs)


class LiveServer:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def access_log(self, where=lambda line: True, at_least: int = 0) -> list[dict]:
        """The access-log lines matching `where`, once `at_least` of them are written (a worker
        writes its line just after answering); AssertionError if they are not within 10 s."""

        def matching() -> list[dict]:
            lines = self.log.read_text().splitlines()
            records = [json.loads(text) for text in lines if text.startswith('{"type": "access"')]
            return [record for record in records if where(record)]

        wait_for(
            lambda: len(matching()) >= at_least,
            10,
            lambda: f"{at_least} matching access-log lines; written: {len(matching())}",
        )
        return matching()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, deadline: float = 30) -> None:
    """Wait until the service `process` started answers 200 at `url`/healthz; AssertionError with
    its log's tail if it exits or is not healthy within `deadline` seconds."""

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the service exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, deadline, lambda: f"{url}/healthz to answer 200:\n{log.read_text()[-3000:]}", interval=0.05)


@contextmanager
def gunicorn(database_url: str, simulator_url: str, log: Path, port: int | None = None, **env):
    """The service as deployed: gunicorn.conf.py, gthread, two workers; stopped on exit."""
    port = port or free_port()
    environment = os.environ | service_settings(database_url, simulator_url)
    environment |= {"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2", "LOG_LEVEL": "info"} | env
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, log)
        yield LiveServer(url, process, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def live_server(database_url, simulator_server, tmp_path_factory):
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with gunicorn(database_url, simulator_server.url, log) as server:
        yield server


@pytest.fixture(params=["client", "gunicorn"])
def api(request, app):
    """The service, once through the Flask test client and once under gunicorn."""
    if request.param == "client":
        return app.test_client()
    return LiveClient(request.getfixturevalue("live_server").url)
