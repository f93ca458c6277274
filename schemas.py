"""Marshmallow schemas: what a request may contain, and what the service answers.

The checkout limits mirror Monime's CreateCheckoutSession (caph.2025-08-23),
so a request that passes here is one Monime accepts.
"""

import json
import math
import re
from datetime import UTC

from marshmallow import INCLUDE, Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema

from models import ORDER_ID_PATTERN, Outcome, Status

CURRENCIES = ("SLE", "USD")
# Decimal places of each currency's minor unit (ISO 4217): 2500 SLE minor units are SLE 25.00.
MINOR_UNIT_PLACES = {"SLE": 2, "USD": 2}
# Monime sets no ceiling on a unit price; this one keeps 16 items x 100,000
# units inside a signed 64-bit total (BIGINT) with room to spare.
MAX_UNIT_PRICE = 10**12
MAX_CLIENT_METADATA = 63  # Monime allows 64; the service adds orderId

# A checkout request is 4 levels deep and a Monime event about 6; past these limits a body is
# not one of ours, and the parser and the schemas (both recursive) never see it.
MAX_JSON_DEPTH = 32
MAX_JSON_NUMBER_CHARACTERS = 64  # a 64-bit integer has 20; Python refuses over 4300 digits with a ValueError
# Each JSON string as a whole (so brackets inside one are skipped), or a bracket. An unclosed
# string runs to the end rather than failing, so no text makes the scan quadratic.
JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


def load_json(data: bytes | str) -> object:
    """A request body (UTF-8 bytes or text) parsed as strict JSON (RFC 8259): at most
    MAX_JSON_DEPTH levels of arrays and objects, numbers of at most MAX_JSON_NUMBER_CHARACTERS
    characters, no NaN or Infinity, finite floats. Raises ValueError naming what is wrong
    (UnicodeDecodeError and json.JSONDecodeError are ValueErrors) before anything recurses."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    depth = 0
    for token in JSON_NESTING.finditer(text):
        match token.group():
            case "[" | "{":
                depth += 1
                if depth > MAX_JSON_DEPTH:
                    raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            case "]" | "}":
                depth -= 1
    return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)


def _json_number(literal: str) -> str:
    if len(literal) > MAX_JSON_NUMBER_CHARACTERS:
        raise ValueError(f"a JSON number longer than {MAX_JSON_NUMBER_CHARACTERS} characters")
    return literal


def _json_int(literal: str) -> int:
    return int(_json_number(literal))


def _json_float(literal: str) -> float:
    value = float(_json_number(literal))
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"a JSON number too large for a float: {literal}")
    return value


def _json_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def storable(value: str) -> None:
    """Text either database can store: no NUL, no unpaired surrogate (JSON can carry both)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("must not contain unpaired surrogate characters") from None
    if "\x00" in value:
        raise ValidationError("must not contain a NUL character")


def text(max_length: int, *, required: bool = False, min_length: int = 1):
    """A string field of at most `max_length` characters the database can store (`storable`):
    required (and at least `min_length`), or optional and None when missing."""
    if required:
        return fields.String(required=True, validate=[validate.Length(min=min_length, max=max_length), storable])
    return fields.String(load_default=None, allow_none=True, validate=[validate.Length(max=max_length), storable])


class PriceSchema(Schema):
    """Monime's Money of a line item: ISO 4217 currency and value in minor units (0..MAX_UNIT_PRICE)."""

    currency = fields.String(required=True, validate=validate.OneOf(CURRENCIES))
    value = fields.Integer(strict=True, required=True, validate=validate.Range(min=0, max=MAX_UNIT_PRICE))


class LineItemSchema(Schema):
    """A line item as Monime's CreateCheckoutSession takes it (type custom), quantity 1..100000."""

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
        keys=fields.String(validate=[validate.Length(min=1, max=100), storable]),
        values=fields.String(validate=[validate.Length(max=255), storable]),
        load_default=dict,
        validate=validate.Length(max=MAX_CLIENT_METADATA),
    )
    callbackState = text(255)

    @validates_schema
    def line_items_consistent(self, data, **_kwargs):
        """The line items use one currency (Monime's session has one) and no reference twice."""
        items = data.get("lineItems") or []
        if len({item["price"]["currency"] for item in items}) > 1:
            raise ValidationError("all line items must use the same currency", "lineItems")
        references = [item["reference"] for item in items if item.get("reference") is not None]
        if len(references) != len(set(references)):
            raise ValidationError("line item references must be unique within an order", "lineItems")


# --- catalog mode: the shop's prices, not the browser's ---------------------------------


class CatalogEntrySchema(Schema):
    """One product of CATALOG_FILE: sku -> {name, price, currency, description?}."""

    name = text(100, required=True)
    price = fields.Integer(strict=True, required=True, validate=validate.Range(min=0, max=MAX_UNIT_PRICE))
    currency = fields.String(required=True, validate=validate.OneOf(CURRENCIES))
    description = text(100)


class CatalogLineItemSchema(Schema):
    """A line item in catalog mode: a sku and a quantity, nothing the catalog decides."""

    type = fields.String(load_default="custom", validate=validate.Equal("custom"))
    sku = text(100, required=True)
    quantity = fields.Integer(strict=True, load_default=1, validate=validate.Range(min=1, max=100_000))

    @pre_load
    def refuse_what_the_catalog_decides(self, data, **_kwargs):
        """Refuse a name, price, description or reference: the catalog sets them (400, each field named)."""
        if isinstance(data, dict):
            decided = [key for key in ("name", "price", "description", "reference") if key in data]
            if decided:
                raise ValidationError({key: ["set by the catalog; send only sku and quantity"] for key in decided})
        return data


class CatalogCheckoutRequestSchema(CheckoutRequestSchema):
    """POST /api/checkout when CATALOG_FILE is set: line items name a sku and a
    quantity, and the service fills in names and prices from the catalog."""

    lineItems = fields.List(
        fields.Nested(CatalogLineItemSchema), required=True, validate=validate.Length(min=1, max=16)
    )

    def __init__(self, catalog: dict, **kwargs):
        super().__init__(**kwargs)
        self.catalog = catalog

    @validates_schema
    def line_items_consistent(self, data, **_kwargs):
        """Every sku is in the catalog, each once (quantity says how many), all in one currency.
        Replaces the plain schema's check: references are the skus, prices the catalog's."""
        skus = [item["sku"] for item in data.get("lineItems") or []]
        unknown = sorted({sku for sku in skus if sku not in self.catalog})
        if unknown:
            raise ValidationError(f"unknown sku: {', '.join(unknown)}", "lineItems")
        if len(skus) != len(set(skus)):
            raise ValidationError("each sku once per order; use quantity", "lineItems")
        if len({self.catalog[sku]["currency"] for sku in skus}) > 1:
            raise ValidationError("all line items must use the same currency", "lineItems")

    @post_load
    def price_from_the_catalog(self, data, **_kwargs):
        """The loaded order with each line item as `priced` makes it, so it stores like a plain one."""
        data["lineItems"] = [self.priced(item) for item in data["lineItems"]]
        return data

    def priced(self, item: dict) -> dict:
        """The plain line item for a catalog one: the sku's name, price (minor units), currency and
        description, the sku as the reference."""
        entry = self.catalog[item["sku"]]
        return {
            "type": "custom",
            "name": entry["name"],
            "price": {"currency": entry["currency"], "value": entry["price"]},
            "quantity": item["quantity"],
            "description": entry["description"],
            "reference": item["sku"],
        }


# --- what the service answers -----------------------------------------------------------


class UtcDateTime(fields.DateTime):
    """A moment as ISO 8601 in UTC ending in `Z` (`2026-11-30T05:14:43.123456Z`), as Monime's
    own timestamps and the README show. SQLite hands datetimes back without a zone; they were
    stored as UTC."""

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def money(currency: str, minor_units: int) -> str:
    """An amount for people, in major units with its currency: ("SLE", 2500) -> "SLE 25.00";
    a currency of unknown places keeps its minor units ("XYZ 2500 (minor units)")."""
    places = MINOR_UNIT_PLACES.get(currency)
    if places is None:
        return f"{currency} {minor_units} (minor units)"
    whole, part = divmod(abs(minor_units), 10**places)
    return f"{currency} {'-' if minor_units < 0 else ''}{whole}.{part:0{places}d}"


class MoneySchema(Schema):
    """An amount: currency and value in minor units (2500 is SLE 25.00)."""

    currency = fields.String(required=True, validate=validate.OneOf(CURRENCIES))
    value = fields.Integer(required=True, metadata={"description": "minor units: 2500 is SLE 25.00"})


class ReviewSchema(Schema):
    """Why an order is held for review, and the event that held it (null when none did)."""

    reason = fields.String(required=True)
    eventId = fields.String(allow_none=True, required=True)


class OrderSchema(Schema):
    """GET /api/orders/<orderId>"""

    orderId = fields.String(attribute="id", required=True)
    status = fields.String(required=True, validate=validate.OneOf([status.value for status in Status]))
    amount = fields.Nested(MoneySchema, attribute="money", required=True)
    checkoutSessionId = fields.String(attribute="checkout_session_id", allow_none=True, required=True)
    orderNumber = fields.String(
        attribute="monime_order_number",
        allow_none=True,
        required=True,
        metadata={
            "description": "Monime's order number of the payment that completed the order, as on Monime's "
            "receipts (GET /v1/receipts/{orderNumber}); null until a completion brings one"
        },
    )
    name = fields.String(required=True)
    lineItems = fields.List(fields.Nested(LineItemSchema), attribute="line_items", required=True)
    review = fields.Nested(ReviewSchema, allow_none=True, required=True, metadata={"description": "held for a person"})
    createdAt = UtcDateTime(attribute="created_at", required=True)
    updatedAt = UtcDateTime(attribute="updated_at", required=True)


class FeedQuerySchema(Schema):
    """GET /api/orders's query: which orders, from where, how many."""

    status = fields.String(validate=validate.OneOf([status.value for status in Status]))
    after = fields.String(validate=validate.Length(min=1, max=512), metadata={"description": "a `next` cursor"})
    limit = fields.Integer(strict=False, load_default=50, validate=validate.Range(min=1, max=100))


class OrderPageSchema(Schema):
    """GET /api/orders: a page of the feed."""

    data = fields.List(fields.Nested(OrderSchema), required=True)
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "pass as `after` for what follows; null: nothing yet, ask again later with yours"},
    )


RESOLUTION_ACTIONS = ("complete", "dismiss")


class ResolveRequestSchema(Schema):
    """POST /api/orders/<orderId>/resolve, and `flask orders resolve`."""

    action = fields.String(
        required=True,
        validate=validate.OneOf(RESOLUTION_ACTIONS),
        metadata={"description": "complete: the payment is confirmed, the order completed; dismiss: status kept"},
    )
    note = text(500, required=True, min_length=1)


class ResolutionSchema(Schema):
    """What POST /api/orders/<orderId>/resolve did, as recorded."""

    orderId = fields.String(attribute="order_id", required=True)
    action = fields.String(required=True, validate=validate.OneOf(RESOLUTION_ACTIONS))
    by = fields.String(required=True, metadata={"description": "the API key's name, or the shell user"})
    note = fields.String(required=True)
    previousStatus = fields.String(attribute="previous_status", required=True)
    previousReview = fields.Nested(ReviewSchema, attribute="previous_review", required=True)
    resolvedAt = UtcDateTime(attribute="resolved_at", required=True)
    order = fields.Nested(OrderSchema, required=True, metadata={"description": "the order, resolved"})


class CheckoutCreatedSchema(Schema):
    """POST /api/checkout's answer: the order, its Monime session and where to send the shopper."""

    orderId = fields.String(required=True)
    sessionId = fields.String(required=True)
    redirectUrl = fields.String(required=True, allow_none=True, metadata={"description": "send the shopper here"})


class WebhookReceiptSchema(Schema):
    """POST /api/webhooks/monime's answer: what became of the event."""

    received = fields.Boolean(required=True)
    eventId = fields.String(required=True)
    duplicate = fields.Boolean(
        required=True,
        metadata={
            "description": "the event id was stored already: nothing applied (outcome null), "
            "or another body, kept and its order held (outcome held)"
        },
    )
    outcome = fields.String(
        required=True, allow_none=True, validate=validate.OneOf([outcome.value for outcome in Outcome])
    )


class HealthSchema(Schema):
    """GET /healthz's answer."""

    status = fields.String(required=True)
    database = fields.String(required=True)


class ErrorDetailSchema(Schema):
    """The `error` of every error answer: a code, a message and the details the code names."""

    code = fields.String(required=True, metadata={"description": "machine-readable, e.g. validation_failed"})
    message = fields.String(required=True)
    field_errors = fields.Dict(
        data_key="fields", metadata={"description": "validation_failed / malformed_event: each bad field"}
    )
    monimeStatus = fields.Integer(metadata={"description": "monime_rejected: Monime's HTTP status"})
    monimeReason = fields.String()
    monimeMessage = fields.String()


class ErrorSchema(Schema):
    """Every error answer: {"error": {code, message, ...}}."""

    error = fields.Nested(ErrorDetailSchema, required=True)


class EventHeaderSchema(Schema):
    """A Monime event's `event`: its id, name and timestamp."""

    class Meta:
        """Fields Monime adds are kept, not refused."""

        unknown = INCLUDE

    id = fields.String(required=True, validate=[validate.Length(min=1, max=255), storable])
    name = fields.String(required=True, validate=[validate.Length(min=1, max=100), storable])
    timestamp = fields.String(load_default=None, allow_none=True)


class ObjectRefSchema(Schema):
    """A Monime event's `object`: the id and type of what the event is about."""

    class Meta:
        """Fields Monime adds are kept, not refused."""

        unknown = INCLUDE

    id = fields.String(load_default=None, allow_none=True, validate=[validate.Length(max=255), storable])
    type = fields.String(load_default=None, allow_none=True)


class WebhookEventSchema(Schema):
    """Monime's event envelope: {apiVersion, event:{id,name,timestamp}, object:{id,type}, data}."""

    class Meta:
        """Fields Monime adds are kept, not refused."""

        unknown = INCLUDE

    apiVersion = fields.String(load_default=None, allow_none=True)
    event = fields.Nested(EventHeaderSchema, required=True)
    object = fields.Nested(ObjectRefSchema, load_default=dict)
    data = fields.Dict(load_default=dict)
