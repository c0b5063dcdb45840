"""Payments: pure and synchronous. Try, confirm, cancel: a charge is held on ``orders.created``,
captured on ``orders.confirmed``, and released on ``orders.cancelled`` only while it is held.

Held, the money has left the customer's balance but not the customer: a cancel gives it back.
Captured, it is the shop's: a cancel then releases nothing, because an order is confirmed only
after its stock is reserved and nothing cancels a confirmed order but a mistake or a forgery (a
refund of a delivered order is a business flow of its own, not a compensation). Such a cancel is
recorded on the payment, for ``saga-audit`` to report. A cancel before the charge is an empty
compensation, recorded so that an ``orders.created`` arriving later holds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.envelope import Event
from shared.subjects import EventType

STEPS = "payment_svc.steps"
"""Partitioned: a batch of what one partition receives of its customers' orders from order_svc
(shared.contract's charge, capture and release requests; shared.steps)."""

INSUFFICIENT_FUNDS = "insufficient_funds"
UNKNOWN_CUSTOMER = "unknown_customer"


class PaymentStatus(StrEnum):
    HELD = "HELD"
    """The amount is taken from the balance, and given back if the order is cancelled."""
    CAPTURED = "CAPTURED"
    """The order was confirmed: the amount is the shop's for good."""
    FAILED = "FAILED"
    RELEASED = "RELEASED"
    """The order was cancelled while its charge was held: the amount is back on the balance."""
    CANCELLED = "CANCELLED"
    """The order was cancelled before anything was held: an empty compensation, recorded
    so that an ``orders.created`` arriving later holds nothing."""


@dataclass
class Account:
    customer_id: str
    balance_cents: int


@dataclass
class Payment:
    order_id: str
    customer_id: str
    amount_cents: int
    status: PaymentStatus
    reason: str | None = None
    refused_cancel: str | None = None
    """The reason of an ``orders.cancelled`` that came after the capture and released nothing."""


def hold(
    order_id: str, customer_id: str, amount_cents: int, existing: Payment | None, account: Account | None
) -> tuple[Payment | None, list[Event]]:
    """Hold an order's charge once. Returns the new payment record (None if nothing changes) and events."""
    if existing is not None:
        # Already held or failed, or cancelled before we got here: never charge again.
        return None, []
    if account is None:
        return _failed(order_id, customer_id, amount_cents, UNKNOWN_CUSTOMER)
    if account.balance_cents < amount_cents:
        return _failed(order_id, customer_id, amount_cents, INSUFFICIENT_FUNDS)
    account.balance_cents -= amount_cents
    payment = Payment(order_id, customer_id, amount_cents, PaymentStatus.HELD)
    completed = {"customer_id": customer_id, "amount_cents": amount_cents}
    return payment, [Event(EventType.PAYMENTS_COMPLETED, order_id, completed)]


def _failed(order_id: str, customer_id: str, amount: int, reason: str) -> tuple[Payment, list[Event]]:
    payment = Payment(order_id, customer_id, amount, PaymentStatus.FAILED, reason)
    return payment, [Event(EventType.PAYMENTS_FAILED, order_id, {"reason": reason})]


def capture(existing: Payment | None) -> Payment | None:
    """The order was confirmed: a held charge becomes the shop's. Anything else changes nothing:
    a confirm of an order never charged, or already released, is for the audit to find."""
    if existing is None or existing.status is not PaymentStatus.HELD:
        return None
    existing.status = PaymentStatus.CAPTURED
    return existing


def release(
    order_id: str, reason: str, existing: Payment | None, account: Account | None
) -> tuple[Payment | None, list[Event]]:
    """The order was cancelled: release a held charge once; record an empty compensation if
    nothing was held; after a capture, release nothing and record the refused cancel."""
    if existing is None:
        return Payment(order_id, "", 0, PaymentStatus.CANCELLED, reason), []
    if existing.status is PaymentStatus.CAPTURED:
        if existing.refused_cancel is not None:
            return None, []
        existing.refused_cancel = reason
        return existing, []
    if existing.status is not PaymentStatus.HELD:
        return None, []
    if account is None:
        raise ValueError(f"held order {order_id} has no account {existing.customer_id!r}")
    account.balance_cents += existing.amount_cents
    existing.status = PaymentStatus.RELEASED
    existing.reason = reason
    released = {"amount_cents": existing.amount_cents, "reason": reason}
    return existing, [Event(EventType.PAYMENTS_REFUNDED, order_id, released)]


def deposit(account: Account | None, customer_id: str, amount_cents: int) -> Account:
    """Credit a customer, opening the account on the first deposit."""
    if amount_cents <= 0:
        raise ValueError("a deposit must be positive")
    account = account or Account(customer_id, 0)
    account.balance_cents += amount_cents
    return account
