"""payment_svc's handlers: charge on orders.created, refund on orders.cancelled."""

from __future__ import annotations

import sqlite3

from payment_svc import domain, repository
from shared.consumer import ConsumerSpec, Route
from shared.contract import OrderCancelled, OrderCreated
from shared.envelope import Envelope, Event
from shared.logging import get_logger
from shared.subjects import EventType, Stream

log = get_logger("payment_svc")


def on_orders_created(tx: sqlite3.Connection, env: Envelope, data: OrderCreated) -> list[Event]:
    existing = repository.get_payment(tx, env.order_id)
    account = repository.get_account(tx, data.customer_id)
    payment, events = domain.charge(env.order_id, data.customer_id, data.total_cents, existing, account)
    if payment is None:
        log.debug("payment.charge_skipped", status=existing.status.value if existing else None)
        return []
    if payment.status is domain.PaymentStatus.CHARGED and account is not None:
        repository.save_account(tx, account)
    repository.save_payment(tx, payment)
    log.debug("payment.decided", status=payment.status.value, amount_cents=payment.amount_cents, reason=payment.reason)
    return events


def on_orders_cancelled(tx: sqlite3.Connection, env: Envelope, data: OrderCancelled) -> list[Event]:
    existing = repository.get_payment(tx, env.order_id)
    account = repository.get_account(tx, existing.customer_id) if existing else None
    payment, events = domain.compensate(env.order_id, data.reason, existing, account)
    if payment is None:
        log.debug("payment.compensation_skipped", status=existing.status.value if existing else None)
        return []
    if payment.status is domain.PaymentStatus.REFUNDED and account is not None:
        repository.save_account(tx, account)
    repository.save_payment(tx, payment)
    log.debug("payment.compensated", status=payment.status.value, amount_cents=payment.amount_cents)
    return events


CONSUMERS = [
    ConsumerSpec(
        Stream.ORDERS,
        {
            EventType.ORDERS_CREATED: Route(OrderCreated, on_orders_created),
            EventType.ORDERS_CANCELLED: Route(OrderCancelled, on_orders_cancelled),
        },
    ),
]
