"""JSON request bodies, loaded by a marshmallow schema, with every refusal a JSON error."""

from flask import request
from marshmallow import Schema, ValidationError

from api.errors import ApiError
from schemas import load_json


def load_json_request(schema: Schema, max_bytes: int, what: str) -> dict:
    """The request's JSON object loaded by `schema`; `what` names it in errors ("order").
    Raises ApiError: 415 not JSON, 413 over `max_bytes` (chunked too), 400 not a JSON object
    within schemas.load_json's limits (invalid_json) or not valid (validation_failed, with
    `fields` naming each bad field)."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", f"Send the {what} as JSON with Content-Type: application/json.")
    request.max_content_length = max_bytes
    try:
        body = load_json(request.get_data())  # over max_bytes: 413, however the body is framed
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"The request body must be a JSON object: {exc}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    try:
        return schema.load(body)
    except ValidationError as exc:
        raise ApiError(400, "validation_failed", f"The {what} is not valid.", fields=exc.messages) from None
