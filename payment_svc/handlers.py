"""payment_svc's handlers: hold on orders.created, capture on orders.confirmed, release on
orders.cancelled (payment_svc.domain).

Partitioned, a payment lives with its customer's balance, and the customer is not in those
events' subjects: order_svc sends each partition what it needs of its customers' orders (the
charge, the capture, the release), batched, and payment_svc reads no ORDERS at all
(docs/partitions.md).
"""

from __future__ import annotations

import functools
import sqlite3

from payment_svc import domain, repository
from shared.consumer import ConsumerSpec, Route
from shared.contract import (
    CAPTURE_REQUESTED,
    CHARGE_REQUESTED,
    RELEASE_REQUESTED,
    CaptureRequested,
    ChargeRequested,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    ReleaseRequested,
)
from shared.envelope import Envelope, Event, EventData
from shared.logging import get_logger
from shared.partitions import UNPARTITIONED, Partitioning
from shared.steps import StepBatch, StepHandler, apply_batch, partition_of_batch
from shared.subjects import EventType, Stream

log = get_logger("payment_svc")


def _hold(tx: sqlite3.Connection, order_id: str, customer_id: str, amount_cents: int) -> list[Event]:
    existing = repository.get_payment(tx, order_id)
    account = repository.get_account(tx, customer_id)
    payment, events = domain.hold(order_id, customer_id, amount_cents, existing, account)
    if payment is None:
        log.debug("payment.hold_skipped", status=existing.status.value if existing else None)
        return []
    if payment.status is domain.PaymentStatus.HELD and account is not None:
        repository.save_account(tx, account)
    repository.save_payment(tx, payment)
    log.debug("payment.decided", status=payment.status.value, amount_cents=payment.amount_cents, reason=payment.reason)
    return events


def _capture(tx: sqlite3.Connection, order_id: str) -> list[Event]:
    existing = repository.get_payment(tx, order_id)
    payment = domain.capture(existing)
    if payment is None:
        # Confirmed with no held charge here: a replay, or a confirm no charge backs (saga-audit).
        log.debug("payment.capture_skipped", status=existing.status.value if existing else None)
        return []
    repository.save_payment(tx, payment)
    log.debug("payment.captured", amount_cents=payment.amount_cents)
    return []


def _release(tx: sqlite3.Connection, order_id: str, reason: str) -> list[Event]:
    existing = repository.get_payment(tx, order_id)
    account = repository.get_account(tx, existing.customer_id) if existing else None
    payment, events = domain.release(order_id, reason, existing, account)
    if payment is None:
        log.debug("payment.release_skipped", status=existing.status.value if existing else None)
        return []
    if payment.status is domain.PaymentStatus.RELEASED and account is not None:
        repository.save_account(tx, account)
    elif payment.refused_cancel is not None:
        log.warning("payment.cancel_after_capture", reason=reason, amount_cents=payment.amount_cents)
    repository.save_payment(tx, payment)
    log.debug("payment.compensated", status=payment.status.value, amount_cents=payment.amount_cents)
    return events


def on_orders_created(tx: sqlite3.Connection, env: Envelope, data: OrderCreated) -> list[Event]:
    return _hold(tx, env.order_id, data.customer_id, data.total_cents)


def on_orders_confirmed(tx: sqlite3.Connection, env: Envelope, data: OrderConfirmed) -> list[Event]:
    return _capture(tx, env.order_id)


def on_orders_cancelled(tx: sqlite3.Connection, env: Envelope, data: OrderCancelled) -> list[Event]:
    return _release(tx, env.order_id, data.reason)


def on_charge_requested(tx: sqlite3.Connection, env: Envelope, data: ChargeRequested) -> list[Event]:
    return _hold(tx, env.order_id, data.customer_id, data.amount_cents)


def on_capture_requested(tx: sqlite3.Connection, env: Envelope, data: CaptureRequested) -> list[Event]:
    return _capture(tx, env.order_id)


def on_release_requested(tx: sqlite3.Connection, env: Envelope, data: ReleaseRequested) -> list[Event]:
    return _release(tx, env.order_id, data.reason)


def consumers(partitioning: Partitioning) -> list[ConsumerSpec]:
    if not partitioning.partitioned:
        return [
            ConsumerSpec(
                Stream.ORDERS,
                {
                    EventType.ORDERS_CREATED: Route(OrderCreated, on_orders_created),
                    EventType.ORDERS_CONFIRMED: Route(OrderConfirmed, on_orders_confirmed),
                    EventType.ORDERS_CANCELLED: Route(OrderCancelled, on_orders_cancelled),
                },
            )
        ]
    steps: dict[str, tuple[type[EventData], StepHandler]] = {
        CHARGE_REQUESTED: (ChargeRequested, on_charge_requested),
        CAPTURE_REQUESTED: (CaptureRequested, on_capture_requested),
        RELEASE_REQUESTED: (ReleaseRequested, on_release_requested),
    }
    batches = Route(StepBatch, functools.partial(apply_batch, steps), key=partition_of_batch)
    return [ConsumerSpec(Stream.PAYMENT_STEPS, {domain.STEPS: batches})]


CONSUMERS = consumers(UNPARTITIONED)
