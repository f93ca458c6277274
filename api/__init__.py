"""The HTTP surface: one blueprint per area, JSON errors everywhere."""

from api import checkout, errors, status, webhooks


def init_app(app) -> None:
    for module in (checkout, webhooks, status):
        app.register_blueprint(module.bp)
    errors.init_app(app)
