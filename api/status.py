"""Reading an order's status, and the service's own health, metrics and documentation.

Every view here only reads: those that touch the database begin with
models.read_only() (models.atomic(only_reads=True) does, and runs the read again
if the connection was lost), so on SQLite they answer while a writer holds the lock."""

from flask import Blueprint, abort, current_app, render_template, send_from_directory
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

import apidoc
import logs
import metrics
import orders
from api.errors import ApiError, database_unavailable_response
from models import atomic, db, read_only
from schemas import OrderSchema

bp = Blueprint("status", __name__)
# Built once: a schema builds its nested schemas anew for each instance, which costs more than a dump.
ORDER = OrderSchema()


@bp.get("/api/orders/<order_id>")
def get_order(order_id: str):
    """GET /api/orders/<orderId>: the order (OrderSchema), read only; 404 order_not_found."""
    logs.bind(orderId=order_id)
    order = atomic(lambda: orders.view(order_id), only_reads=True)  # run again if the connection was lost
    if order is None:
        raise ApiError(404, "order_not_found", f"No order has the id {order_id!r}.")
    return ORDER.dump(order)


@bp.get("/livez")
def livez():
    """Liveness: the process answers. Touches no database, so a database outage
    restarts nothing (readiness is /healthz)."""
    return {"status": "ok"}


@bp.get("/healthz")
def healthz():
    """Readiness: 200 when the database answers a query, else 503."""
    try:
        atomic(lambda: db.session.execute(text("SELECT 1")), only_reads=True)  # run again if the connection was lost
    except SQLAlchemyError:
        db.session.rollback()
        return database_unavailable_response()
    return {"status": "ok", "database": "ok"}


@bp.get("/metrics")
def prometheus_metrics():
    """GET /metrics: Prometheus' text exposition, orders counted in the database."""
    read_only()  # orders{status} is counted in the database
    body, content_type = metrics.exposition()
    return body, 200, {"Content-Type": content_type}


@bp.get("/openapi.json")
def openapi_document():
    """GET /openapi.json: the OpenAPI document (apidoc.build)."""
    return document()


@bp.get("/docs")
def openapi_page():
    """The OpenAPI document, readable: Swagger UI renders /openapi.json (apidoc.py)."""
    return render_template("docs.html", spec=document())


@bp.get("/docs/<name>")
def openapi_page_asset(name: str):
    """The /docs page's script and styles (apidoc.DOCS_ASSETS); 404 for any other name."""
    if name not in apidoc.DOCS_ASSETS:
        abort(404)
    return send_from_directory(apidoc.DOCS_ASSETS[name], name, max_age=3600)


def document() -> dict:
    """Built once per process, for the mode (catalog or not) the service runs in."""
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = apidoc.build(catalog_mode=bool(current_app.extensions["catalog"]))
    return current_app.extensions["openapi"]
