"""Operations as `flask` commands: `flask --app app orders ...`, `... events ...` and `... notifications ...`."""

import contextlib
import getpass
import threading
from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup
from marshmallow import ValidationError

import events
import notifications
import orders
import sync
from config import duration_seconds
from models import (
    NotificationStatus,
    Outcome,
    WebhookEvent,
    transaction,
)
from schemas import ResolveRequestSchema, money

orders_cli = AppGroup("orders", help="Inspect and reconcile orders.")
events_cli = AppGroup("events", help="Inspect and replay stored webhook events.")
notifications_cli = AppGroup("notifications", help="Deliver, inspect and redeliver order notifications.")


class Duration(click.ParamType):
    """90s, 10m, 2h, 1d (or plain seconds)."""

    name = "duration"

    def convert(self, value, param, ctx):
        """A timedelta from a duration string (config.duration_seconds); a usage error otherwise."""
        if isinstance(value, timedelta):
            return value
        try:
            return timedelta(seconds=duration_seconds(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@orders_cli.command("reconcile")
@click.option("--older-than", type=Duration(), default="10m", show_default=True, help="Only sessions this old.")
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True, help="Monime lookups per run.")
@click.option("--dry-run", is_flag=True, help="Ask Monime and report, but change nothing.")
def reconcile(older_than: timedelta, limit: int, dry_run: bool) -> None:
    """Bring pending orders up to Monime's truth, for webhooks that never arrived."""
    tally = sync.reconcile(older_than, limit, dry_run)
    counts = ", ".join(f"{outcome} {count}" for outcome, count in sorted(tally.items())) or "nothing to do"
    click.echo(f"{'would reconcile' if dry_run else 'reconciled'} {number(sum(tally.values()), 'order')}: {counts}")
    if tally[Outcome.FAILED]:
        raise SystemExit(1)  # Monime could not be asked about every order: a scheduler should see it


@orders_cli.command("show")
@click.argument("order_id")
def show(order_id: str) -> None:
    """An order, its sessions and every event about it."""
    order = orders.lookup(order_id)
    if order is None:
        raise click.ClickException(f"no order {order_id!r}")
    click.echo(f"order {order.id} [{order.status}] {money(order.currency, order.amount)} {order.name!r}")
    click.echo(f"  created {order.created_at:%Y-%m-%d %H:%M:%S}, updated {order.updated_at:%Y-%m-%d %H:%M:%S}")
    if order.monime_order_number:
        click.echo(f"  Monime order number {order.monime_order_number}")
    if order.review_reason:
        click.echo(f"  held for review: {order.review_reason} (event {order.review_event_id or '-'})")
    for done in orders.resolutions(order.id):
        click.echo(
            f"  resolved ({done.action}) by {done.by} via {done.via} {done.resolved_at:%Y-%m-%d %H:%M:%S}: "
            f"{done.note!r}; was [{done.previous_status}] held: {done.previous_review_reason} "
            f"(event {done.previous_review_event_id or '-'})"
        )
    sessions = orders.sessions(order.id)
    for session in sessions:
        current = " (current)" if session.id == order.checkout_session_id else ""
        click.echo(f"  session {session.id}{current} created {session.created_at:%Y-%m-%d %H:%M:%S}")
    for event in events.about(order.id, [session.id for session in sessions]):
        click.echo(f"  {describe(event)}")
        for variant in events.variants(event.id):
            click.echo(
                f"    delivered again with a different body (sha256 {variant.body_sha256[:12]}…) "
                f"{variant.received_at:%Y-%m-%d %H:%M:%S}"
            )


@orders_cli.command("resolve")
@click.argument("order_id")
@click.option("--complete", is_flag=True, help="A person confirmed the payment: the order is completed.")
@click.option("--dismiss", is_flag=True, help="Nothing was wrong: clear the hold, keep the status.")
@click.option("--note", required=True, help="Why, in at most 500 characters; kept in the audit.")
def resolve(order_id: str, complete: bool, dismiss: bool, note: str) -> None:
    """Resolve an order held for review, recorded under your shell user's name."""
    if complete == dismiss:
        raise click.UsageError("give exactly one of --complete or --dismiss")
    try:
        wanted = ResolveRequestSchema().load({"action": "complete" if complete else "dismiss", "note": note})
    except ValidationError as exc:
        raise click.BadParameter("; ".join(exc.messages["note"]), param_hint="--note") from None
    if orders.lookup(order_id) is None:
        raise click.ClickException(f"no order {order_id!r}")
    try:
        with transaction():
            done = orders.resolve(order_id, wanted["action"], wanted["note"], by=getpass.getuser(), via="cli")
    except orders.NotHeld:
        raise click.ClickException(f"order {order_id!r} is not held for review") from None
    order = orders.reread(order_id)
    click.echo(f"order {order_id} resolved ({done.action}) by {done.by}: now [{order.status}], no longer held")


@orders_cli.command("review")
def review() -> None:
    """Orders and events held for a person: amount mismatches, double payments, unknown sessions."""
    held_orders, held_events = orders.held(), events.stored([Outcome.HELD, Outcome.UNMATCHED])
    for order in held_orders:
        click.echo(f"order {order.id} [{order.status}] {order.review_reason} (event {order.review_event_id or '-'})")
    for event in held_events:
        click.echo(describe(event))
    if not held_orders and not held_events:
        click.echo("no orders held, no events held or unmatched")


@events_cli.command("list")
@click.option("--outcome", "outcomes", type=click.Choice([o.value for o in Outcome]), multiple=True, help="Repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_events(outcomes: tuple[str, ...], limit: int) -> None:
    """Stored events, oldest first."""
    found = events.stored(outcomes, limit)
    for event in found:
        click.echo(describe(event))
    if not found:
        click.echo(f"no {' or '.join(outcomes) + ' ' if outcomes else ''}events stored")


@events_cli.command("replay")
@click.argument("event_id", required=False)
@click.option("--failed", is_flag=True, help="Replay every event whose processing failed.")
def replay(event_id: str | None, failed: bool) -> None:
    """Process stored events again through the webhook's own path; a processed one changes nothing."""
    if bool(event_id) == failed:
        raise click.UsageError("give one event id, or --failed")
    ids = [event_id] if event_id else [event.id for event in events.stored([Outcome.FAILED])]
    if not ids:
        click.echo("no failed events to replay")
    still_failing = 0
    for one in ids:
        try:
            receipt = events.replay(one)
        except events.VerificationUnavailable as exc:
            receipt, still_failing = None, still_failing + 1
            click.echo(f"event {one}: failed again: {exc}")
            continue
        if receipt is None:
            raise click.ClickException(f"no stored event {one!r}")
        click.echo(f"event {one}: {'already processed, nothing changed' if receipt.duplicate else receipt.outcome}")
    if still_failing:
        raise SystemExit(1)


def number(count: int, noun: str) -> str:
    """A count that agrees with its noun: (1, "order") -> "1 order", (2, "order") -> "2 orders"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def describe(event: WebhookEvent) -> str:
    """One line about a stored event: id, name, outcome, order, when received, detail."""
    return (
        f"event {event.id} {event.name} [{event.outcome}] order {event.order_id or '-'} "
        f"received {event.received_at:%Y-%m-%d %H:%M:%S}: {event.detail or ''}"
    ).rstrip(": ")


@notifications_cli.command("run")
def run_relay() -> None:
    """Deliver order notifications in the foreground until Ctrl-C (instead of, or beside, the
    workers' own relay threads: claims never overlap)."""
    if not current_app.config["NOTIFY_URL"]:
        raise click.ClickException("NOTIFY_URL is not set: there is nowhere to deliver to")
    click.echo(f"delivering order notifications to {current_app.config['NOTIFY_URL']}; Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        notifications.relay(current_app._get_current_object(), threading.Event())


@notifications_cli.command("list")
@click.option("--status", "statuses", type=click.Choice([s.value for s in NotificationStatus]), multiple=True)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_notifications(statuses: tuple[str, ...], limit: int) -> None:
    """Notifications, oldest first (repeat --status for several)."""
    rows = notifications.listed(statuses, limit)
    if not rows:
        click.echo(f"no {' or '.join(statuses) + ' ' if statuses else ''}notifications")
    for row in rows:
        when = (
            f"delivered {row.delivered_at:%Y-%m-%d %H:%M:%S}"
            if row.delivered_at
            else (f"next attempt {row.next_attempt_at:%Y-%m-%d %H:%M:%S}")
        )
        click.echo(
            f"{row.id} {row.type} order {row.order_id} [{row.status}] attempts {row.attempts}, "
            f"created {row.created_at:%Y-%m-%d %H:%M:%S}, {when}"
            + (f": {row.last_error}" if row.last_error and row.status != NotificationStatus.DELIVERED else "")
        )


@notifications_cli.command("redeliver")
@click.argument("notification_id", required=False)
@click.option("--dead", is_flag=True, help="Every dead notification.")
def redeliver(notification_id: str | None, dead: bool) -> None:
    """Deliver a notification again (any status), or every dead one, with a fresh NOTIFY_RETRY_FOR."""
    if bool(notification_id) == dead:
        raise click.UsageError("give one notification id, or --dead")
    with transaction():
        count = notifications.redeliver(notification_id, dead)
    if notification_id and not count:
        raise click.ClickException(f"no notification {notification_id!r}")
    click.echo(f"{number(count, 'notification')} to be delivered again")


def init_app(app) -> None:
    """Add the orders, events and notifications command groups to `flask`."""
    app.cli.add_command(orders_cli)
    app.cli.add_command(events_cli)
    app.cli.add_command(notifications_cli)
