"""Webhooks as Monime sends them: signed, delivered at least once, retried with backoff
until a 2xx answer, every attempt recorded, and on request delivered twice, out of order
or late.

An event's first attempt is made while the caller waits (so a test or the hosted page sees
its effect at once), unless it is delayed or held back; retries and everything scheduled
are made by a worker thread, which also runs the session sweeper.
"""

import heapq
import itertools
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import requests

from signatures import HEADER, sign
from simulator.settings import Settings

API_VERSION = "caph.2025-08-23"
EVENT_FOR_STATUS = {
    "completed": "checkout_session.completed",
    "cancelled": "checkout_session.cancelled",
    "expired": "checkout_session.expired",
}
TICK = 0.2  # seconds the worker sleeps when nothing is due sooner
log = logging.getLogger(__name__)


def event(session: dict, status: str, secret: str) -> dict:
    """The signed webhook Monime sends when `session` (as the API shows it) reaches `status`:
    {"id", "headers", "body"}."""
    envelope = {
        "apiVersion": API_VERSION,
        "event": {
            "id": f"evt-{secrets.token_hex(10)}",
            "name": EVENT_FOR_STATUS[status],
            "timestamp": iso_now("seconds"),
        },
        "object": {"id": session["id"], "type": "checkout_session"},
        "data": session,
    }
    body = json.dumps(envelope, separators=(",", ":"))
    headers = {HEADER: sign(body.encode(), secret), "Content-Type": "application/json"}
    return {"id": envelope["event"]["id"], "headers": headers, "body": body}


@dataclass
class Letter:
    """One event on its way to one URL, and what became of it."""

    event: dict
    name: str
    session_id: str
    url: str
    generation: int
    attempts: int = 0
    tries: int = 0  # first attempt and retries: the ones the backoff counts
    started: bool = False  # its first attempt has been claimed
    acknowledged: bool = False  # some attempt was answered 2xx


class Outbox:
    """Every event sent, every attempt made, and the attempts still to make."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.letters: dict[str, Letter] = {}
        self.deliveries: list[dict] = []
        self.queue: list[tuple[float, int, str, str]] = []  # (due, sequence, event id, reason)
        self.held: list[str] = []
        self.generation = 0
        self.sequence = itertools.count()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)

    def reset(self) -> None:
        """Forget every event and delivery; an attempt still under way is not recorded."""
        with self.lock:
            self.generation += 1
            self.letters.clear()
            self.deliveries.clear()
            self.queue.clear()
            self.held.clear()

    def send(self, event: dict, url: str, wait: bool = True) -> dict | None:
        """Deliver `event` to `url` as the switches say. Returns the first attempt when it was
        made now (`wait`, no delay, not held back), else None: it is made later."""
        letter = self.keep(event, url)
        settings = self.settings
        if not url:
            return None
        if settings.delivery_delay > 0:
            self.schedule(letter, settings.delivery_delay, "first")
        elif settings.out_of_order and self.hold_back(letter):
            self.schedule(letter, settings.hold, "first")
        elif not wait:
            self.schedule(letter, 0, "first")
        else:
            return self.deliver_first(letter)
        return None

    def keep(self, event: dict, url: str) -> Letter:
        data = json.loads(event["body"])
        with self.lock:
            letter = Letter(event, data["event"]["name"], data["object"]["id"], url, self.generation)
            self.letters[event["id"]] = letter
        return letter

    def hold_back(self, letter: Letter) -> bool:
        """Hold this letter back unless one already is (that one goes out after this one)."""
        with self.lock:
            if self.held:
                return False
            self.held.append(letter.event["id"])
            return True

    def deliver_first(self, letter: Letter) -> dict | None:
        """The first attempt, a duplicate when delivering twice, then whatever was held back for it."""
        with self.lock:
            if letter.started:
                return None
            letter.started = True
            if letter.event["id"] in self.held:
                self.held.remove(letter.event["id"])
            released = [self.letters[event_id] for event_id in self.held if event_id in self.letters]
            self.held.clear()
        first = self.attempt(letter, "first")
        if self.settings.twice:
            self.attempt(letter, "twice")
        for other in released:
            self.deliver_first(other)
        return first

    def redeliver(self, event_id: str) -> dict | None:
        """Send a known event again now, whatever became of it; None if it is unknown."""
        letter = self.letters.get(event_id)
        if letter is None:
            return None
        letter.url = letter.url or self.settings.webhook_url  # made while no URL was set
        return self.attempt(letter, "redeliver") if letter.url else None

    def attempt(self, letter: Letter, reason: str) -> dict:
        """POST the event once and record the attempt; schedule a retry if it failed and may."""
        with self.lock:
            letter.attempts += 1
            letter.tries += reason in ("first", "retry")
            number = letter.attempts
        headers = letter.event["headers"]
        if number > 1:  # signed anew: a retry minutes later must still be inside the receiver's tolerance
            headers = headers | {HEADER: sign(letter.event["body"].encode(), self.settings.webhook_secret)}
        record = {
            "eventId": letter.event["id"],
            "eventName": letter.name,
            "sessionId": letter.session_id,
            "url": letter.url,
            "attempt": number,
            "reason": reason,
            "time": iso_now(),
        }
        record |= post(letter.url, letter.event["body"], headers, self.settings.webhook_timeout)
        self.record(letter, record, reason)
        return record

    def record(self, letter: Letter, record: dict, reason: str) -> None:
        with self.lock:
            if letter.generation != self.generation:
                return  # the simulator was reset while this attempt was under way
            self.deliveries.append(record)
            letter.acknowledged |= record["status"] is not None and 200 <= record["status"] < 300
            retry = not letter.acknowledged and reason in ("first", "retry")
        if retry and letter.tries < self.settings.retry_attempts:
            self.schedule(letter, self.settings.retry_backoff * 2 ** (letter.tries - 1), "retry")

    def schedule(self, letter: Letter, delay: float, reason: str) -> None:
        with self.wake:
            heapq.heappush(self.queue, (time.monotonic() + delay, next(self.sequence), letter.event["id"], reason))
            self.wake.notify()

    def due(self) -> list[tuple[Letter, str]]:
        """Take every scheduled attempt whose time has come."""
        taken = []
        with self.lock:
            while self.queue and self.queue[0][0] <= time.monotonic():
                _, _, event_id, reason = heapq.heappop(self.queue)
                if event_id in self.letters:
                    taken.append((self.letters[event_id], reason))
        return taken

    def run(self, sweep) -> None:
        """The worker: forever, call `sweep` (which may send events) and make the attempts due."""
        while True:
            with self.wake:
                soonest = self.queue[0][0] - time.monotonic() if self.queue else TICK
                self.wake.wait(timeout=max(0.0, min(soonest, TICK)))
            try:
                sweep()
                for letter, reason in self.due():
                    self.perform(letter, reason)
            except Exception:  # the worker must outlive any one failure
                log.exception("the simulator's webhook worker failed")

    def perform(self, letter: Letter, reason: str) -> None:
        """A scheduled attempt: a first one (delayed or held back), or a retry not made needless
        by a redelivery that was acknowledged meanwhile."""
        if reason == "first":
            self.deliver_first(letter)
        elif not letter.acknowledged:
            self.attempt(letter, reason)

    def start(self, sweep) -> None:
        threading.Thread(target=self.run, args=(sweep,), name="simulator-webhooks", daemon=True).start()


def post(url: str, body: str, headers: dict, timeout: float) -> dict:
    """One HTTP attempt: the answer's status and the start of its body, or why there was none."""
    started = time.monotonic()
    try:
        response = requests.post(url, data=body.encode(), headers=headers, timeout=timeout)
        outcome = {"status": response.status_code, "body": response.text[:500], "error": None}
    except requests.RequestException as exc:
        outcome = {"status": None, "body": "", "error": type(exc).__name__}
    return outcome | {"ms": round((time.monotonic() - started) * 1000)}


def iso(moment: datetime, timespec: str = "seconds") -> str:
    """A UTC moment as Monime writes it: 2026-01-01T00:00:00Z."""
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def iso_now(timespec: str = "milliseconds") -> str:
    return iso(datetime.now(UTC), timespec)
