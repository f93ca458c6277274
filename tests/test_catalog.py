"""Catalog mode: with CATALOG_FILE set, the shop's prices are charged, never the browser's."""

import json

import pytest

from config import ConfigError
from conftest import make_app, service_settings
from support import order

CATALOG_YAML = """
starter-bundle:
  name: Starter bundle
  price: 2500
  currency: SLE
  description: Two of everything
gift-wrap: {name: Gift wrap, price: 150, currency: SLE}
usd-item: {name: Imported item, price: 999, currency: USD}
"""


@pytest.fixture
def shop(app, database_url, simulator, tmp_path):  # app: empty tables
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG_YAML)
    return make_app(service_settings(database_url, simulator.url) | {"CATALOG_FILE": str(catalog)}).test_client()


def order_of(*line_items, order_id="ord_catalog") -> dict:
    return {"name": "Order #1", "orderId": order_id, "lineItems": list(line_items)}


def test_line_items_name_a_sku_and_the_service_charges_the_catalogs_prices(shop, simulator):
    response = shop.post("/api/checkout", json=order_of({"sku": "starter-bundle", "quantity": 2}, {"sku": "gift-wrap"}))

    assert response.status_code == 201, response.get_json()
    stored = order(shop, "ord_catalog")
    assert stored["amount"] == {"currency": "SLE", "value": 2 * 2500 + 150}
    [sent] = simulator.requests("POST")
    assert sent["body"]["lineItems"] == [
        {"type": "custom", "name": "Starter bundle", "price": {"currency": "SLE", "value": 2500}, "quantity": 2,
         "description": "Two of everything", "reference": "starter-bundle"},
        {"type": "custom", "name": "Gift wrap", "price": {"currency": "SLE", "value": 150}, "quantity": 1,
         "reference": "gift-wrap"},
    ]  # fmt: skip


@pytest.mark.parametrize("field", ["price", "name", "description", "reference"])
def test_a_line_item_bringing_its_own_price_or_name_is_refused(shop, simulator, field):
    item = {"sku": "starter-bundle", field: {"currency": "SLE", "value": 1} if field == "price" else "x"}

    response = shop.post("/api/checkout", json=order_of(item))

    assert response.status_code == 400
    assert response.get_json()["error"]["fields"]["lineItems"]["0"][field] == [
        "set by the catalog; send only sku and quantity"
    ]
    assert simulator.requests() == []


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"sku": "no-such-thing"}], "unknown sku: no-such-thing"),
        ([{"sku": "gift-wrap"}, {"sku": "gift-wrap"}], "each sku once per order; use quantity"),
        ([{"sku": "gift-wrap"}, {"sku": "usd-item"}], "all line items must use the same currency"),
    ],
)
def test_what_the_catalog_cannot_price_is_refused(shop, simulator, items, message):
    response = shop.post("/api/checkout", json=order_of(*items))
    assert response.status_code == 400
    assert response.get_json()["error"]["fields"]["lineItems"] == [message]
    assert simulator.requests() == []


@pytest.mark.parametrize("quantity", [0, 100_001, 1.5, "2"])
def test_quantities_keep_monimes_limits(shop, quantity):
    response = shop.post("/api/checkout", json=order_of({"sku": "gift-wrap", "quantity": quantity}))
    assert response.status_code == 400
    assert "quantity" in response.get_json()["error"]["fields"]["lineItems"]["0"]


def test_a_json_catalog_works_too(app, database_url, simulator, tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"tea": {"name": "Tea", "price": 700, "currency": "USD"}}))
    client = make_app(service_settings(database_url, simulator.url) | {"CATALOG_FILE": str(catalog)}).test_client()

    assert client.post("/api/checkout", json=order_of({"sku": "tea", "quantity": 3})).status_code == 201
    assert order(client, "ord_catalog")["amount"] == {"currency": "USD", "value": 2100}


def test_without_a_catalog_the_browsers_prices_are_used_and_a_sku_is_refused(client):
    response = client.post("/api/checkout", json=order_of({"sku": "gift-wrap"}))
    assert response.status_code == 400
    assert "sku" in response.get_json()["error"]["fields"]["lineItems"]["0"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2]", "must map each sku to a product"),
        ("{}", "must map each sku to a product"),
        ("tea: {name: Tea, price: 7.5, currency: SLE}", "product 'tea' is invalid"),
        ("tea: {name: Tea, price: 700, currency: EUR}", "product 'tea' is invalid"),
        ("tea: {price: 700, currency: SLE}", "product 'tea' is invalid"),
        ("tea: [unclosed", "cannot be read"),
    ],
)
def test_the_service_refuses_to_start_with_a_bad_catalog(database_url, tmp_path, content, problem):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        make_app(service_settings(database_url, "http://127.0.0.1:9") | {"CATALOG_FILE": str(catalog)})


def test_a_missing_catalog_file_stops_the_start(database_url, tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        make_app(service_settings(database_url, "http://127.0.0.1:9") | {"CATALOG_FILE": str(tmp_path / "nope.yaml")})


def test_the_openapi_document_describes_the_catalog_request(shop):
    schemas = shop.get("/openapi.json").get_json()["components"]["schemas"]
    item = schemas["CatalogLineItem"]["properties"]
    assert set(item) == {"type", "sku", "quantity"}
