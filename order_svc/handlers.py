"""order_svc's handlers: load, decide (domain), save; the consumer adds the events to the outbox."""

from __future__ import annotations

import functools
import sqlite3
import time

from order_svc import domain, repository
from shared import metrics, outbox, tracing
from shared.consumer import ConsumerSpec, Route
from shared.contract import InventoryFailed, InventoryReserved, OrderCancelRequested, OrderRequested, PaymentFailed
from shared.envelope import BadMessage, Envelope, Event
from shared.logging import get_logger
from shared.partitions import UNPARTITIONED, Partitioning
from shared.steps import batch_steps
from shared.store import after_commit
from shared.subjects import EventType, Stream

log = get_logger("order_svc")


def on_orders_requested(
    partitioning: Partitioning, tx: sqlite3.Connection, env: Envelope, data: OrderRequested
) -> list[Event]:
    existing = repository.get(tx, env.order_id)
    order, events = domain.place_order(env.order_id, env.event_id, data, existing, now=time.time())
    if order is not None:
        repository.add(tx, order, tracing.HANDLING.get())
        return domain.with_payment_inputs(order, events, partitioning)
    if events:
        log.warning("order.rejected", reason=domain.DUPLICATE_ORDER_ID)
    else:
        log.debug("order.same_request_again")
    return events


def save_outcome(tx: sqlite3.Connection, order: domain.Order) -> None:
    """Store an order's new CONFIRMED or CANCELLED, and count it once the transaction commits (a
    round retried message by message would otherwise count it twice)."""
    repository.save_status(tx, order)
    seconds = time.time() - order.created_at
    after_commit(tx, functools.partial(metrics.order_finished, order.status.value, order.reason, seconds))


def _cancel(partitioning: Partitioning, tx: sqlite3.Connection, order_id: str, reason: str) -> list[Event]:
    order = repository.get(tx, order_id)
    if order is None:
        log.warning("order.cancel_for_unknown_order", reason=reason)
        return []
    events = order.cancel(reason)
    if events:
        save_outcome(tx, order)
    else:
        log.debug("order.cancel_ignored", status=order.status.value)
    return domain.with_payment_inputs(order, events, partitioning)


def on_orders_cancel_requested(
    partitioning: Partitioning, tx: sqlite3.Connection, env: Envelope, data: OrderCancelRequested
) -> list[Event]:
    return _cancel(partitioning, tx, env.order_id, domain.CANCEL_REQUESTED)


def on_step_failed(
    partitioning: Partitioning, tx: sqlite3.Connection, env: Envelope, data: PaymentFailed | InventoryFailed
) -> list[Event]:
    """payments.failed or inventory.failed: the order is cancelled with the failure's reason."""
    return _cancel(partitioning, tx, env.order_id, data.reason)


def on_inventory_reserved(
    partitioning: Partitioning, tx: sqlite3.Connection, env: Envelope, data: InventoryReserved
) -> list[Event]:
    order = repository.get(tx, env.order_id)
    if order is None:
        log.warning("order.reserved_for_unknown_order")
        return []
    mismatch = order.reservation_mismatch([(item.sku, item.quantity) for item in data.items])
    if mismatch:
        raise BadMessage("reservation_mismatch", mismatch)
    events = order.confirm()
    if events:
        save_outcome(tx, order)
    else:
        # Cancelled while the reservation was in flight: it stays cancelled, and the
        # orders.cancelled already emitted makes inventory give the stock back.
        log.debug("order.confirm_ignored", status=order.status.value)
    return domain.with_payment_inputs(order, events, partitioning)


def requeue_payment_input(partitioning: Partitioning, tx: sqlite3.Connection, event_type: str, order_id: str) -> int:
    """A repair re-sends ``event_type`` about ``order_id``: partitioned, payment_svc reads not
    that event but what was sent with it to its customer's partition, so queue that again too
    (``ServiceDefinition.requeue_fed``). Its handlers are state machines: a second copy is a no-op."""
    order = repository.get(tx, order_id)
    if order is None:
        return 0
    inputs = domain.payment_inputs(order, [Event(event_type, order_id)], partitioning)
    return len(outbox.add(tx, batch_steps([(event, None) for event in inputs]), causation_id=None))


def consumers(partitioning: Partitioning) -> list[ConsumerSpec]:
    p = functools.partial
    return [
        ConsumerSpec(
            Stream.ORDERS,
            {
                EventType.ORDERS_REQUESTED: Route(OrderRequested, p(on_orders_requested, partitioning)),
                EventType.ORDERS_CANCEL_REQUESTED: Route(
                    OrderCancelRequested, p(on_orders_cancel_requested, partitioning)
                ),
            },
        ),
        ConsumerSpec(
            Stream.PAYMENTS, {EventType.PAYMENTS_FAILED: Route(PaymentFailed, p(on_step_failed, partitioning))}
        ),
        ConsumerSpec(
            Stream.INVENTORY,
            {
                EventType.INVENTORY_RESERVED: Route(InventoryReserved, p(on_inventory_reserved, partitioning)),
                EventType.INVENTORY_FAILED: Route(InventoryFailed, p(on_step_failed, partitioning)),
            },
        ),
    ]


CONSUMERS = consumers(UNPARTITIONED)
