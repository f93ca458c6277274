"""Marshmallow schemas: what a request may contain, and how an order is shown.

The checkout limits mirror Monime's CreateCheckoutSession (caph.2025-08-23),
so a request that passes here is one Monime accepts.
"""

from datetime import UTC, datetime

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from models import Status

ORDER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
CURRENCIES = ("SLE", "USD")
# Monime sets no ceiling on a unit price; this one keeps 16 items x 100,000
# units inside a signed 64-bit total (BIGINT) with room to spare.
MAX_UNIT_PRICE = 10**12
MAX_CLIENT_METADATA = 63  # Monime allows 64; the service adds orderId


def text(max_length: int, *, required: bool = False, min_length: int | None = None):
    if required:
        return fields.String(required=True, validate=validate.Length(min=min_length or 1, max=max_length))
    return fields.String(load_default=None, allow_none=True, validate=validate.Length(max=max_length))


class PriceSchema(Schema):
    currency = fields.String(required=True, validate=validate.OneOf(CURRENCIES))
    value = fields.Integer(strict=True, required=True, validate=validate.Range(min=0, max=MAX_UNIT_PRICE))


class LineItemSchema(Schema):
    type = fields.String(load_default="custom", validate=validate.Equal("custom"))
    name = text(100, required=True)
    price = fields.Nested(PriceSchema, required=True)
    quantity = fields.Integer(strict=True, load_default=1, validate=validate.Range(min=1, max=100_000))
    description = text(100)
    reference = text(100)


class CheckoutRequestSchema(Schema):
    """POST /api/checkout, as the frontend in Monime's own guide sends it."""

    name = text(150, required=True)
    orderId = fields.String(
        required=True,
        validate=validate.Regexp(ORDER_ID_PATTERN, error="must be 1-100 letters, digits, '_', '-', '.' or ':'"),
    )
    description = text(1000)
    lineItems = fields.List(fields.Nested(LineItemSchema), required=True, validate=validate.Length(min=1, max=16))
    metadata = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=100)),
        values=fields.String(validate=validate.Length(max=255)),
        load_default=dict,
        validate=validate.Length(max=MAX_CLIENT_METADATA),
    )
    callbackState = text(255)

    @validates_schema
    def one_currency_and_unique_references(self, data, **_kwargs):
        items = data.get("lineItems") or []
        if len({item["price"]["currency"] for item in items}) > 1:
            raise ValidationError("all line items must use the same currency", "lineItems")
        references = [item["reference"] for item in items if item.get("reference") is not None]
        if len(references) != len(set(references)):
            raise ValidationError("line item references must be unique within an order", "lineItems")


def iso_utc(moment: datetime) -> str:
    """SQLite hands datetimes back without a zone; they were stored as UTC."""
    return moment.replace(tzinfo=moment.tzinfo or UTC).isoformat().replace("+00:00", "Z")


class OrderSchema(Schema):
    """GET /api/orders/<orderId>"""

    orderId = fields.String(attribute="id")
    status = fields.String(validate=validate.OneOf(list(Status)))
    amount = fields.Method("_amount")
    checkoutSessionId = fields.String(attribute="checkout_session_id", allow_none=True)
    name = fields.String()
    lineItems = fields.List(fields.Dict(), attribute="line_items")
    review = fields.Method("_review", allow_none=True)
    createdAt = fields.Function(lambda order: iso_utc(order.created_at))
    updatedAt = fields.Function(lambda order: iso_utc(order.updated_at))

    def _amount(self, order):
        return {"currency": order.currency, "value": order.amount}

    def _review(self, order):
        if not order.review_reason:
            return None
        return {"reason": order.review_reason, "eventId": order.review_event_id}


class EventHeaderSchema(Schema):
    class Meta:
        unknown = INCLUDE

    id = fields.String(required=True, validate=validate.Length(min=1, max=255))
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    timestamp = fields.String(load_default=None, allow_none=True)


class ObjectRefSchema(Schema):
    class Meta:
        unknown = INCLUDE

    id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=255))
    type = fields.String(load_default=None, allow_none=True)


class WebhookEventSchema(Schema):
    """Monime's event envelope: {apiVersion, event:{id,name,timestamp}, object:{id,type}, data}."""

    class Meta:
        unknown = INCLUDE

    apiVersion = fields.String(load_default=None, allow_none=True)
    event = fields.Nested(EventHeaderSchema, required=True)
    object = fields.Nested(ObjectRefSchema, load_default=dict)
    data = fields.Dict(load_default=dict)
