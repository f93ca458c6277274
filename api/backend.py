"""The shop backend's API, authenticated by API key (api/auth.py): the order feed, and
resolving orders held for review. Never opened to browsers by CORS (app.py)."""

import logging

from flask import Blueprint, current_app, g, request
from marshmallow import ValidationError

import feed
import logs
import orders
from api.auth import require_api_key
from api.bodies import load_json_request
from api.errors import ApiError
from models import read_only, transaction
from schemas import FeedQuerySchema, OrderSchema, ResolutionSchema, ResolveRequestSchema

MAX_RESOLVE_BYTES = 4 * 1024  # a 500-character note, escaped, and an action

log = logging.getLogger(__name__)
bp = Blueprint("backend", __name__)


@bp.get("/api/orders")
def order_feed():
    """{data: [order, ...], next: cursor or null}: see feed.py for the order and the cursor."""
    require_api_key()
    try:
        query = FeedQuerySchema().load(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(400, "validation_failed", "The query is not valid.", fields=exc.messages) from None
    read_only()
    try:
        found, cursor = feed.page(
            query.get("status"), query.get("after"), query["limit"], current_app.config["ORDER_FEED_DELAY"]
        )
    except feed.InvalidCursor:
        raise ApiError(
            400, "validation_failed", "The query is not valid.", fields={"after": ["not a cursor of this feed"]}
        ) from None
    return {"data": OrderSchema(many=True).dump(found), "next": cursor}


@bp.post("/api/orders/<order_id>/resolve")
def resolve_order(order_id: str):
    """Complete or dismiss a held order, recorded under the API key's name."""
    by = require_api_key()
    logs.bind(orderId=order_id)
    wanted = load_json_request(ResolveRequestSchema(), MAX_RESOLVE_BYTES, "resolution")
    if orders.lookup(order_id) is None:  # also an id that cannot be an orderId
        raise ApiError(404, "order_not_found", f"No order has the id {order_id!r}.")
    try:
        with transaction():
            resolution = orders.resolve(order_id, wanted["action"], wanted["note"], by=by, via="api")
    except orders.NotHeld:
        raise ApiError(409, "not_held", f"Order {order_id!r} is not held for review.") from None
    log.info("held order resolved", extra={"data": {"action": resolution.action, "by": g.api_key_name}})
    return ResolutionSchema().dump(resolution) | {"order": OrderSchema().dump(orders.reread(order_id))}
