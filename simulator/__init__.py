"""A local Monime: the checkout-session API over real HTTP, for trying the service in a
browser, for tests, and for anyone writing a Monime integration.

It speaks the official API (caph.2025-08-23): POST/GET/DELETE
/v1/checkout-sessions with Monime's envelope and error shape, checks the
Authorization, Monime-Space-Id and Idempotency-Key headers, and validates
bodies against Monime's own OpenAPI document. A hosted checkout page at each
session's redirectUrl lets a person choose a payment method and pay or cancel;
a session left alone expires at its expireTime.

Webhooks are signed and delivered at least once, retried with backoff, every
attempt recorded (webhooks.py). The dashboard at /_sim/ lists sessions and
deliveries, redelivers, and switches on duplicate, out-of-order and late
delivery; the JSON control endpoints under /_sim do the same for tests, and
switch on faults of the API itself.

    python -m simulator --port 8001        (python -m simulator --help: the integrator's commands)
"""

from flask import Flask

from simulator import api, control, dashboard, hosted, openapi
from simulator.settings import Settings
from simulator.store import Store

ACCESS_TOKEN = "mon_test_simulator"
SPACE_ID = "spc-simulator"
WEBHOOK_SECRET = Settings.webhook_secret


def create_app(config: dict | None = None) -> Flask:
    """The simulator. Settings from `config` or SIMULATOR_* variables: ACCESS_TOKEN, SPACE_ID,
    and each of Settings' fields in capitals (WEBHOOK_URL, SESSION_LIFETIME, RETRY_BACKOFF…)."""
    app = Flask(__name__)
    app.config.from_mapping(ACCESS_TOKEN=ACCESS_TOKEN, SPACE_ID=SPACE_ID)
    app.config.from_prefixed_env("SIMULATOR")  # SIMULATOR_WEBHOOK_URL=... and so on
    app.config.update(config or {})
    store = Store(Settings.from_config(app.config))
    store.settings.warn()
    app.extensions["simulator"] = store
    for blueprint in (api.bp, control.bp, dashboard.bp, hosted.bp):
        app.register_blueprint(blueprint)
    openapi.validator(openapi.CREATE_SESSION)  # parse Monime's document now, not during a first request
    store.outbox.start(store.sweep)
    return app
