"""What a developer can change while the simulator runs: where webhooks go, how they are
delivered, and how long a session lives. Set at start-up from SIMULATOR_* variables,
changed with POST /_sim/config (JSON, or the dashboard's forms), restored by a reset."""

from dataclasses import asdict, dataclass, fields, replace


@dataclass
class Settings:
    webhook_url: str = ""  # where events are POSTed; none: nothing is sent
    webhook_secret: str = "whsec_simulator"  # signs them
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
