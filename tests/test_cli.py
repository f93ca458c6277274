"""flask orders review: what is held for a person; what every command prints when there is nothing."""

import pytest

from schemas import money
from support import checkout, deliver, items, signed_event


def test_orders_review_lists_held_orders_and_unmatched_events(client, runner):
    body = checkout(client, orderId="ord_short")
    held = signed_event("checkout_session.completed", body["sessionId"], line_items=items(1))
    stray = signed_event("checkout_session.completed", "scs-stray", line_items=items(1))
    deliver(client, held)
    deliver(client, stray)

    result = runner.invoke(args=["orders", "review"])

    assert result.exit_code == 0
    assert "order ord_short [pending] amount mismatch" in result.output
    assert f"event {held.get('id')} checkout_session.completed [held] order ord_short" in result.output
    assert f"event {stray.get('id')} checkout_session.completed [unmatched]" in result.output


def test_orders_review_is_empty_when_nothing_is_held(client, runner):
    checkout(client)
    result = runner.invoke(args=["orders", "review"])
    assert (result.exit_code, result.output) == (0, "no orders held, no events held or unmatched\n")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["events", "list"], "no events stored"),
        (["events", "list", "--outcome", "failed", "--outcome", "held"], "no failed or held events stored"),
        (["events", "replay", "--failed"], "no failed events to replay"),
        (["notifications", "list"], "no notifications"),
        (["notifications", "redeliver", "--dead"], "0 notifications to be delivered again"),
        (["orders", "reconcile"], "reconciled 0 orders: nothing to do"),
    ],
)
def test_a_command_with_nothing_to_show_says_so(runner, args, says):
    result = runner.invoke(args=args)
    assert (result.exit_code, result.output) == (0, says + "\n")


def test_money_is_shown_in_major_units_with_its_currency():
    assert [money("SLE", 2500), money("USD", 5), money("SLE", 100000), money("SLE", -150)] == [
        "SLE 25.00",
        "USD 0.05",
        "SLE 1000.00",
        "SLE -1.50",
    ]
