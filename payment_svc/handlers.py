"""payment_svc's handlers: hold on orders.created, capture on orders.confirmed, release on
orders.cancelled (payment_svc.domain).

Partitioned, a payment lives with its customer's balance: an order's events reach the order's
partition, which holds there if the customer is there too, and otherwise forwards the charge,
and later its confirm or cancel, to the customer's partition (docs/partitions.md).
"""

from __future__ import annotations

import functools
import sqlite3

from payment_svc import domain, repository
from shared.consumer import ConsumerSpec, Route
from shared.contract import Cents, CustomerId, OrderCancelled, OrderConfirmed, OrderCreated, Reason
from shared.envelope import Envelope, Event, EventData
from shared.logging import get_logger
from shared.partitions import UNPARTITIONED, Partitioning
from shared.steps import StepBatch, apply_batch, partition_of_batch
from shared.subjects import EventType, Stream

log = get_logger("payment_svc")


class ChargeRequested(EventData):
    customer_id: CustomerId
    amount_cents: Cents


class CaptureRequested(EventData):
    customer_id: CustomerId


class ReleaseRequested(EventData):
    customer_id: CustomerId
    reason: Reason


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


def on_orders_created(
    partitioning: Partitioning, tx: sqlite3.Connection, env: Envelope, data: OrderCreated
) -> list[Event]:
    account_partition = partitioning.of(data.customer_id)
    if account_partition == partitioning.of(env.order_id):  # always so when unpartitioned
        return _hold(tx, env.order_id, data.customer_id, data.total_cents)
    # A payment row here is the barrier of a cancel that came first; a forward, a repeat.
    if repository.get_payment(tx, env.order_id) or repository.get_forwarded(tx, env.order_id):
        log.debug("payment.forward_skipped")
        return []
    forwarded, events = domain.forward_charge(env.order_id, data.customer_id, data.total_cents, account_partition)
    repository.add_forwarded(tx, forwarded)
    log.debug("payment.forwarded", partition=account_partition)
    return events


def on_orders_confirmed(tx: sqlite3.Connection, env: Envelope, data: OrderConfirmed) -> list[Event]:
    forwarded = repository.get_forwarded(tx, env.order_id)
    if forwarded is not None:
        return domain.forward_capture(forwarded)
    return _capture(tx, env.order_id)


def on_orders_cancelled(tx: sqlite3.Connection, env: Envelope, data: OrderCancelled) -> list[Event]:
    forwarded = repository.get_forwarded(tx, env.order_id)
    if forwarded is not None:
        return domain.forward_release(forwarded, data.reason)
    return _release(tx, env.order_id, data.reason)


def on_charge_requested(tx: sqlite3.Connection, env: Envelope, data: ChargeRequested) -> list[Event]:
    return _hold(tx, env.order_id, data.customer_id, data.amount_cents)


def on_capture_requested(tx: sqlite3.Connection, env: Envelope, data: CaptureRequested) -> list[Event]:
    return _capture(tx, env.order_id)


def on_release_requested(tx: sqlite3.Connection, env: Envelope, data: ReleaseRequested) -> list[Event]:
    return _release(tx, env.order_id, data.reason)


def consumers(partitioning: Partitioning) -> list[ConsumerSpec]:
    specs = [
        ConsumerSpec(
            Stream.ORDERS,
            {
                EventType.ORDERS_CREATED: Route(OrderCreated, functools.partial(on_orders_created, partitioning)),
                EventType.ORDERS_CONFIRMED: Route(OrderConfirmed, on_orders_confirmed),
                EventType.ORDERS_CANCELLED: Route(OrderCancelled, on_orders_cancelled),
            },
        ),
    ]
    if partitioning.partitioned:
        specs.append(
            ConsumerSpec(
                Stream.PAYMENT_STEPS,
                {
                    domain.STEPS: Route(
                        StepBatch,
                        functools.partial(
                            apply_batch,
                            {
                                domain.CHARGE_REQUESTED: (ChargeRequested, on_charge_requested),
                                domain.CAPTURE_REQUESTED: (CaptureRequested, on_capture_requested),
                                domain.RELEASE_REQUESTED: (ReleaseRequested, on_release_requested),
                            },
                        ),
                        key=partition_of_batch,
                    )
                },
            )
        )
    return specs


CONSUMERS = consumers(UNPARTITIONED)
