"""Operations as `flask` commands."""

import click
from flask.cli import AppGroup
from sqlalchemy import select

from models import Order, Outcome, WebhookEvent, db

orders_cli = AppGroup("orders", help="Inspect orders.")


@orders_cli.command("review")
def review() -> None:
    """Orders and events held for a person: amount mismatches, double payments, unknown sessions."""
    held_orders = db.session.scalars(select(Order).where(Order.review_reason.is_not(None)).order_by(Order.updated_at))
    for order in held_orders:
        click.echo(f"order {order.id} [{order.status}] {order.review_reason} (event {order.review_event_id or '-'})")
    held_events = db.session.scalars(
        select(WebhookEvent)
        .where(WebhookEvent.outcome.in_([Outcome.HELD, Outcome.UNMATCHED]))
        .order_by(WebhookEvent.received_at)
    )
    for event in held_events:
        click.echo(f"event {event.id} {event.name} [{event.outcome}] order {event.order_id or '-'}: {event.detail}")


def init_app(app) -> None:
    app.cli.add_command(orders_cli)
