"""Monime's own OpenAPI document, used to validate what the simulator receives and sends."""

from functools import cache
from pathlib import Path

import yaml
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SPEC_FILE = Path(__file__).with_name("monime-openapi-caph-2025-08-23.yaml")
SPEC_URI = "urn:monime-openapi"
CREATE_SESSION = "#/paths/~1v1~1checkout-sessions/post/requestBody/content/application~1json/schema"
CHECKOUT_SESSION = "#/components/schemas/CheckoutSession"


@cache
def document() -> dict:
    """Monime's OpenAPI document, as JSON Schema (see as_json_schema)."""
    return as_json_schema(yaml.safe_load(SPEC_FILE.read_text()))


def parameter(path: str, method: str, name: str) -> dict:
    """The schema of the query or header parameter `name` of the operation `method` (lower
    case) on `path`, e.g. ("/v1/checkout-sessions", "get", "limit"). KeyError if there is none."""
    for given in document()["paths"][path][method]["parameters"]:
        if given["name"] == name:
            return given["schema"]
    raise KeyError(f"{method.upper()} {path} has no parameter {name}")


@cache
def validator(pointer: str) -> Draft4Validator:
    """A JSON Schema validator for the schema at `pointer` in Monime's document."""
    spec = document()
    registry = Registry().with_resource(SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT4))
    return Draft4Validator({"$ref": SPEC_URI + pointer}, registry=registry)


def errors(pointer: str, document) -> list[str]:
    """Every way `document` breaks the schema, as 'path: message' lines."""
    found = sorted(validator(pointer).iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in found]


def as_json_schema(node):
    """OpenAPI 3.0 writes `nullable: true` where JSON Schema wants a null type."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: as_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    return node
