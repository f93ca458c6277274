"""The order state rules (orders.py), exercised directly on each database."""

import itertools

import pytest

import monime
import orders
from models import CheckoutSession, Order, Outcome, Status, TransactionOpen, db, transaction
from orders import SessionReport
from schemas import CheckoutRequestSchema
from support import ORDER_TOTAL, order_payload

PAID = ("SLE", ORDER_TOTAL)


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield
        db.session.rollback()


def placed(order_id="ord_rules", session_id="scs-1") -> Order:
    order = orders.place(CheckoutRequestSchema().load(order_payload(order_id)))
    if session_id:
        orders.record_session(order, session_id, "https://pay.example/1")
    db.session.commit()
    return orders.reread(order_id)


def report(status, session_id="scs-1", amount=PAID, reference=None) -> SessionReport:
    return SessionReport(session_id, status, amount, reference)


def status_of(order_id="ord_rules") -> str:
    return orders.reread(order_id).status


def test_placing_an_order_stores_it_pending_with_its_total_and_a_key(ctx):
    order = placed(session_id=None)
    assert (order.status, order.currency, order.amount) == (Status.PENDING, "SLE", ORDER_TOTAL)
    assert len(order.idempotency_key) == 32
    assert order.checkout_session_id is None


def test_placing_the_same_order_again_returns_the_stored_one_unchanged(ctx):
    first = placed(session_id=None)
    again = orders.place(CheckoutRequestSchema().load(order_payload("ord_rules", name="Other name")))
    assert (again.idempotency_key, again.name) == (first.idempotency_key, first.name)


def test_the_fingerprint_covers_the_content_but_not_the_order_id():
    draft = CheckoutRequestSchema().load(order_payload("a"))
    assert orders.fingerprint(draft) == orders.fingerprint(draft | {"orderId": "b"})
    assert orders.fingerprint(draft) != orders.fingerprint(draft | {"callbackState": "other"})


def test_a_matching_completion_completes_and_a_repeat_changes_nothing(ctx):
    order = placed()
    assert orders.apply(order, report(Status.COMPLETED))[0] == Outcome.APPLIED
    assert orders.apply(order, report(Status.COMPLETED))[0] == Outcome.UNCHANGED
    assert status_of() == Status.COMPLETED


@pytest.mark.parametrize("amount", [None, ("SLE", ORDER_TOTAL + 1), ("USD", ORDER_TOTAL)])
def test_a_completion_without_the_orders_amount_is_held(ctx, amount):
    order = placed()
    outcome, reason = orders.apply(order, report(Status.COMPLETED, amount=amount), event_id="evt-1")
    assert outcome == Outcome.HELD
    stored = orders.reread(order.id)
    assert (stored.status, stored.review_reason, stored.review_event_id) == (Status.PENDING, reason, "evt-1")


def test_the_first_review_reason_is_kept(ctx):
    order = placed()
    orders.hold(order, "first", "evt-1")
    orders.hold(order, "second", "evt-2")
    assert (orders.reread(order.id).review_reason, orders.reread(order.id).review_event_id) == ("first", "evt-1")


@pytest.mark.parametrize("ending", [Status.CANCELLED, Status.EXPIRED])
def test_a_pending_order_ends_with_its_current_session_only(ctx, ending):
    order = placed()
    assert orders.apply(order, report(ending, session_id="scs-other"))[0] == Outcome.UNCHANGED
    assert status_of() == Status.PENDING
    assert orders.apply(order, report(ending))[0] == Outcome.APPLIED
    assert status_of() == ending


def test_a_pending_report_changes_nothing(ctx):
    order = placed()
    assert orders.apply(order, report(Status.PENDING))[0] == Outcome.UNCHANGED
    assert status_of() == Status.PENDING


EVENTS = [Status.COMPLETED, Status.EXPIRED, Status.CANCELLED, Status.COMPLETED, Status.EXPIRED]


def test_every_order_of_arrival_ends_completed_with_one_transition_to_completed(ctx):
    for number, sequence in enumerate(set(itertools.permutations(EVENTS))):
        order = placed(f"ord_perm_{number}")
        outcomes = [(status, orders.apply(order, report(status))[0]) for status in sequence]
        db.session.commit()
        assert status_of(order.id) == Status.COMPLETED, sequence
        assert outcomes.count((Status.COMPLETED, Outcome.APPLIED)) == 1, sequence


def test_a_new_attempt_returns_a_cancelled_order_to_pending_under_a_new_key(ctx):
    order = placed()
    first_key = order.idempotency_key
    orders.apply(order, report(Status.CANCELLED))
    renewed = orders.start_new_attempt(orders.reread(order.id))
    assert (renewed.status, renewed.checkout_session_id) == (Status.PENDING, None)
    assert renewed.idempotency_key != first_key


def test_a_new_attempt_leaves_a_pending_order_alone(ctx):
    order = placed()
    first_key = order.idempotency_key
    assert orders.start_new_attempt(order).idempotency_key == first_key


def test_a_session_is_recorded_once_and_never_over_a_newer_attempt(ctx):
    order = placed(session_id=None)
    assert orders.record_session(order, "scs-a", None) is True
    assert orders.record_session(order, "scs-a", None) is False
    orders.apply(order, report(Status.EXPIRED, session_id="scs-a"))
    stale = orders.reread(order.id)
    db.session.expunge(stale)  # what a request that started before the new attempt still holds
    orders.start_new_attempt(orders.reread(order.id))

    assert orders.record_session(stale, "scs-late", None) is False  # made under the old key
    assert orders.reread(order.id).checkout_session_id is None
    assert db.session.get(CheckoutSession, "scs-late").order_id == order.id  # yet its events find the order


def test_find_by_session_id_then_by_reference_only_for_an_order_without_sessions(ctx):
    placed("ord_with_session", session_id="scs-own")
    placed("ord_without", session_id=None)

    def found(**kwargs):
        order, by_reference = orders.find(report(Status.COMPLETED, **kwargs))
        return order and order.id, by_reference

    assert found(session_id="scs-own") == ("ord_with_session", False)
    assert found(session_id="scs-x", reference="ord_without") == ("ord_without", True)
    assert found(session_id="scs-x", reference="ord_with_session") == (None, False)
    assert found(session_id="scs-x", reference="ord_missing") == (None, False)


@pytest.mark.parametrize("late", [Status.CANCELLED, Status.EXPIRED])
def test_a_late_event_of_an_earlier_session_does_not_take_over_a_new_attempt(ctx, late):
    """Between a new attempt and the recording of its session, the order has no current session."""
    order = placed()
    orders.apply(order, report(Status.CANCELLED))
    orders.start_new_attempt(orders.reread(order.id))  # Monime is being asked for a new session

    found, by_reference = orders.find(report(late))
    outcome, _ = orders.apply(found, report(late), by_reference=by_reference)

    assert outcome == Outcome.UNCHANGED
    assert (orders.reread(order.id).status, orders.reread(order.id).checkout_session_id) == (Status.PENDING, None)
    assert orders.record_session(orders.reread(order.id), "scs-2", None) is True


def test_asking_monime_inside_a_transaction_fails_loudly_in_tests(app, simulator):
    """The rule every flow keeps (models.transaction): no database transaction is open while
    Monime is asked. Under TESTING the client checks it before every call."""
    with app.app_context():
        with pytest.raises(TransactionOpen), transaction():
            orders.lookup("ord_inside")  # a read opens the transaction
            monime.client().get_session("scs-anything")
        with transaction():
            orders.lookup("ord_outside")
        with pytest.raises(monime.MonimeNotFound):  # outside a transaction Monime is asked
            monime.client().get_session("scs-anything")


def test_a_transaction_commits_its_block_and_rolls_back_one_that_raises(ctx):
    with pytest.raises(LookupError), transaction():
        orders.place(CheckoutRequestSchema().load(order_payload("ord_undone")))
        raise LookupError
    with transaction():
        orders.place(CheckoutRequestSchema().load(order_payload("ord_kept")))
    assert not db.session().in_transaction()
    assert orders.lookup("ord_undone") is None and orders.lookup("ord_kept").status == Status.PENDING
