"""What a developer can change while the simulator runs: where webhooks go, how they are
delivered, and how long a session lives. Set at start-up from SIMULATOR_* variables,
changed with POST /_sim/config (JSON, or the dashboard's forms), restored by a reset."""

import logging
from dataclasses import asdict, dataclass, fields, replace

# Monime's HS256 webhook secrets are 32 to 256 characters (OpenAPI, Webhook
# verificationMethod.secret); the default has that shape, so a verifier as strict as Monime's
# own SDKs accepts what the simulator signs.
DEFAULT_WEBHOOK_SECRET = "whsec_simulator_0123456789abcdef0123456789abcdef"
MIN_WEBHOOK_SECRET = 32
log = logging.getLogger(__name__)


@dataclass
class Settings:
    webhook_url: str = ""  # where events are POSTed; none: nothing is sent
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET  # signs them
    webhook_timeout: float = 10.0  # seconds one delivery attempt may take
    retry_attempts: int = 6  # attempts per event until one is answered 2xx, the first included
    retry_backoff: float = 2.0  # seconds before the first retry; doubled before each next one
    twice: bool = False  # deliver every event a second time, as at-least-once delivery may
    out_of_order: bool = False  # hold an event back and deliver it after the next one
    hold: float = 10.0  # ... or after this many seconds, when no next one comes
    delivery_delay: float = 0.0  # seconds before an event's first attempt
    session_lifetime: float = 1800.0  # seconds from a session's creation to its expireTime

    @classmethod
    def from_config(cls, config) -> "Settings":
        """From the app's config: WEBHOOK_URL, SESSION_LIFETIME and so on."""
        return cls().updated({f.name: config[f.name.upper()] for f in fields(cls) if f.name.upper() in config})

    def updated(self, options: dict) -> "Settings":
        """A copy with `options` (snake_case or camelCase names, values as JSON or form text) applied.
        ValueError names an unknown setting or a value of the wrong kind."""
        kinds = {f.name: f.type for f in fields(self)}
        changes = {}
        for name, value in options.items():
            key = snake(name)
            if key not in kinds:
                raise ValueError(f"unknown setting {name!r}")
            changes[key] = convert(kinds[key], value, name)
        return replace(self, **changes)

    def as_json(self) -> dict:
        return {camel(name): value for name, value in asdict(self).items()}

    def warn(self) -> None:
        """Log (never raise) a webhook secret shorter than Monime's MIN_WEBHOOK_SECRET
        characters, which Monime would never issue and strict verifiers refuse. The secret
        itself is never logged."""
        if len(self.webhook_secret) < MIN_WEBHOOK_SECRET:
            log.warning(
                "the simulator's webhook secret is %d characters; Monime's are %d to 256, and a verifier "
                "as strict as Monime's SDKs will refuse every event signed with it",
                len(self.webhook_secret),
                MIN_WEBHOOK_SECRET,
            )


KIND_NAMES = {int: "a whole number", float: "a number", str: "text"}


def convert(kind: type, value, name: str):
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "on", "yes")
        converted = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {KIND_NAMES[kind]}") from None
    if kind in (int, float) and converted < 0:
        raise ValueError(f"{name} must not be negative")
    return converted


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
