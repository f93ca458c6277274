"""Generated input (hypothesis) against every endpoint: no request gets a 5xx, every 4xx has a
JSON error body, and a refused request stores nothing. Plus the two inputs that used to get a
5xx or a wrong answer, under gunicorn: JSON nested 1000 deep, and a chunked body over the limit.

The endpoints come from the app's URL map, so a new endpoint is fuzzed without a change here.
Under CI=true the examples are derandomized: the same inputs on every run.
"""

import json
import os
import re
from urllib.parse import quote_from_bytes, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from config import MAX_BODY_BYTES
from conftest import make_app, service_settings
from models import Order, WebhookEvent, db
from schemas import MAX_JSON_DEPTH
from signatures import HEADER, sign
from support import BEARER, WEBHOOK_PATH, WEBHOOK_SECRET, chunked, exchange, order_payload

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?[^<>]+>")
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    "application/merge-patch+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "multipart/form-data",
]
EVENT_NAMES = [
    "checkout_session.completed",
    "checkout_session.cancelled",
    "checkout_session.expired",
    "payment.created",
]

# --- JSON text, as a client could write it (numbers and nesting Python's json.dumps would not make) ---

special_characters = st.sampled_from(["\x00", "\ud800", "\udfff", "\u2028", '"', "\\", "\uffff", "\U0010ffff"])
json_strings = st.text(st.characters() | special_characters, max_size=40).map(json.dumps)  # surrogates as \\udxxx
json_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1.5", "0", "-0", "1e2"]),
    st.integers(min_value=20, max_value=6000).map(lambda digits: "9" * digits),  # past int's 4300-digit limit too
)
json_scalars = st.one_of(st.sampled_from(["null", "true", "false"]), json_numbers, json_strings)


def json_array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def json_object(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in pairs.items()) + "}"


json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4).map(json_array)
        | st.dictionaries(st.text(max_size=12), inner, max_size=4).map(json_object)
    ),
    max_leaves=12,
)
deep_json = st.builds(
    lambda depth, opener, leaf: opener * depth + leaf + {"[": "]", '{"a":': "}"}[opener] * depth,
    # Hypothesis raises the recursion limit by 2000 while a test runs, so 1000 levels (a 500 in
    # production) would pass here: the deep cases go far past it.
    st.sampled_from([MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 1000, 10_000, 30_000]) | st.integers(0, 30_000),
    st.sampled_from(["[", '{"a":']),
    json_scalars,
)
any_json = json_values | deep_json


def maybe(valid: str):
    """The valid JSON text of a field (three times in four, so whole valid bodies come up too), or
    anything in its place."""
    return st.one_of(*[st.just(valid)] * 3, json_values)  # deep nesting is a whole body of its own


item_fields = {
    "name": maybe('"x"'),
    "price": st.fixed_dictionaries({"currency": maybe('"SLE"'), "value": maybe("100")}).map(json_object),
    "quantity": maybe("1"),
    "sku": maybe('"bundle"'),
}
line_item = st.one_of(
    st.fixed_dictionaries({key: item_fields[key] for key in ("name", "price", "quantity")}),  # client prices
    st.fixed_dictionaries({key: item_fields[key] for key in ("sku", "quantity")}),  # catalog mode
    st.fixed_dictionaries({}, optional=item_fields),
).map(json_object)


def order_with(order_id: str, key: str | None, value: str) -> str:
    """A valid order's JSON text, with the field `key` (if any) set to the JSON text `value`."""
    fields = {name: json.dumps(field) for name, field in order_payload(order_id).items()}
    return json_object(fields | ({key: value} if key else {}))


order_ids = st.from_regex(r"\Aord_[a-z0-9]{1,6}\Z")
one_field_changed = st.builds(order_with, order_ids, st.sampled_from([None, *order_payload()]), json_values)
many_fields_changed = st.fixed_dictionaries(
    {key: maybe(json.dumps(value)) for key, value in order_payload().items() if key not in ("lineItems", "orderId")}
    | {
        "orderId": order_ids.map(json.dumps) | json_values,
        "lineItems": st.lists(line_item, min_size=1, max_size=3).map(json_array) | json_values,
    }
).map(json_object)
checkout_bodies = one_field_changed | many_fields_changed


def event_with(event_id: str, name: str, key: str | None, value: str) -> str:
    """A Monime event's JSON text, with the part `key` (if any) set to the JSON text `value`."""
    parts = {
        "apiVersion": '"caph.2025-08-23"',
        "event": json_object({"id": json.dumps(event_id), "name": json.dumps(name)}),
        "object": '{"id": "scs-fuzz", "type": "checkout_session"}',
        "data": '{"id": "scs-fuzz", "reference": "ord_fuzz", "status": "completed"}',
    }
    return json_object(parts | ({key: value} if key else {}))


one_part_changed = st.builds(
    event_with,
    st.uuids().map(lambda id_: f"evt-{id_}"),
    st.sampled_from(EVENT_NAMES),
    st.sampled_from([None, "apiVersion", "event", "object", "data"]),
    json_values,
)
many_parts_changed = st.fixed_dictionaries(
    {
        "event": st.fixed_dictionaries(
            {
                "id": st.uuids().map(lambda id_: f'"evt-{id_}"') | json_values,
                "name": st.sampled_from(EVENT_NAMES).map(json.dumps) | json_values,
            }
        ).map(json_object)
        | json_values,
        "object": st.fixed_dictionaries({"id": maybe('"scs-fuzz"'), "type": maybe('"checkout_session"')}).map(
            json_object
        ),
        "data": st.fixed_dictionaries(
            {
                "id": maybe('"scs-fuzz"'),
                "reference": maybe('"ord_fuzz"'),
                "lineItems": st.lists(line_item).map(lambda items: json_object({"data": json_array(items)}))
                | json_values,
            }
        ).map(json_object),
    }
).map(json_object)
event_bodies = one_part_changed | many_parts_changed

bodies = st.one_of(
    st.binary(max_size=512),
    deep_json.map(str.encode),
    st.one_of(any_json, checkout_bodies, event_bodies).flatmap(
        lambda text: st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]).map(
            lambda codec: text.encode(codec, "surrogatepass" if codec != "latin-1" else "replace")
        )
    ),
)

# --- the rest of a request ----------------------------------------------------------------------------

latin1 = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=60)
percent_encoded = st.binary(max_size=40).map(lambda raw: quote_from_bytes(raw, safe=""))  # %FF, %00…
signature_headers = st.one_of(
    latin1,
    st.sampled_from(["", "t=", "v1=", "t=1,v1=", "t=-1,v1=x", "t=١٢,v1=x", "t=1e3,v1=x", "v1=x,t=1,t=2"]),
    st.integers(min_value=1, max_value=400).map(lambda digits: f"t={'9' * digits},v1=x"),  # 309+: past a float
)
header_values = {
    "X-Request-ID": latin1,
    "X-Forwarded-For": latin1,
    "Origin": latin1,
    "Accept": latin1,
    "Authorization": latin1,
    "Idempotency-Key": latin1,
    HEADER: signature_headers,
    "X-Fuzz": latin1,
}
headers = st.fixed_dictionaries({}, optional=header_values)
query_strings = st.lists(
    st.tuples(st.sampled_from(["orderId", "x", ""]) | percent_encoded, percent_encoded | latin1.map(str.strip)),
    max_size=3,
).map(lambda pairs: "&".join(f"{key}={value}" for key, value in pairs))


content_types = st.sampled_from(["application/json"] * len(CONTENT_TYPES) + CONTENT_TYPES) | latin1


@pytest.fixture(params=["client-prices", "catalog"])
def service(request, app, database_url, simulator, tmp_path):
    """The service as it prices orders: from the client's line items, or from CATALOG_FILE."""
    if request.param == "client-prices":
        return app
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"bundle": {"name": "Bundle", "price": 2500, "currency": "SLE"}}))
    return make_app(service_settings(database_url, simulator.url) | {"CATALOG_FILE": str(catalog)})


def endpoints(app, method: str | None = None) -> list[str]:
    """Every route of the service (with `method`: that accepts it), as written in the URL map,
    e.g. /api/orders/<order_id>."""
    rules = app.url_map.iter_rules()
    return sorted({rule.rule for rule in rules if rule.endpoint != "static" and method in (None, *rule.methods)})


def stored(app) -> tuple[int, int]:
    """How many orders and webhook events the database holds."""
    with app.app_context():
        counts = tuple(db.session.scalar(select(func.count()).select_from(model)) for model in (Order, WebhookEvent))
        db.session.commit()
        return counts


def assert_refused_properly(response, method: str) -> None:
    assert response.status_code < 500, (response.status_code, response.data[:500])
    if response.status_code >= 400 and method != "HEAD":
        error = response.get_json(silent=True)
        assert isinstance(error, dict), (response.status_code, response.data[:500])
        assert isinstance(error["error"]["code"], str)
        assert isinstance(error["error"]["message"], str)


def test_every_endpoint_is_fuzzed(app):
    """The URL map is where the fuzzing finds its endpoints: it must hold all of them."""
    assert {
        "/api/checkout",
        "/api/checkout/success",
        "/api/checkout/cancel",
        "/api/orders/<order_id>",
        "/api/orders",
        "/api/orders/<order_id>/resolve",
        WEBHOOK_PATH,
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/docs",
    } <= set(endpoints(app))


def send(app, method: str, path: str, body: bytes, request_headers: dict, query: str):
    """Send one request through the test client; assert it is answered without a 5xx, with a JSON
    error body when refused, and that a refused request stored nothing."""
    before = stored(app)
    response = app.test_client().open(
        urlsplit(path).path or "/", method=method, data=body, headers=request_headers, query_string=query
    )
    assert_refused_properly(response, method)
    if response.status_code >= 400:
        assert stored(app) == before, "a refused request stored something"


@FUZZ
@given(data=st.data())
def test_no_request_gets_a_5xx_or_stores_anything_when_refused(service, data):
    app = service
    # half the requests go to an endpoint that takes a body, where most of the parsing is
    rule = data.draw(st.sampled_from(endpoints(app, "POST")) | st.sampled_from(endpoints(app)), label="endpoint")
    path = RULE_ARGUMENT.sub(lambda _: data.draw(percent_encoded | latin1.map(str.strip), label="argument"), rule)
    allowed = sorted(next(r.methods for r in app.url_map.iter_rules() if r.rule == rule) - {"HEAD", "OPTIONS"})
    method = data.draw(st.sampled_from(allowed) | st.sampled_from(METHODS), label="method")
    body = data.draw(bodies, label="body")
    request_headers = data.draw(headers, label="headers") | {"Content-Type": data.draw(content_types)}
    send(app, method, path, body, request_headers, data.draw(query_strings, label="query"))


@FUZZ
@given(
    body=checkout_bodies.map(str.encode) | bodies,
    content_type=st.just("application/json") | content_types,
    request_headers=headers,
)
def test_no_checkout_gets_a_5xx_or_stores_anything_when_refused(service, body, content_type, request_headers):
    """Mostly order-shaped JSON, so the schema, the catalog and Monime's answer are reached too."""
    send(service, "POST", "/api/checkout", body, request_headers | {"Content-Type": content_type}, "")


feed_queries = st.lists(
    st.tuples(st.sampled_from(["status", "after", "limit", "x"]) | percent_encoded, percent_encoded | latin1),
    max_size=3,
).map(lambda pairs: "&".join(f"{key}={value}" for key, value in pairs))
resolutions = st.fixed_dictionaries(
    {}, optional={"action": st.sampled_from(['"complete"', '"dismiss"']) | json_scalars, "note": json_values}
).map(json_object)


@FUZZ
@given(query=feed_queries, body=resolutions.map(str.encode) | bodies, order_id=st.sampled_from(["ord_1", "%00"]))
def test_no_feed_query_or_resolution_with_a_key_gets_a_5xx(app, query, body, order_id):
    """With a valid API key, so the query and body parsing of the backend API are reached."""
    send(app, "GET", "/api/orders", b"", BEARER, query)
    send(app, "POST", f"/api/orders/{order_id}/resolve", body, BEARER | {"Content-Type": "application/json"}, "")


@FUZZ
@given(body=event_bodies.map(str.encode) | bodies, signature=st.none() | signature_headers, request_headers=headers)
def test_no_webhook_delivery_gets_a_5xx_or_stores_anything_when_refused(app, body, signature, request_headers):
    """Signed (None: a valid signature of the body, so the event parser is reached) and not."""
    request_headers[HEADER] = sign(body, WEBHOOK_SECRET) if signature is None else signature
    send(app, "POST", WEBHOOK_PATH, body, request_headers, "")


def with_description(raw_json: str) -> bytes:
    """A valid order whose description is `raw_json` (one level below the top)."""
    return json.dumps(order_payload(description="?")).replace('"?"', raw_json).encode()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (with_description("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH), f"nested deeper than {MAX_JSON_DEPTH}"),
        (with_description("NaN"), "NaN is not JSON"),
        (with_description("-Infinity"), "-Infinity is not JSON"),
        (with_description("1e999"), "too large for a float"),
        (with_description("9" * 65), "longer than 64 characters"),
        (b"\xff" + with_description("1"), "can't decode byte 0xff"),
    ],
    ids=["too-deep", "nan", "infinity", "float-overflow", "long-number", "not-utf8"],
)
@pytest.mark.parametrize("path", ["/api/checkout", WEBHOOK_PATH])
def test_json_past_the_limits_is_400_naming_the_problem(api, app, simulator, path, body, problem):
    before = stored(app)
    response = api.post(
        path, data=body, headers={HEADER: sign(body, WEBHOOK_SECRET), "Content-Type": "application/json"}
    )

    assert response.status_code == 400, response.get_json()
    assert problem in response.get_json()["error"]["message"]
    assert simulator.requests() == []
    assert stored(app) == before


def test_json_at_the_depth_limit_is_parsed(api):
    depth = MAX_JSON_DEPTH - 1  # the order itself is the first level
    response = api.post(
        "/api/checkout", data=with_description("[" * depth + "]" * depth), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["fields"] == {"description": ["Not a valid string."]}


# --- the same kinds under gunicorn, where the server frames the body ------------------------------


def signed_chunked(path: str, body: bytes) -> bytes:
    return chunked(path, body, **{HEADER: sign(body, WEBHOOK_SECRET), "Content-Type": "application/json"})


@pytest.mark.parametrize(("path", "limit"), [(WEBHOOK_PATH, MAX_BODY_BYTES), ("/api/checkout", 64 * 1024)])
def test_a_chunked_body_over_the_limit_is_413_under_gunicorn(app, live_server, path, limit):
    """Werkzeug used to hand the first `limit` bytes over as the whole body: a webhook then failed
    its signature (401) and a checkout was bad JSON (400)."""
    before = stored(app)

    status, answer = exchange(live_server.url, signed_chunked(path, b"[" + b" " * limit + b"]"))

    assert status == 413, answer[:300]
    assert json.loads(answer)["error"]["code"] == "request_entity_too_large"
    assert stored(app) == before


def test_a_chunked_body_at_the_limit_is_read_whole_under_gunicorn(app, live_server):
    body = json.dumps({"event": {"id": "evt-chunked", "name": "payment.created"}, "pad": ""}).encode()
    body = body[:-2] + b" " * (MAX_BODY_BYTES - len(body)) + body[-2:]  # exactly 1 MiB, padded inside

    status, answer = exchange(live_server.url, signed_chunked(WEBHOOK_PATH, body))

    assert status == 200, answer[:300]
    assert json.loads(answer)["outcome"] == "ignored"


@pytest.mark.parametrize("path", [WEBHOOK_PATH, "/api/checkout"])
def test_json_nested_1000_deep_is_400_under_gunicorn(app, live_server, path):
    before = stored(app)

    status, answer = exchange(live_server.url, signed_chunked(path, b"[" * 1000 + b"]" * 1000))

    assert status == 400, answer[:300]
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in json.loads(answer)["error"]["message"]
    assert stored(app) == before


def get(target: bytes, *headers: bytes, host: bytes = b"checkout.test") -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: " + host, *headers]) + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (chunked(WEBHOOK_PATH, b"{}").replace(b"2\r\n{}", b"zz\r\n{}"), 400),  # gunicorn's InvalidChunkSize: was 500
        (get(b"/healthz", b"X-Request-ID: \xe2\x82\xac\xff"), 200),
        (chunked(WEBHOOK_PATH, b"{}", **{HEADER: "t=\xd9\xa1,v1=\xff"}), 401),
        (get(b"/api/orders/%FF"), 404),
        (get(b"/api/orders/%00"), 404),
        (get(b"/api/orders/%ED%A0%80"), 404),
        (get(b"/api/checkout/success?orderId=%00"), 404),
        (get(b"/api/checkout/cancel?orderId=%G1%&=&orderId"), 404),
        (get(b"/api/checkout/success?orderId=%FF%FE", host=b"\xff\xfe:99999"), 404),
        (chunked("/api/checkout", b"{}", **{"Content-Type": "application/json; charset=bogus"}), 400),
    ],
    ids=["bad-chunk-size", "non-ascii-header", "non-ascii-signature", "path-ff", "path-nul", "path-surrogate",
         "query-nul", "query-bad-percent", "host-non-ascii", "unknown-charset"],
)  # fmt: skip
def test_odd_bytes_on_the_wire_get_a_json_answer_under_gunicorn(app, live_server, request_bytes, expected):
    """What gunicorn passes on to the service. (What it refuses itself, such as a control
    character in a header or a raw non-ASCII byte in the request line, it answers with its own
    HTML 400 or 431, before the service sees it.)"""
    before = stored(app)

    status, answer = exchange(live_server.url, request_bytes)

    assert status == expected, answer[:300]
    if status >= 400:
        assert json.loads(answer)["error"]["code"]
    assert stored(app) == before
