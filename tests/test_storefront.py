"""The demo storefront's server: one page for the shop and for the pages Monime's shopper
comes back to, its script and styles, and the service's address as /config.js."""

import pytest

import storefront


@pytest.fixture
def shop():
    return storefront.create_app("http://127.0.0.1:8000/").test_client()


@pytest.mark.parametrize("path", ["/", "/checkout/success?orderId=ord_1", "/checkout/cancelled?orderId=ord_1"])
def test_the_shop_and_the_pages_the_shopper_comes_back_to_are_one_page(shop, path):
    page = shop.get(path)

    assert page.status_code == 200 and page.mimetype == "text/html"
    assert '<main id="shop"' in page.text and '<main id="order"' in page.text
    assert '<script src="/config.js"></script>' in page.text


def test_config_js_tells_the_script_where_the_service_is(shop):
    config = shop.get("/config.js")

    assert config.mimetype == "text/javascript"
    assert config.text == 'window.SHOP = {"apiUrl": "http://127.0.0.1:8000"};\n'


@pytest.mark.parametrize(
    ("path", "mimetype"), [("/static/shop.js", "text/javascript"), ("/static/shop.css", "text/css")]
)
def test_the_script_and_the_styles_are_served(shop, path, mimetype):
    response = shop.get(path)

    assert response.status_code == 200 and response.mimetype == mimetype
    response.close()


def test_anything_else_is_a_404(shop):
    assert shop.get("/checkout/other").status_code == 404
    assert shop.get("/admin").status_code == 404
