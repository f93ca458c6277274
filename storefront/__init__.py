"""A demo shop for monime-checkout: static HTML, CSS and one script, no build step.

The product list and cart call the service's POST /api/checkout from the browser (so the
service must allow this origin: CORS_ORIGINS) and follow the redirectUrl to Monime's
hosted page; Monime sends the shopper back through the service to /checkout/success or
/checkout/cancelled here (the service's APP_URL), which poll GET /api/orders/<orderId>
until the status is final. The service's address reaches the script as /config.js.

    python -m storefront --port 3000 --api-url http://127.0.0.1:8000
"""

import json
from pathlib import Path

from flask import Flask, Response, send_from_directory

PAGES = Path(__file__).with_name("static")


def create_app(api_url: str) -> Flask:
    app = Flask(__name__)
    config = f"window.SHOP = {json.dumps({'apiUrl': api_url.rstrip('/')})};\n"

    @app.get("/")
    @app.get("/checkout/success")
    @app.get("/checkout/cancelled")
    def page():  # one page: the script shows the shop or the order, by the path
        return send_from_directory(PAGES, "index.html")

    @app.get("/config.js")
    def config_js():
        return Response(config, mimetype="text/javascript")

    return app
