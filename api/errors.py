"""JSON errors: every failure answers {"error": {"code", "message", ...}}, never a stack trace."""

import logging

from flask import g, jsonify
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from models import db

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raise from a view to answer with a JSON error."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, **details):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers, self.details = headers or {}, details


def error_response(status: int, code: str, message: str, headers: dict | None = None, **details):
    """A JSON error answer: {"error": {code, message, **details}} with `status` and `headers`.
    A Retry-After among them is the answer's own, kept as given (api.guard.keep_own_retry_after)."""
    response = jsonify({"error": {"code": code, "message": message, **details}})
    response.status_code = status
    response.headers.update(headers or {})
    if "Retry-After" in response.headers:
        g.retry_after = response.headers["Retry-After"]
    return response


def database_unavailable_response():
    """503 database_unavailable with Retry-After: 5 (seconds)."""
    return error_response(503, "database_unavailable", "The database is unavailable; try again.", {"Retry-After": "5"})


def init_app(app) -> None:
    """Answer every error as JSON (error_response): ApiError as raised, HTTP errors by their
    name, database outages 503, anything else 500 internal_error with no stack trace (logged)."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.details)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(exc.code or 500, code, exc.description or exc.name, headers)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def database_unavailable(exc: Exception):
        # Down, restarting, locked or out of connections: nothing was stored, and a 503
        # tells Monime to deliver again.
        db.session.rollback()
        log.error("database unavailable", extra={"data": {"error": type(getattr(exc, "orig", exc)).__name__}})
        return database_unavailable_response()

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        db.session.rollback()
        log.exception("unhandled error")
        return error_response(500, "internal_error", "The service failed to handle the request.")
