"""Settings from the environment, checked once at start-up.

Every variable the service reads is listed in `from_environment`; `check`
refuses to start with one clear error naming everything that is wrong.
"""

import base64
import logging
import math
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import limits

log = logging.getLogger(__name__)

# successUrl is the longer of the two redirect URLs Monime receives; Monime
# caps both at 255 characters and an orderId may be 100 characters long.
SUCCESS_URL_SUFFIX = "/api/checkout/success?orderId="
LONGEST_ORDER_ID = 100
MONIME_URL_LIMIT = 255

MAX_BODY_BYTES = 1024 * 1024
MAX_RETRY_DEADLINE = 25.0  # the contract: retries end "well under 30 s"

# Monime's OpenAPI (caph.2025-08-23): a webhook's verificationMethod.secret has minLength 32.
MONIME_MIN_WEBHOOK_SECRET = 32

# API_KEYS: comma-separated name:key pairs. A name is what the audit records ("who"); a key is
# at least MIN_API_KEY characters of printable ASCII without spaces or commas (e.g. 32 random
# characters from `python -c 'import secrets; print(secrets.token_urlsafe(32))'`).
API_KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
API_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII but space and ','
MIN_API_KEY = 24
# ADMIN_TOKEN: the operator page's sign-in token (admin/), at least this long; unset, /admin is 404.
MIN_ADMIN_TOKEN = 24

# scheme://host[:port][/path], nothing else: the shape of every URL setting. The host is DNS
# labels (an IDN in its xn-- form), an IPv4 address or a bracketed IPv6 one; the path is
# RFC 3986 path characters without ';' (parameters).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HTTP_URL = re.compile(
    rf"(?i:https?)://(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?"
    r"(?:/(?:[A-Za-z0-9._~!$&'()*+,=:@/-]|%[0-9A-Fa-f]{2})*)?"
)


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
        "MONIME_MAX_IN_FLIGHT": get("MONIME_MAX_IN_FLIGHT", ""),
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(get("DATABASE_URL", "")),
        "DATABASE_POOL_SIZE": get("DATABASE_POOL_SIZE", "10"),
        "DATABASE_MAX_OVERFLOW": get("DATABASE_MAX_OVERFLOW", "6"),
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
        "API_KEYS": get("API_KEYS", ""),
        "ORDER_FEED_DELAY": get("ORDER_FEED_DELAY", "5"),
        "LOG_LEVEL": get("LOG_LEVEL", "INFO"),
        "NOTIFY_URL": get("NOTIFY_URL", ""),
        "NOTIFY_SECRET": get("NOTIFY_SECRET", ""),
        "NOTIFY_RETRY_FOR": get("NOTIFY_RETRY_FOR", "3d"),
        "NOTIFY_FIRST_RETRY": get("NOTIFY_FIRST_RETRY", "5"),
        "NOTIFY_TIMEOUT": get("NOTIFY_TIMEOUT", "5"),
        "NOTIFY_RELAY": get("NOTIFY_RELAY", "1"),
        "ADMIN_TOKEN": get("ADMIN_TOKEN", ""),
        "SECRET_KEY": get("SECRET_KEY", ""),
    }


def normalise_database_url(url: str) -> str:
    """Accept the `postgres://` URLs hosting platforms hand out; we speak psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def check(config: dict, *, relaxed: bool) -> None:
    """Validate and convert `config` in place; raises ConfigError naming every problem.

    `relaxed` (tests, debug) lets the Monime credentials be empty, as the simulator
    does not need real ones, and lets DATABASE_URL be empty, for a SQLite file under
    instance/. Anywhere else that file would be a silent, throwaway database: lost on
    redeploy, and one per replica, so a webhook reaching the "wrong" one is unmatched."""
    problems = []
    required = ["MONIME_WEBHOOK_SECRET", "PUBLIC_BASE_URL", "APP_URL"]
    if not relaxed:
        required += ["MONIME_ACCESS_TOKEN", "MONIME_SPACE_ID"]
    problems += [f"{name} is required" for name in required if not config.get(name)]
    if not relaxed and not config.get("SQLALCHEMY_DATABASE_URI"):
        problems.append(
            "DATABASE_URL is required outside development and tests: postgresql://…, "
            "or sqlite:////absolute/path on a persistent volume for exactly one instance"
        )

    for name in ("PUBLIC_BASE_URL", "APP_URL", "MONIME_API_BASE_URL"):
        value = str(config.get(name) or "")
        if value and (problem := http_url_problem(value)):
            problems.append(f"{name} must be an absolute http(s) URL, scheme://host[:port][/path]: {problem}")
        config[name] = value.rstrip("/")

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

    config["API_KEYS"], key_problems = api_keys(config.get("API_KEYS"))
    problems += key_problems

    for name in ("RATELIMIT_CHECKOUT", "RATELIMIT_REDIRECT_LOOKUPS"):
        try:
            limits.parse_many(config[name])
        except ValueError:
            problems.append(f"{name} must be a rate like 60/minute or 10/second;500/day")
    # Connections per worker: pool + overflow (README: the connection arithmetic).
    for name, least in (("DATABASE_POOL_SIZE", 1), ("DATABASE_MAX_OVERFLOW", 0)):
        value = str(config.get(name, ""))
        if value.isascii() and value.isdigit() and int(value) >= least:
            config[name] = int(value)
        else:
            problems.append(f"{name} must be a whole number of connections, at least {least}")
    max_in_flight = str(config.get("MONIME_MAX_IN_FLIGHT") or "")
    if not max_in_flight:  # derived from the worker's threads (monime.fit_to_worker), or no cap
        config["MONIME_MAX_IN_FLIGHT"] = None
    elif max_in_flight.isascii() and max_in_flight.isdigit() and int(max_in_flight) >= 1:
        config["MONIME_MAX_IN_FLIGHT"] = int(max_in_flight)
    else:
        problems.append(
            "MONIME_MAX_IN_FLIGHT must be a whole number of calls to Monime, at least 1 "
            "(unset: derived from the worker's threads)"
        )
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
        "ORDER_FEED_DELAY",
    ):
        try:
            config[name] = float(config[name])
            if not (math.isfinite(config[name]) and config[name] > 0):  # nan and inf would switch a limit off
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"{name} must be a positive number of seconds")
    if isinstance(config["MONIME_RETRY_DEADLINE"], float) and config["MONIME_RETRY_DEADLINE"] > MAX_RETRY_DEADLINE:
        problems.append(f"MONIME_RETRY_DEADLINE must be at most {MAX_RETRY_DEADLINE:.0f} s: a shopper is waiting")

    problems += notify_problems(config)
    token = config.get("ADMIN_TOKEN") or ""
    if token and (len(token) < MIN_ADMIN_TOKEN or not re.fullmatch(r"[!-~]+", token)):
        problems.append(f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} printable characters, no spaces")
    if problems:
        raise ConfigError("Invalid configuration: " + "; ".join(problems))


def notify_problems(config: dict) -> list[str]:
    """Validate and convert the NOTIFY_* settings in place (order notifications, notifications.py);
    returns the problems found. NOTIFY_SECRETS becomes the list of secrets, NOTIFY_RELAY a bool,
    the durations float seconds."""
    problems = []
    url = config["NOTIFY_URL"] = str(config.get("NOTIFY_URL") or "")
    if url and (problem := http_url_problem(url)):
        problems.append(f"NOTIFY_URL must be an absolute http(s) URL, scheme://host[:port][/path]: {problem}")
    secrets = config["NOTIFY_SECRETS"] = comma_list(config.get("NOTIFY_SECRET"))
    if url and not secrets:
        problems.append("NOTIFY_SECRET is required when NOTIFY_URL is set: whsec_ and a base64 key")
    problems += [
        f"NOTIFY_SECRET: secret {position} of {len(secrets)} is not whsec_ followed by a base64 key"
        for position, secret in enumerate(secrets, 1)
        if not is_standard_webhooks_secret(secret)
    ]
    for name in ("NOTIFY_RETRY_FOR", "NOTIFY_FIRST_RETRY", "NOTIFY_TIMEOUT"):
        try:
            config[name] = duration_seconds(config[name])
            if config[name] <= 0:
                raise ValueError
        except ValueError:
            problems.append(f"{name} must be a positive duration: seconds, or like 90s, 10m, 12h, 3d")
    relay = str(config.get("NOTIFY_RELAY", "1")).strip().lower()
    if relay not in ("0", "1", "true", "false"):
        problems.append("NOTIFY_RELAY must be 1 (the workers deliver notifications) or 0")
    config["NOTIFY_RELAY"] = relay in ("1", "true")
    return problems


def is_standard_webhooks_secret(secret: str) -> bool:
    """Whether `secret` is whsec_ and non-empty base64, as Standard Webhooks keys are."""
    key = secret.removeprefix("whsec_")
    if key == secret or not key:
        return False
    try:
        return bool(base64.b64decode(key, validate=True))
    except ValueError:
        return False


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}


def duration_seconds(value) -> float:
    """Seconds in "90", "2.5", "90s", "10m", "12h" or "3d" (a number passes through);
    raises ValueError for anything else."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a duration like 90s, 10m, 2h or 1d")
    return float(match[1]) * DURATION_UNITS[match[2]]


def api_keys(value) -> tuple[dict[str, str], list[str]]:
    """API_KEYS ("name:key,name:key") as {name: key}, and the problems with it. A pair is
    named by its position, never shown, as its key is a secret. Already a dict: kept."""
    if isinstance(value, dict):
        return value, []
    keys, problems = {}, []
    for position, pair in enumerate(comma_list(value), 1):
        name, colon, key = pair.partition(":")
        where = f"API_KEYS: pair {position}"
        if not colon:
            problems.append(f"{where} is not name:key")
            continue
        if not API_KEY_NAME.fullmatch(name):
            problems.append(f"{where} needs a name of 1-64 letters, digits, '_', '.' or '-' before its ':'")
        elif name in keys:
            problems.append(f"{where} repeats the name {name!r}")
        if len(key) < MIN_API_KEY or not API_KEY.fullmatch(key):
            problems.append(f"{where} needs a key of at least {MIN_API_KEY} printable characters, no spaces")
        elif key in keys.values():
            problems.append(f"{where} repeats the key of another pair")
        keys.setdefault(name, key)
    return keys, problems


def comma_list(value) -> list[str]:
    """A comma-separated setting as a list of its non-empty, stripped items (a list passes through)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return list(value or [])


def is_origin(url: str) -> bool:
    """Whether `url` is an http(s) origin: scheme://host[:port], no path (http_url_problem's rules)."""
    return http_url_problem(url) is None and urlsplit(url).path == ""


def http_url_problem(url: str) -> str | None:
    """What keeps `url` from being scheme://host[:port][/path] with scheme http or https, as a
    phrase ("it has user-info (user@)"), or None when it is one. Refused, as each could send
    a shopper or a request elsewhere than meant: whitespace and control characters anywhere,
    backslashes, user-info, a query, a fragment, ;parameters, an empty host, a bad port."""
    if any(char.isspace() or not char.isprintable() for char in url):
        return "it contains whitespace or control characters"
    if not re.match(r"(?i:https?)://", url):
        return "it does not start with http:// or https://"
    if "\\" in url:
        return "it contains a backslash"
    if "?" in url or "#" in url:
        return "it has a query or a fragment"
    if ";" in url:
        return "it has ;parameters"
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in authority:
        return "it has user-info (user@), which hides the real host"
    host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
    if not host:
        return "it has no host"
    try:
        port = urlsplit(url).port
    except ValueError:
        port = 0
    if port == 0:
        return "its port is not a number from 1 to 65535"
    if not _HTTP_URL.fullmatch(url):
        return "its host or path has characters a URL's may not (an IDN host goes in its xn-- form)"
    return None


def warn(config: dict) -> None:
    """Log (never raise) what is allowed but unsafe in a `check`ed config: webhook secrets
    shorter than Monime's MONIME_MIN_WEBHOOK_SECRET characters. Names a secret by its
    position in MONIME_WEBHOOK_SECRET, never by its value."""
    secrets = config["MONIME_WEBHOOK_SECRETS"]
    for position, secret in enumerate(secrets, 1):
        if len(secret) < MONIME_MIN_WEBHOOK_SECRET:
            log.warning(
                "MONIME_WEBHOOK_SECRET: secret %d of %d is shorter than the %d characters Monime requires; "
                "a short secret is easier to guess: use the one Monime generates",
                position,
                len(secrets),
                MONIME_MIN_WEBHOOK_SECRET,
            )
