"""flask orders review: what is held for a person."""

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
    assert (result.exit_code, result.output) == (0, "")
