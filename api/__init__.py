"""The HTTP surface: one blueprint per area, JSON errors everywhere."""

from api import backend, checkout, errors, guard, status, webhooks


def init_app(app) -> None:
    """Register the request guard, the blueprints and the JSON error handlers."""
    guard.init_app(app, before_limits=(checkout.shed_when_monime_busy,))
    for module in (checkout, webhooks, status, backend):
        app.register_blueprint(module.bp)
    errors.init_app(app)
