"""How the operator page shows money and moments."""

from datetime import UTC, datetime

# Digits after the decimal point of each currency's major unit (ISO 4217); SLE (the new leone)
# and USD have 2, as has any currency not listed.
DECIMALS = {"SLE": 2, "USD": 2}


def money(minor: int | None, currency: str) -> str:
    """An amount in minor units as major units with the currency: money(2500, "SLE") is
    "SLE 25.00", money(123456, "USD") "USD 1,234.56"; None is "—"."""
    if minor is None:
        return "—"
    places = DECIMALS.get(currency, 2)
    sign, minor = ("-" if minor < 0 else ""), abs(minor)
    major, fraction = divmod(minor, 10**places)
    return f"{currency} {sign}{major:,}" + (f".{fraction:0{places}d}" if places else "")


def aware(moment: datetime | None) -> datetime | None:
    """A stored moment as an aware UTC datetime (SQLite hands them back without a zone; they are UTC)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def when(moment: datetime | None) -> str:
    """A moment as "2026-11-30 05:14:43 UTC"; None is "—"."""
    return "—" if moment is None else aware(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
