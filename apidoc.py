"""The service's own OpenAPI 3 document, built from the marshmallow schemas.

Served at /openapi.json and, readable, at /docs. The checkout request is the
one of the mode the service runs in (catalog or not).
"""

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

DESCRIPTION = """Take payments through Monime's hosted checkout.

Every response carries `X-Request-ID` (yours, if you sent a valid one).
Every error is `{"error": {"code", "message", ...}}`. Amounts are integers
in minor units: 2500 is SLE 25.00.

Rules of a checkout request beyond its schema: every line item uses the same
currency; line item references are unique; metadata keys are 1-100 characters."""

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
        version="1.0.0",
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
    for path, operations in paths().items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


# GET /livez's answer, the one body without a schema of its own.
LIVE = {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}, "required": ["status"]}


def paths() -> dict:
    """The document's paths: every route and its answers."""
    checkout = operation(
        "Create a checkout session for an order",
        {
            "201": answer("A new Monime session; send the shopper to `redirectUrl`.", "CheckoutCreated"),
            "200": answer("The same order again while its session is pending: the same session.", "CheckoutCreated"),
            "400": error("Invalid order: `error.fields` names each bad field. Monime was not called."),
            "409": error("`order_conflict` (this orderId with other content) or `order_completed`."),
            "413": error("Body too large."),
            "415": error("Not `Content-Type: application/json`."),
            "429": error("Too many checkouts from this client.", retry=True),
            "502": error("Monime refused (`monime_rejected`) or kept failing (`monime_unavailable`)."),
            "503": error("The database is unavailable.", retry=True),
            "504": error("Monime did not answer in time (`monime_timeout`)."),
        },
        body="CheckoutRequest",
    )
    webhook = operation(
        "Receive a Monime webhook (signed)",
        {
            "200": answer("Processed, or a redelivery acknowledged.", "WebhookReceipt"),
            "400": error("Signed, but not a Monime event."),
            "401": error("Signature missing, malformed, stale or not matching."),
            "413": error("Body over 1 MiB."),
            "503": error("Database unavailable, or Monime cannot confirm a completion; deliver again.", retry=True),
        },
        body="WebhookEvent",
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
                    "200": answer("Orders changed after `after`; `next` continues from the last.", "OrderPage"),
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
                    "200": answer("Resolved, and recorded under the API key's name.", "Resolution"),
                    "400": error("Invalid: `error.fields` names each bad field."),
                    "404": error("No such order."),
                    "409": error("`not_held`: the order is not held for review (or was just resolved)."),
                    "413": error("Body too large."),
                    "415": error("Not `Content-Type: application/json`."),
                    "503": unavailable(),
                },
                body="ResolveRequest",
                parameters=[{**ORDER_ID, "in": "path"}],
            )
        },
        "/api/orders/{orderId}": {
            "get": operation(
                "An order's status",
                {"200": answer("The order.", "Order"), "404": error("No such order."), "503": unavailable()},
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


def operation(summary: str, responses: dict, body: str | None = None, parameters: list | None = None) -> dict:
    """An operation: summary, answers by status, and an optional JSON request body and parameters."""
    spec = {"summary": summary, "responses": responses, "parameters": parameters or []}
    if body:
        spec["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return spec


def secured(summary: str, responses: dict, **kwargs) -> dict:
    """An operation that takes an API key, and its 401 without one."""
    unauthorized = error("No API key, or not one of API_KEYS (`unauthorized`).")
    unauthorized["headers"] = unauthorized["headers"] | {"WWW-Authenticate": WWW_AUTHENTICATE}
    spec = operation(summary, {**responses, "401": unauthorized}, **kwargs)
    return spec | {"security": [{"apiKey": []}]}


def answer(description: str, schema: str | dict) -> dict:
    """A JSON answer with the `schema` (a name or an inline schema) and X-Request-ID."""
    return {
        "description": description,
        "headers": {"X-Request-ID": REQUEST_ID},
        "content": {"application/json": {"schema": schema}},
    }


def error(description: str, retry: bool = False) -> dict:
    """An error answer (ErrorSchema); with `retry`, its Retry-After header."""
    response = answer(description, "Error")
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
