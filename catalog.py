"""Catalog mode: with CATALOG_FILE set, prices come from the shop, not the browser.

The file (YAML or JSON) maps each sku to {name, price, currency, description?},
price in minor units. It is read and checked once, at start-up.
"""

from pathlib import Path

import yaml
from flask import current_app
from marshmallow import ValidationError

from config import ConfigError
from schemas import CatalogCheckoutRequestSchema, CatalogEntrySchema, CheckoutRequestSchema


def load(path: str) -> dict[str, dict]:
    """The catalog in the YAML or JSON file at `path`: sku -> {name, price (minor units), currency,
    description}. Raises config.ConfigError when it cannot be read or a product is invalid."""
    try:
        products = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"CATALOG_FILE {path!r} cannot be read: {exc}") from None
    if not isinstance(products, dict) or not products:
        raise ConfigError(f"CATALOG_FILE {path!r} must map each sku to a product")
    catalog = {}
    for sku, entry in products.items():
        try:
            catalog[str(sku)] = CatalogEntrySchema().load(entry)
        except ValidationError as exc:
            raise ConfigError(f"CATALOG_FILE {path!r}: product {sku!r} is invalid: {exc.messages}") from None
    return catalog


def init_app(app) -> None:
    """Load CATALOG_FILE (when set) and build the checkout schema for the mode, once."""
    path = app.config["CATALOG_FILE"]
    catalog = app.extensions["catalog"] = load(path) if path else None
    # built once: a fresh schema builds its nested schemas again on every request
    app.extensions["checkout_schema"] = CatalogCheckoutRequestSchema(catalog) if catalog else CheckoutRequestSchema()


def checkout_schema() -> CheckoutRequestSchema:
    """The request schema for the mode the service runs in."""
    return current_app.extensions["checkout_schema"]
