"""The service's own OpenAPI 3 document, built from the marshmallow schemas.

Served at /openapi.json and, readable, at /docs: Swagger UI, from the flask-swagger-ui
package's copy of its dist (no CDN), renders the descriptions as Markdown and the
examples below. The checkout request is the one of the mode the service runs in
(catalog or not). The document's version is the project's, from pyproject.toml.
"""

import tomllib
from pathlib import Path

import flask_swagger_ui
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from schemas import (
    CatalogCheckoutRequestSchema,
    CheckoutCreatedSchema,
    CheckoutRequestSchema,
    ErrorSchema,
    FeedQuerySchema,
    HealthSchema,
    OrderPageSchema,
    OrderSchema,
    ResolutionSchema,
    ResolveRequestSchema,
    WebhookEventSchema,
    WebhookReceiptSchema,
)

ROOT = Path(__file__).resolve().parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# What /docs/<name> serves: Swagger UI's script and styles from the package, the page's own
# from templates/ beside docs.html.
SWAGGER_UI = Path(flask_swagger_ui.__file__).parent / "dist"
DOCS_ASSETS = {
    "swagger-ui-bundle.js": SWAGGER_UI,
    "swagger-ui.css": SWAGGER_UI,
    "docs.js": ROOT / "templates",
    "docs.css": ROOT / "templates",
}

DESCRIPTION = """Take payments through Monime's hosted checkout.

Every response carries `X-Request-ID` (yours, if you sent a valid one).
Every error is `{"error": {"code", "message", ...}}`. Amounts are integers
in minor units: 2500 is SLE 25.00.

Rules of a checkout request beyond its schema: every line item uses the same
currency; line item references are unique; metadata keys are 1-100 characters."""

# Examples Swagger UI shows on /docs, one per main request and answer; tests/test_openapi.py
# loads each with its schema. The webhook's is the simulator's sample event.
CHECKOUT_EXAMPLE = {
    "name": "Order #1001",
    "orderId": "ord_1001",
    "lineItems": [
        {"type": "custom", "name": "Starter bundle", "price": {"currency": "SLE", "value": 2500}, "quantity": 1}
    ],
    "metadata": {"cartId": "cart_123"},
    "callbackState": "state_cart_123",
}
CATALOG_CHECKOUT_EXAMPLE = {
    "name": "Order #1002",
    "orderId": "ord_1002",
    "lineItems": [{"sku": "starter-bundle", "quantity": 2}],
}
SESSION_ID = "scs-5f3c2b1a0d9e8f7a6b5c4d3e"
CREATED_EXAMPLE = {
    "orderId": "ord_1001",
    "sessionId": SESSION_ID,
    "redirectUrl": f"https://checkout.monime.io/{SESSION_ID}",
}
ORDER_EXAMPLE = {
    "orderId": "ord_1001",
    "status": "completed",
    "amount": {"currency": "SLE", "value": 2500},
    "checkoutSessionId": SESSION_ID,
    "orderNumber": "7KQ2M9XH4DPA",
    "name": "Order #1001",
    "lineItems": CHECKOUT_EXAMPLE["lineItems"],
    "review": None,
    "createdAt": "2026-01-01T11:59:00.000000Z",
    "updatedAt": "2026-01-01T12:00:01.000000Z",
}
PAGE_EXAMPLE = {"data": [ORDER_EXAMPLE], "next": "WyIyMDI2LTAxLTAxVDEyOjAwOjAxKzAwOjAwIiwgIm9yZF8xMDAxIl0"}
RESOLVE_EXAMPLE = {"action": "complete", "note": "Bank confirmed SLE 51.50 received"}
RESOLUTION_EXAMPLE = {
    "orderId": "ord_1001",
    **RESOLVE_EXAMPLE,
    "by": "shop-backend",
    "previousStatus": "pending",
    "previousReview": {
        "reason": "amount mismatch: Monime reports SLE 51.50, the order is SLE 25.00",
        "eventId": "evt-0a1b2c3d4e5f60718293",
    },
    "resolvedAt": "2026-01-01T13:00:00.000000Z",
    "order": ORDER_EXAMPLE,
}
WEBHOOK_EXAMPLE = {  # the simulator's sample (simulator/samples/checkout_session.completed.json), trimmed
    "apiVersion": "caph.2025-08-23",
    "event": {
        "id": "evt-0a1b2c3d4e5f60718293",
        "name": "checkout_session.completed",
        "timestamp": "2026-01-01T12:00:00Z",
    },
    "object": {"id": SESSION_ID, "type": "checkout_session"},
    "data": {
        "id": SESSION_ID,
        "status": "completed",
        "orderNumber": "7KQ2M9XH4DPA",
        "reference": "ord_1001",
        "lineItems": {
            "data": [
                {"type": "custom", "quantity": 1, "name": "Starter bundle", "price": {"currency": "SLE", "value": 2500}}
            ]
        },
        "metadata": {"orderId": "ord_1001"},
    },
}
RECEIPT_EXAMPLE = {"received": True, "eventId": "evt-0a1b2c3d4e5f60718293", "duplicate": False, "outcome": "applied"}
INVALID_EXAMPLE = {
    "error": {
        "code": "validation_failed",
        "message": "The request is invalid.",
        "fields": {
            "lineItems": {"0": {"quantity": ["Must be greater than or equal to 1 and less than or equal to 100000."]}}
        },
    }
}

BUSY_EXAMPLE = {
    "error": {
        "code": "monime_busy",
        "message": "Too many payments are being started at this moment; nothing was stored. "
        "Submit the same order again after Retry-After seconds.",
    }
}

CHECKOUT_DESCRIPTION = """The order and its `Idempotency-Key` are stored **before** Monime is called.

- Timeouts, connection errors, `429` and `5xx` from Monime are retried with the same key
  for up to `MONIME_RETRY_DEADLINE` seconds, a hard limit: then `504 monime_timeout`.
- Submitting the same order again reuses the key, so Monime makes **one** session however
  often the shopper presses *Pay*; after a session is `cancelled` or `expired`, a new one.
- Past `MONIME_MAX_IN_FLIGHT` calls to Monime in flight in the worker, the checkout is refused at
  once with `503 monime_busy` and `Retry-After` (whole seconds): wait that long, spread by a random
  factor of about 0.5-1.5, and submit the same order again.
- Amounts are integers in minor units; the service computes the total itself."""

WEBHOOK_DESCRIPTION = """Monime's signed event, the authority on an order's status.

- The signature covers the **raw body**: `Monime-Signature: t=<unix seconds>,v1=<base64>`,
  HMAC-SHA256 with one of `MONIME_WEBHOOK_SECRET`, within `MONIME_WEBHOOK_TOLERANCE` seconds.
- An event id is applied **once**; a redelivery answers `200` with `duplicate: true`.
- A completion whose amount differs from the order is held for a person (`outcome: held`)."""

REQUEST_ID = {
    "description": "Echoes the request's X-Request-ID, or one made for it; it is in every log line of the request.",
    "schema": {"type": "string"},
    "required": True,
}
RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
ORDER_ID = {"name": "orderId", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}}
# The shop backend's calls: Authorization: Bearer <one of API_KEYS>.
API_KEY = {"type": "http", "scheme": "bearer", "description": "One of the service's API_KEYS."}
WWW_AUTHENTICATE = {"description": "Bearer: send an API key.", "schema": {"type": "string"}, "required": True}


def build(catalog_mode: bool) -> dict:
    """The OpenAPI 3.0 document of the service, from the marshmallow schemas; `catalog_mode`
    documents the checkout request CATALOG_FILE makes the service take."""
    spec = APISpec(
        title="monime-checkout",
        version=VERSION,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
    )
    request_schema = CatalogCheckoutRequestSchema({}) if catalog_mode else CheckoutRequestSchema()
    for name, schema in {
        "CheckoutRequest": request_schema,
        "CheckoutCreated": CheckoutCreatedSchema,
        "Order": OrderSchema,
        "OrderPage": OrderPageSchema,
        "ResolveRequest": ResolveRequestSchema,
        "Resolution": ResolutionSchema,
        "WebhookEvent": WebhookEventSchema,
        "WebhookReceipt": WebhookReceiptSchema,
        "Health": HealthSchema,
        "Error": ErrorSchema,
    }.items():
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme("apiKey", API_KEY)
    for path, operations in paths(catalog_mode).items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


# GET /livez's answer, the one body without a schema of its own.
LIVE = {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}, "required": ["status"]}


def paths(catalog_mode: bool) -> dict:
    """The document's paths: every route and its answers (the checkout's example as `catalog_mode` takes it)."""
    checkout = operation(
        "Create a checkout session for an order",
        {
            "201": answer(
                "A new Monime session; send the shopper to `redirectUrl`.", "CheckoutCreated", CREATED_EXAMPLE
            ),
            "200": answer(
                "The same order again while its session is pending: the same session.",
                "CheckoutCreated",
                CREATED_EXAMPLE,
            ),
            "400": error("Invalid order: `error.fields` names each bad field. Monime was not called.", INVALID_EXAMPLE),
            "409": error("`order_conflict` (this orderId with other content) or `order_completed`."),
            "413": error("Body too large."),
            "415": error("Not `Content-Type: application/json`."),
            "429": error("Too many checkouts from this client.", retry=True),
            "502": error("Monime refused (`monime_rejected`) or kept failing (`monime_unavailable`)."),
            "503": error(
                "`monime_busy`: this worker has as many calls to Monime in flight as `MONIME_MAX_IN_FLIGHT` "
                "allows; nothing was stored and Monime was not called. Wait `Retry-After` seconds (jittered) and "
                "submit the same order again. Or `database_unavailable`.",
                BUSY_EXAMPLE,
                retry=True,
            ),
            "504": error("Monime did not answer in time (`monime_timeout`)."),
        },
        body="CheckoutRequest",
        example=CATALOG_CHECKOUT_EXAMPLE if catalog_mode else CHECKOUT_EXAMPLE,
        description=CHECKOUT_DESCRIPTION,
    )
    webhook = operation(
        "Receive a Monime webhook (signed)",
        {
            "200": answer("Processed, or a redelivery acknowledged.", "WebhookReceipt", RECEIPT_EXAMPLE),
            "400": error("Signed, but not a Monime event."),
            "401": error("Signature missing, malformed, stale or not matching."),
            "413": error("Body over 1 MiB."),
            "503": error(
                "Database unavailable, or Monime cannot confirm a completion (unreachable, or the worker's calls "
                "to Monime at `MONIME_MAX_IN_FLIGHT`); deliver again.",
                retry=True,
            ),
        },
        body="WebhookEvent",
        example=WEBHOOK_EXAMPLE,
        description=WEBHOOK_DESCRIPTION,
        parameters=[
            {
                "name": "Monime-Signature",
                "in": "header",
                "required": True,
                "description": 't=<unix seconds>,v1=<base64 HMAC-SHA256(secret, "<t>_" + raw body)>',
                "schema": {"type": "string"},
            }
        ],
    )
    return {
        "/api/checkout": {"post": checkout},
        "/api/checkout/success": {"get": back("success"), "post": back("success")},
        "/api/checkout/cancel": {"get": back("cancelled")},
        "/api/orders": {
            "get": secured(
                "The order feed: orders by their last change, a page at a time",
                {
                    "200": answer(
                        "Orders changed after `after`; `next` continues from the last.", "OrderPage", PAGE_EXAMPLE
                    ),
                    "400": error("A bad `status`, `limit` or `after`: `error.fields` names it."),
                    "503": unavailable(),
                },
                parameters=[{"in": "query", "schema": FeedQuerySchema}],
            )
        },
        "/api/orders/{orderId}/resolve": {
            "post": secured(
                "Resolve an order held for review: complete it, or dismiss the hold",
                {
                    "200": answer("Resolved, and recorded under the API key's name.", "Resolution", RESOLUTION_EXAMPLE),
                    "400": error("Invalid: `error.fields` names each bad field."),
                    "404": error("No such order."),
                    "409": error("`not_held`: the order is not held for review (or was just resolved)."),
                    "413": error("Body too large."),
                    "415": error("Not `Content-Type: application/json`."),
                    "503": unavailable(),
                },
                body="ResolveRequest",
                example=RESOLVE_EXAMPLE,
                parameters=[{**ORDER_ID, "in": "path"}],
            )
        },
        "/api/orders/{orderId}": {
            "get": operation(
                "An order's status",
                {
                    "200": answer("The order.", "Order", ORDER_EXAMPLE),
                    "404": error("No such order."),
                    "503": unavailable(),
                },
                parameters=[{**ORDER_ID, "in": "path"}],
            )
        },
        "/api/webhooks/monime": {"post": webhook},
        "/livez": {"get": operation("Liveness: the process answers (no database)", {"200": answer("Alive.", LIVE)})},
        "/healthz": {
            "get": operation(
                "Readiness: the database answers",
                {"200": answer("The database answers.", "Health"), "503": unavailable()},
            )
        },
        "/metrics": {"get": operation("Prometheus metrics", {"200": text("Prometheus exposition", "text/plain")})},
        "/openapi.json": {"get": operation("This document", {"200": text("OpenAPI 3", "application/json", "object")})},
        "/docs": {"get": operation("This document, readable", {"200": text("HTML", "text/html")})},
    }


def back(page: str) -> dict:
    """The redirect Monime sends the shopper to, for the frontend's `page`."""
    return operation(
        f"Where Monime sends the shopper back; redirects to APP_URL/checkout/{page}",
        {
            "303": {
                "description": "To the frontend, whatever Monime says.",
                "headers": {"X-Request-ID": REQUEST_ID, "Location": {"schema": {"type": "string"}, "required": True}},
            },
            "400": error("No orderId."),
            "404": error("No such order."),
            "503": unavailable(),
        },
        parameters=[ORDER_ID],
    )


def operation(
    summary: str,
    responses: dict,
    body: str | None = None,
    parameters: list | None = None,
    example: dict | None = None,
    description: str | None = None,
) -> dict:
    """An OpenAPI operation: `body` names the request's schema, `example` is a request body
    for it, `description` is Markdown."""
    spec = {"summary": summary, "responses": responses, "parameters": parameters or []}
    if description:
        spec["description"] = description
    if body:
        media = {"schema": body} | ({"example": example} if example is not None else {})
        spec["requestBody"] = {"required": True, "content": {"application/json": media}}
    return spec


def secured(summary: str, responses: dict, **kwargs) -> dict:
    """An operation that takes an API key, and its 401 without one."""
    unauthorized = error("No API key, or not one of API_KEYS (`unauthorized`).")
    unauthorized["headers"] = unauthorized["headers"] | {"WWW-Authenticate": WWW_AUTHENTICATE}
    spec = operation(summary, {**responses, "401": unauthorized}, **kwargs)
    return spec | {"security": [{"apiKey": []}]}


def answer(description: str, schema: str | dict, example: dict | None = None) -> dict:
    """A JSON answer of `schema`, with `example` when given."""
    media = {"schema": schema} | ({"example": example} if example is not None else {})
    return {"description": description, "headers": {"X-Request-ID": REQUEST_ID}, "content": {"application/json": media}}


def error(description: str, example: dict | None = None, retry: bool = False) -> dict:
    """An error answer (ErrorSchema), with `example` when given; with `retry`, its Retry-After header."""
    response = answer(description, "Error", example)
    if retry:
        response["headers"] = response["headers"] | {"Retry-After": RETRY_AFTER}
    return response


def unavailable() -> dict:
    """The 503 answer when the database is unavailable."""
    return error("The database is unavailable.", retry=True)


def text(description: str, media_type: str, kind: str = "string") -> dict:
    """A non-JSON answer of `media_type`."""
    return {
        "description": description,
        "headers": {"X-Request-ID": REQUEST_ID},
        "content": {media_type: {"schema": {"type": kind}}},
    }
