"""API keys for server-to-server calls: `Authorization: Bearer <key>`, one of API_KEYS."""

import hmac

from flask import current_app, g, request

import logs
from api.errors import ApiError


def require_api_key() -> str:
    """The name of the API key the request presents, also kept as g.api_key_name. Raises
    ApiError 401 `unauthorized` with `WWW-Authenticate: Bearer` when there is none or it is
    not one of API_KEYS (RFC 6750). Every key is compared, in constant time, so the answer's
    timing tells nothing about how close a guess came."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    token = presented.strip().encode()
    name = None
    if scheme.lower() == "bearer" and token:
        for candidate, key in current_app.config["API_KEYS"].items():
            if hmac.compare_digest(token, key.encode()):
                name = candidate
    if name is None:
        raise ApiError(
            401,
            "unauthorized",
            "Send one of the service's API keys as Authorization: Bearer <key>.",
            {"WWW-Authenticate": 'Bearer realm="monime-checkout"'},
        )
    g.api_key_name = name
    logs.bind(apiKey=name)
    return name
