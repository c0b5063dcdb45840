import pytest

from payment_svc.domain import Account, Payment, PaymentStatus, charge, compensate, deposit


def test_charge_debits_once_and_emits_completed() -> None:
    account = Account("alice", 1000)
    payment, events = charge("o-1", "alice", 400, None, account)
    assert payment is not None and payment.status is PaymentStatus.CHARGED
    assert account.balance_cents == 600
    assert [(e.type, e.data) for e in events] == [("payments.completed", {"customer_id": "alice", "amount_cents": 400})]
    again, events = charge("o-1", "alice", 400, payment, account)
    assert (again, events, account.balance_cents) == (None, [], 600)


def test_charge_fails_for_insufficient_funds_without_touching_balance() -> None:
    account = Account("bob", 399)
    payment, events = charge("o-1", "bob", 400, None, account)
    assert payment is not None and (payment.status, payment.reason) == (PaymentStatus.FAILED, "insufficient_funds")
    assert account.balance_cents == 399
    assert [(e.type, e.data) for e in events] == [("payments.failed", {"reason": "insufficient_funds"})]


def test_charge_fails_for_unknown_customer() -> None:
    payment, events = charge("o-1", "nobody", 1, None, None)
    assert payment is not None and payment.reason == "unknown_customer"
    assert [e.data for e in events] == [{"reason": "unknown_customer"}]


def test_exact_balance_is_enough() -> None:
    account = Account("alice", 400)
    payment, _ = charge("o-1", "alice", 400, None, account)
    assert payment is not None and payment.status is PaymentStatus.CHARGED and account.balance_cents == 0


def test_refund_gives_the_charge_back_once() -> None:
    account = Account("alice", 1000)
    payment, _ = charge("o-1", "alice", 400, None, account)
    refunded, events = compensate("o-1", "out_of_stock", payment, account)
    assert refunded is not None and refunded.status is PaymentStatus.REFUNDED
    assert account.balance_cents == 1000
    assert [(e.type, e.data) for e in events] == [
        ("payments.refunded", {"amount_cents": 400, "reason": "out_of_stock"})
    ]
    assert compensate("o-1", "out_of_stock", refunded, account) == (None, [])
    assert account.balance_cents == 1000


def test_empty_compensation_is_recorded_and_blocks_a_late_charge() -> None:
    account = Account("alice", 1000)
    barrier, events = compensate("o-1", "requested", None, None)
    assert barrier is not None and barrier.status is PaymentStatus.CANCELLED and events == []
    late, events = charge("o-1", "alice", 400, barrier, account)
    assert (late, events, account.balance_cents) == (None, [], 1000)


def test_compensation_of_a_failed_payment_changes_nothing() -> None:
    failed = Payment("o-1", "bob", 400, PaymentStatus.FAILED, "insufficient_funds")
    assert compensate("o-1", "insufficient_funds", failed, Account("bob", 0)) == (None, [])


def test_deposit_opens_an_account_and_must_be_positive() -> None:
    assert deposit(None, "carol", 50) == Account("carol", 50)
    assert deposit(Account("carol", 50), "carol", 25).balance_cents == 75
    with pytest.raises(ValueError):
        deposit(None, "carol", 0)
