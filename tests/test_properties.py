"""Property-based tests (hypothesis): the signature verifier and the order state rules."""

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orders
from models import Status, db
from orders import SessionReport
from schemas import CheckoutRequestSchema
from signatures import SignatureError, sign, verify
from support import ORDER_TOTAL, order_payload

NOW = 1_800_000_000
secrets_ = st.text(min_size=1, max_size=64)
bodies = st.binary(max_size=2048)
times = st.integers(min_value=NOW - 300, max_value=NOW + 300)


@given(body=bodies, secret=secrets_, timestamp=times)
def test_whatever_is_signed_verifies(body, secret, timestamp):
    assert verify(body, sign(body, secret, timestamp), [secret], now=NOW, load=bytes) == body


@given(body=bodies, secret=secrets_, other=secrets_, timestamp=times)
def test_only_the_signing_secret_verifies(body, secret, other, timestamp):
    if other == secret:
        return
    with pytest.raises(SignatureError):
        verify(body, sign(body, secret, timestamp), [other], now=NOW)


@given(body=bodies, changed=bodies, secret=secrets_)
def test_any_change_to_the_body_is_caught(body, changed, secret):
    if changed == body:
        return
    with pytest.raises(SignatureError):
        verify(changed, sign(body, secret, NOW), [secret], now=NOW)


@given(body=bodies, secret=secrets_, skew=st.integers(min_value=301, max_value=10**9))
def test_a_signature_outside_the_window_is_refused(body, secret, skew):
    for timestamp in (NOW - skew, NOW + skew):
        with pytest.raises(SignatureError, match="tolerance"):
            verify(body, sign(body, secret, timestamp), [secret], now=NOW)


@given(header=st.text(max_size=300), body=bodies)
def test_no_header_makes_the_verifier_fail_other_than_with_a_signature_error(header, body):
    with pytest.raises(SignatureError):
        verify(body, header, ["whsec_x"], now=NOW)


# --- the state rules ---------------------------------------------------------------------------

MISMATCH = ("SLE", ORDER_TOTAL + 1)
EVENTS = [
    (Status.COMPLETED, ("SLE", ORDER_TOTAL)),
    (Status.COMPLETED, MISMATCH),  # held for review, never completed
    (Status.CANCELLED, None),
    (Status.EXPIRED, None),
    (Status.PENDING, None),
]
numbers = itertools.count()


def final_state(events) -> tuple:
    """A fresh order, the events applied in the given order: what the order ends as."""
    order_id = f"ord_prop_{next(numbers)}"
    order = orders.place(CheckoutRequestSchema().load(order_payload(order_id)))
    orders.record_session(order, f"scs-{order_id}", None)
    for status, amount in events:
        orders.apply(orders.reread(order_id), SessionReport(f"scs-{order_id}", status, amount))
    db.session.commit()
    final = orders.reread(order_id)
    return final.status, final.checkout_session_id == f"scs-{order_id}", final.review_reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(st.sampled_from(EVENTS), max_size=8))
def test_any_sequence_of_events_ends_as_its_sorted_deduplicated_sequence(app, sequence):
    """Order of arrival and repetition make no difference to where an order ends."""
    canonical = sorted(set(sequence), key=EVENTS.index)
    with app.app_context():
        assert final_state(sequence) == final_state(canonical)
