"""Settings from the environment, checked once at start-up.

Every variable the service reads is listed in `from_environment`; `check`
refuses to start with one clear error naming everything that is wrong.
"""

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import limits

# successUrl is the longer of the two redirect URLs Monime receives; Monime
# caps both at 255 characters and an orderId may be 100 characters long.
SUCCESS_URL_SUFFIX = "/api/checkout/success?orderId="
LONGEST_ORDER_ID = 100
MONIME_URL_LIMIT = 255

MAX_BODY_BYTES = 1024 * 1024
MAX_RETRY_DEADLINE = 25.0  # the contract: retries end "well under 30 s"


class ConfigError(RuntimeError):
    """The environment does not describe a service that can run."""


def from_environment(environ: Mapping[str, str] = os.environ) -> dict:
    """Read every setting, with the documented defaults."""
    get = environ.get
    return {
        "MONIME_ACCESS_TOKEN": get("MONIME_ACCESS_TOKEN", ""),
        "MONIME_SPACE_ID": get("MONIME_SPACE_ID", ""),
        "MONIME_WEBHOOK_SECRET": get("MONIME_WEBHOOK_SECRET", ""),
        "MONIME_API_BASE_URL": get("MONIME_API_BASE_URL", "https://api.monime.io"),
        "MONIME_WEBHOOK_TOLERANCE": get("MONIME_WEBHOOK_TOLERANCE", "300"),
        "MONIME_CONNECT_TIMEOUT": get("MONIME_CONNECT_TIMEOUT", "3"),
        "MONIME_READ_TIMEOUT": get("MONIME_READ_TIMEOUT", "10"),
        "MONIME_RETRY_DEADLINE": get("MONIME_RETRY_DEADLINE", "15"),
        "MONIME_VERIFY_TIMEOUT": get("MONIME_VERIFY_TIMEOUT", "3"),
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(get("DATABASE_URL", "")),
        "PUBLIC_BASE_URL": get("PUBLIC_BASE_URL", ""),
        "APP_URL": get("APP_URL", ""),
        "CORS_ORIGINS": get("CORS_ORIGINS", ""),
        "RATELIMIT_CHECKOUT": get("RATELIMIT_CHECKOUT", "60/minute"),
        "RATELIMIT_REDIRECT_LOOKUPS": get("RATELIMIT_REDIRECT_LOOKUPS", "10/minute"),
        "RATELIMIT_STORAGE_URI": get("RATELIMIT_STORAGE_URI", "memory://"),
        "RATELIMIT_KEY_PREFIX": get("RATELIMIT_KEY_PREFIX", "monime-checkout"),
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_SWALLOW_ERRORS": True,  # rate-limit storage down: take payments rather than refuse them
        "PROXY_HOPS": get("PROXY_HOPS", "0"),
        "CATALOG_FILE": get("CATALOG_FILE", ""),
        "LOG_LEVEL": get("LOG_LEVEL", "INFO"),
    }


def normalise_database_url(url: str) -> str:
    """Accept the `postgres://` URLs hosting platforms hand out; we speak psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def check(config: dict, *, relaxed: bool) -> None:
    """Validate and convert `config` in place. `relaxed` (tests, debug) lets
    the Monime credentials be empty, as the simulator does not need real ones."""
    problems = []
    required = ["MONIME_WEBHOOK_SECRET", "PUBLIC_BASE_URL", "APP_URL"]
    if not relaxed:
        required += ["MONIME_ACCESS_TOKEN", "MONIME_SPACE_ID"]
    problems += [f"{name} is required" for name in required if not config.get(name)]

    for name in ("PUBLIC_BASE_URL", "APP_URL", "MONIME_API_BASE_URL"):
        config[name] = str(config.get(name) or "").rstrip("/")
        if config[name] and not is_absolute_http_url(config[name]):
            problems.append(f"{name} must be an absolute http(s) URL without query or fragment")

    longest = len(config["PUBLIC_BASE_URL"]) + len(SUCCESS_URL_SUFFIX) + LONGEST_ORDER_ID
    if longest > MONIME_URL_LIMIT:
        problems.append(
            f"PUBLIC_BASE_URL is too long: with a {LONGEST_ORDER_ID}-character orderId the "
            f"successUrl would be {longest} characters, over Monime's {MONIME_URL_LIMIT}"
        )

    config["MONIME_WEBHOOK_SECRETS"] = comma_list(config.get("MONIME_WEBHOOK_SECRET"))
    if config.get("MONIME_WEBHOOK_SECRET") and not config["MONIME_WEBHOOK_SECRETS"]:
        problems.append("MONIME_WEBHOOK_SECRET holds no secret")
    config["CORS_ORIGINS"] = [origin.rstrip("/") for origin in comma_list(config.get("CORS_ORIGINS"))]
    problems += [f"CORS_ORIGINS: {o!r} is not an origin" for o in config["CORS_ORIGINS"] if not is_origin(o)]

    for name in ("RATELIMIT_CHECKOUT", "RATELIMIT_REDIRECT_LOOKUPS"):
        try:
            limits.parse_many(config[name])
        except ValueError:
            problems.append(f"{name} must be a rate like 60/minute or 10/second;500/day")
    if not str(config.get("PROXY_HOPS", "0")).isdigit():
        problems.append("PROXY_HOPS must be the number of proxies in front of the service")
    else:
        config["PROXY_HOPS"] = int(config["PROXY_HOPS"])

    for name in (
        "MONIME_WEBHOOK_TOLERANCE",
        "MONIME_CONNECT_TIMEOUT",
        "MONIME_READ_TIMEOUT",
        "MONIME_RETRY_DEADLINE",
        "MONIME_VERIFY_TIMEOUT",
    ):
        try:
            config[name] = float(config[name])
            if config[name] <= 0:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"{name} must be a positive number of seconds")
    if isinstance(config["MONIME_RETRY_DEADLINE"], float) and config["MONIME_RETRY_DEADLINE"] > MAX_RETRY_DEADLINE:
        problems.append(f"MONIME_RETRY_DEADLINE must be at most {MAX_RETRY_DEADLINE:.0f} s: a shopper is waiting")

    if problems:
        raise ConfigError("Invalid configuration: " + "; ".join(problems))


def comma_list(value) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return list(value or [])


def is_origin(url: str) -> bool:
    return is_absolute_http_url(url) and urlsplit(url).path == ""


def is_absolute_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.query and not parts.fragment
