"""A local Monime: the checkout-session API over real HTTP, for tests and development.

It speaks the official API (caph.2025-08-23): POST/GET/DELETE
/v1/checkout-sessions with Monime's envelope and error shape, checks the
Authorization, Monime-Space-Id and Idempotency-Key headers, and validates
bodies against Monime's own OpenAPI document. A hosted page at each
session's redirectUrl lets a person pay or cancel.

Control endpoints under /_sim let tests complete, cancel or expire a session
(and have the signed webhook POSTed to the configured URL) and switch on
faults: added latency, 5xx answers, dropped connections.

    flask --app simulator run --port 5001
"""

from flask import Flask

from simulator import api, control, hosted, openapi
from simulator.store import Store

ACCESS_TOKEN = "mon_test_simulator"
SPACE_ID = "spc-simulator"
WEBHOOK_SECRET = "whsec_simulator"


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(ACCESS_TOKEN=ACCESS_TOKEN, SPACE_ID=SPACE_ID, WEBHOOK_SECRET=WEBHOOK_SECRET, WEBHOOK_URL="")
    app.config.from_prefixed_env("SIMULATOR")  # SIMULATOR_WEBHOOK_URL=... and so on
    app.config.update(config or {})
    app.extensions["simulator"] = Store(app.config["WEBHOOK_URL"], app.config["WEBHOOK_SECRET"])
    for blueprint in (api.bp, control.bp, hosted.bp):
        app.register_blueprint(blueprint)
    openapi.validator(openapi.CREATE_SESSION)  # parse Monime's document now, not during a first request
    return app
