"""Reading an order's status, and the service's own health."""

from flask import Blueprint
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.errors import ApiError
from models import Order, db
from schemas import OrderSchema

bp = Blueprint("status", __name__)


@bp.get("/api/orders/<order_id>")
def get_order(order_id: str):
    order = db.session.get(Order, order_id)
    if order is None:
        raise ApiError(404, "order_not_found", f"No order has the id {order_id!r}.")
    return OrderSchema().dump(order)


@bp.get("/healthz")
def healthz():
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        db.session.rollback()
        raise ApiError(503, "database_unavailable", "The database does not answer.") from None
    return {"status": "ok", "database": "ok"}
