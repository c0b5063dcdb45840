"""Payments: pure and synchronous. Charge once, refund once, and never charge after a cancel."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.envelope import Event
from shared.subjects import EventType

STEPS = "payment_svc.steps"
"""A batch of the sub-steps below, for one partition (shared.steps)."""
CHARGE_REQUESTED = "payment_svc.charge_requested"
"""Sub-step (partitioned only): from the order's partition to its customer's, charge the order."""
REFUND_REQUESTED = "payment_svc.refund_requested"
"""Sub-step (partitioned only): the order was cancelled; compensate in the customer's partition."""

INSUFFICIENT_FUNDS = "insufficient_funds"
UNKNOWN_CUSTOMER = "unknown_customer"


class PaymentStatus(StrEnum):
    CHARGED = "CHARGED"
    FAILED = "FAILED"
    REFUNDED = "REFUNDED"
    CANCELLED = "CANCELLED"
    """The order was cancelled before anything was charged: an empty compensation, recorded
    so that an ``orders.created`` arriving later charges nothing."""


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


def charge(
    order_id: str, customer_id: str, amount_cents: int, existing: Payment | None, account: Account | None
) -> tuple[Payment | None, list[Event]]:
    """Charge an order once. Returns the new payment record (None if nothing changes) and events."""
    if existing is not None:
        # Already charged or failed, or cancelled before we got here: never charge again.
        return None, []
    if account is None:
        return _failed(order_id, customer_id, amount_cents, UNKNOWN_CUSTOMER)
    if account.balance_cents < amount_cents:
        return _failed(order_id, customer_id, amount_cents, INSUFFICIENT_FUNDS)
    account.balance_cents -= amount_cents
    payment = Payment(order_id, customer_id, amount_cents, PaymentStatus.CHARGED)
    completed = {"customer_id": customer_id, "amount_cents": amount_cents}
    return payment, [Event(EventType.PAYMENTS_COMPLETED, order_id, completed)]


def _failed(order_id: str, customer_id: str, amount: int, reason: str) -> tuple[Payment, list[Event]]:
    payment = Payment(order_id, customer_id, amount, PaymentStatus.FAILED, reason)
    return payment, [Event(EventType.PAYMENTS_FAILED, order_id, {"reason": reason})]


def compensate(
    order_id: str, reason: str, existing: Payment | None, account: Account | None
) -> tuple[Payment | None, list[Event]]:
    """The order was cancelled: refund a charge once; record an empty compensation if nothing was charged."""
    if existing is None:
        return Payment(order_id, "", 0, PaymentStatus.CANCELLED, reason), []
    if existing.status is not PaymentStatus.CHARGED:
        return None, []
    if account is None:
        raise ValueError(f"charged order {order_id} has no account {existing.customer_id!r}")
    account.balance_cents += existing.amount_cents
    existing.status = PaymentStatus.REFUNDED
    existing.reason = reason
    refunded = {"amount_cents": existing.amount_cents, "reason": reason}
    return existing, [Event(EventType.PAYMENTS_REFUNDED, order_id, refunded)]


@dataclass
class Forwarded:
    """An order whose payment lives in its customer's partition, not the order's (docs/partitions.md)."""

    order_id: str
    customer_id: str
    partition: int
    """The customer's partition."""


def forward_charge(order_id: str, customer_id: str, amount_cents: int, partition: int) -> tuple[Forwarded, list[Event]]:
    """Hand the charge to the customer's partition: the balance lives there, and so does the payment."""
    data = {"customer_id": customer_id, "amount_cents": amount_cents}
    return Forwarded(order_id, customer_id, partition), [Event(CHARGE_REQUESTED, order_id, data, partition)]


def forward_refund(forwarded: Forwarded, reason: str) -> list[Event]:
    """The cancel of a forwarded order goes where its charge went; that partition decides (``compensate``)."""
    data = {"customer_id": forwarded.customer_id, "reason": reason}
    return [Event(REFUND_REQUESTED, forwarded.order_id, data, forwarded.partition)]


def deposit(account: Account | None, customer_id: str, amount_cents: int) -> Account:
    """Credit a customer, opening the account on the first deposit."""
    if amount_cents <= 0:
        raise ValueError("a deposit must be positive")
    account = account or Account(customer_id, 0)
    account.balance_cents += amount_cents
    return account
