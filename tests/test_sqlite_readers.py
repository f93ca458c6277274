"""SQLite: reads do not queue behind a writer, writes still take the lock up front and queue
for their turn in the kernel (models.WriterLock), a write that waits past the busy timeout
answers 503, and the image's health check outlasts the busy timeout (issue 10, point 8)."""

import fcntl
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from conftest import LiveClient, make_app, service_settings
from models import SQLITE_BUSY_TIMEOUT_MS, Order, WriterLock, db, read_only
from support import checkout, order_payload, wait_for

ROOT = Path(__file__).resolve().parent.parent
BUSY_TIMEOUT = SQLITE_BUSY_TIMEOUT_MS / 1000
# A read answers well inside the busy timeout, or it was queueing for the lock.
PROMPTLY = BUSY_TIMEOUT / 2

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@contextmanager
def write_lock_held(database_url: str):
    """Another process's writer: a raw sqlite3 connection holding the write lock
    (BEGIN IMMEDIATE, not committed) until the block ends."""
    holder = sqlite3.connect(make_url(database_url).database, isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


@contextmanager
def writers_turn_held(database_url: str):
    """Another process's writer of this service holding the turn to write: the WriterLock's
    flock, taken on a file description of the test's own, until the block ends."""
    with open(WriterLock.of(make_url(database_url).database).path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


HOLDERS = {"sqlite-write-lock": write_lock_held, "writers-turn": writers_turn_held}


@sqlite_only
@pytest.mark.parametrize("held", HOLDERS.values(), ids=HOLDERS.keys())
def test_reads_answer_while_another_process_holds_the_write_lock(database_url, live_server, app, simulator, held):
    """Reads never wait for the turn to write; a write waits for it (in the kernel, or in
    SQLite's busy handler for a writer that takes no turn) at most the busy timeout."""
    placed = checkout(LiveClient(live_server.url))
    reads = ["/healthz", f"/api/orders/{placed['orderId']}", "/metrics"]

    with held(database_url), ThreadPoolExecutor(1) as pool:
        writing = pool.submit(requests.post, live_server.url + "/api/checkout", json=order_payload(), timeout=60)
        answers = {path: requests.get(live_server.url + path, timeout=PROMPTLY) for path in reads}
        written = writing.result()

    assert {path: answer.status_code for path, answer in answers.items()} == dict.fromkeys(reads, 200)
    assert answers[reads[1]].json()["status"] == "pending"
    assert 'orders{status="pending"} 1.0' in answers["/metrics"].text
    # a write still queues for the lock, and after the busy timeout answers 503
    assert written.status_code == 503, written.text
    assert written.json()["error"]["code"] == "database_unavailable"
    # and once the lock is free, writes go through
    assert checkout(LiveClient(live_server.url))["redirectUrl"]


def test_a_writer_that_gave_up_waiting_for_its_turn_leaves_it_to_others(tmp_path):
    """The keeper thread that waits in the kernel for a thread that gave up gives the turn
    back as soon as it gets it; a later writer of the process gets it while it is held."""
    writers = WriterLock.of(str(tmp_path / "given-up.sqlite3"))
    with open(writers.path, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(OperationalError, match="database is locked"):
            writers.acquire(0.2)
        fcntl.flock(other, fcntl.LOCK_UN)

        def other_takes_it() -> bool:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_for(other_takes_it, 10, "the turn the keeper got for nobody to be given back")
        fcntl.flock(other, fcntl.LOCK_UN)
        writers.acquire(BUSY_TIMEOUT)  # the keeper, or the flock at once
        assert not other_takes_it()
        writers.release()
        assert other_takes_it()


@sqlite_only
def test_a_read_only_transaction_never_takes_the_turn_to_write(database_url, app):
    with app.app_context(), writers_turn_held(database_url):
        read_only()
        assert db.session.execute(db.select(Order.id)).all() == []
        db.session.commit()


@sqlite_only
def test_a_new_connection_reads_while_the_write_lock_is_held(database_url, simulator):
    """A worker that connects while another process writes: its connect-time PRAGMAs
    do not wait for the lock either."""
    fresh = make_app(service_settings(database_url, simulator.url)).test_client()
    with write_lock_held(database_url):
        response = fresh.get("/healthz")
    assert response.status_code == 200, response.get_json()


@sqlite_only
def test_only_read_only_requests_begin_deferred(app, simulator):
    client = app.test_client()
    begun: list[str] = []

    def record(_conn, _cursor, statement, *_):
        if statement.startswith("BEGIN"):
            begun.append(statement)

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
    placed = checkout(client)
    writes, begun[:] = list(begun), []
    for path in ("/healthz", f"/api/orders/{placed['orderId']}", "/metrics"):
        assert client.get(path).status_code == 200

    assert writes and set(writes) == {"BEGIN IMMEDIATE"}
    assert begun == ["BEGIN"] * 3


@sqlite_only
def test_a_read_only_transaction_cannot_write_and_leaves_the_connection_writable(app):
    with app.app_context():
        read_only()
        with pytest.raises(OperationalError, match="readonly"):
            db.session.execute(Order.__table__.delete())
        db.session.rollback()
        db.session.execute(Order.__table__.delete())  # the same pooled connection, writable again
        db.session.commit()


def test_the_image_health_check_outlasts_the_busy_timeout():
    """A health check that may wait the busy timeout must be able to finish
    inside HEALTHCHECK --timeout, its request's own timeout in between."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    check = re.search(r"^HEALTHCHECK (.*?)CMD (.*)$", dockerfile, re.M | re.S)
    assert check, "the Dockerfile has no HEALTHCHECK"
    docker_timeout = float(re.search(r"--timeout=(\d+)s", check.group(1)).group(1))
    request_timeout = float(re.search(r"timeout=(\d+)\)", check.group(2)).group(1))
    assert BUSY_TIMEOUT < request_timeout < docker_timeout
