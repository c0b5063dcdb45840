import pytest

from payment_svc.domain import Account, Payment, PaymentStatus, capture, deposit, hold, release


def test_hold_debits_once_and_emits_completed() -> None:
    account = Account("alice", 1000)
    payment, events = hold("o-1", "alice", 400, None, account)
    assert payment is not None and payment.status is PaymentStatus.HELD
    assert account.balance_cents == 600
    assert [(e.type, e.data) for e in events] == [("payments.completed", {"customer_id": "alice", "amount_cents": 400})]
    again, events = hold("o-1", "alice", 400, payment, account)
    assert (again, events, account.balance_cents) == (None, [], 600)


def test_hold_fails_for_insufficient_funds_without_touching_balance() -> None:
    account = Account("bob", 399)
    payment, events = hold("o-1", "bob", 400, None, account)
    assert payment is not None and (payment.status, payment.reason) == (PaymentStatus.FAILED, "insufficient_funds")
    assert account.balance_cents == 399
    assert [(e.type, e.data) for e in events] == [("payments.failed", {"reason": "insufficient_funds"})]


def test_hold_fails_for_unknown_customer() -> None:
    payment, events = hold("o-1", "nobody", 1, None, None)
    assert payment is not None and payment.reason == "unknown_customer"
    assert [e.data for e in events] == [{"reason": "unknown_customer"}]


def test_exact_balance_is_enough() -> None:
    account = Account("alice", 400)
    payment, _ = hold("o-1", "alice", 400, None, account)
    assert payment is not None and payment.status is PaymentStatus.HELD and account.balance_cents == 0


def test_release_gives_a_held_charge_back_once() -> None:
    account = Account("alice", 1000)
    payment, _ = hold("o-1", "alice", 400, None, account)
    released, events = release("o-1", "out_of_stock", payment, account)
    assert released is not None and released.status is PaymentStatus.RELEASED
    assert account.balance_cents == 1000
    assert [(e.type, e.data) for e in events] == [
        ("payments.refunded", {"amount_cents": 400, "reason": "out_of_stock"})
    ]
    assert release("o-1", "out_of_stock", released, account) == (None, [])
    assert account.balance_cents == 1000
    assert capture(released) is None  # a confirm after the release captures nothing


def test_capture_makes_a_held_charge_final_once() -> None:
    account = Account("alice", 1000)
    payment, _ = hold("o-1", "alice", 400, None, account)
    captured = capture(payment)
    assert captured is not None and captured.status is PaymentStatus.CAPTURED
    assert capture(captured) is None
    assert account.balance_cents == 600


def test_a_cancel_after_the_capture_releases_nothing_and_is_recorded_once() -> None:
    account = Account("alice", 1000)
    payment, _ = hold("o-1", "alice", 400, None, account)
    captured = capture(payment)
    refused, events = release("o-1", "forged", captured, account)
    assert refused is not None and events == []
    assert (refused.status, refused.refused_cancel, account.balance_cents) == (PaymentStatus.CAPTURED, "forged", 600)
    assert release("o-1", "again", refused, account) == (None, [])
    assert refused.refused_cancel == "forged"


def test_capture_of_nothing_or_of_a_failure_changes_nothing() -> None:
    assert capture(None) is None
    assert capture(Payment("o-1", "bob", 400, PaymentStatus.FAILED, "insufficient_funds")) is None
    assert capture(Payment("o-1", "", 0, PaymentStatus.CANCELLED, "requested")) is None


def test_empty_compensation_is_recorded_and_blocks_a_late_hold() -> None:
    account = Account("alice", 1000)
    barrier, events = release("o-1", "requested", None, None)
    assert barrier is not None and barrier.status is PaymentStatus.CANCELLED and events == []
    late, events = hold("o-1", "alice", 400, barrier, account)
    assert (late, events, account.balance_cents) == (None, [], 1000)


def test_compensation_of_a_failed_payment_changes_nothing() -> None:
    failed = Payment("o-1", "bob", 400, PaymentStatus.FAILED, "insufficient_funds")
    assert release("o-1", "insufficient_funds", failed, Account("bob", 0)) == (None, [])


def test_deposit_opens_an_account_and_must_be_positive() -> None:
    assert deposit(None, "carol", 50) == Account("carol", 50)
    assert deposit(Account("carol", 50), "carol", 25).balance_cents == 75
    with pytest.raises(ValueError):
        deposit(None, "carol", 0)
