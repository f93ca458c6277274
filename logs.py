"""Structured logs: one JSON object per line on stderr.

Every line carries the fields bound to the current request (its requestId,
and the orderId or eventId once known); add more with `extra={"data": {...}}`.
Nothing here ever receives a token, a secret or a request body.
"""

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

_context: ContextVar[dict | None] = ContextVar("log_context", default=None)


def bind(**fields) -> None:
    """Add fields to every log line of the current request."""
    _context.set((_context.get() or {}) | {key: value for key, value in fields.items() if value is not None})


def start(**fields) -> None:
    """A new request: forget what the thread's previous request bound."""
    _context.set(fields)


def _record_with_context(*args, **kwargs) -> logging.LogRecord:
    """Records take the request's fields when they are made, not when a handler formats them."""
    record = _plain_record(*args, **kwargs)
    record.context = _context.get() or {}
    return record


_plain_record = logging.getLogRecordFactory()


def timestamp(seconds: float) -> str:
    """Unix `seconds` as ISO 8601 in UTC to the millisecond, ending in `Z`: every log line's `time`."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message, the request's bound fields,
    `extra={"data": {...}}`, and a traceback as `exception`. The service's lines and gunicorn's
    own (gunicorn.conf.py) alike."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (an exception's traceback in `exception`)."""
        entry = {
            "time": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "context", {}),
            **getattr(record, "data", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str) -> None:
    """Log JSON lines (JsonFormatter) at `level` on the root logger, with the request's context."""
    logging.setLogRecordFactory(_record_with_context)
    root = logging.getLogger()
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())
