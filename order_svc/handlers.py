"""order_svc's handlers: load, decide (domain), save; the consumer adds the events to the outbox."""

from __future__ import annotations

import functools
import sqlite3
import time

from order_svc import domain, repository
from shared import metrics, tracing
from shared.consumer import ConsumerSpec, Route
from shared.contract import InventoryFailed, InventoryReserved, OrderCancelRequested, OrderRequested, PaymentFailed
from shared.envelope import BadMessage, Envelope, Event
from shared.logging import get_logger
from shared.store import after_commit
from shared.subjects import EventType, Stream

log = get_logger("order_svc")


def on_orders_requested(tx: sqlite3.Connection, env: Envelope, data: OrderRequested) -> list[Event]:
    existing = repository.get(tx, env.order_id)
    order, events = domain.place_order(env.order_id, env.event_id, data, existing, now=time.time())
    if order is not None:
        repository.add(tx, order, tracing.HANDLING.get())
    elif events:
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


def _cancel(tx: sqlite3.Connection, order_id: str, reason: str) -> list[Event]:
    order = repository.get(tx, order_id)
    if order is None:
        log.warning("order.cancel_for_unknown_order", reason=reason)
        return []
    events = order.cancel(reason)
    if events:
        save_outcome(tx, order)
    else:
        log.debug("order.cancel_ignored", status=order.status.value)
    return events


def on_orders_cancel_requested(tx: sqlite3.Connection, env: Envelope, data: OrderCancelRequested) -> list[Event]:
    return _cancel(tx, env.order_id, domain.CANCEL_REQUESTED)


def on_payments_failed(tx: sqlite3.Connection, env: Envelope, data: PaymentFailed) -> list[Event]:
    return _cancel(tx, env.order_id, data.reason)


def on_inventory_failed(tx: sqlite3.Connection, env: Envelope, data: InventoryFailed) -> list[Event]:
    return _cancel(tx, env.order_id, data.reason)


def on_inventory_reserved(tx: sqlite3.Connection, env: Envelope, data: InventoryReserved) -> list[Event]:
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
    return events


CONSUMERS = [
    ConsumerSpec(
        Stream.ORDERS,
        {
            EventType.ORDERS_REQUESTED: Route(OrderRequested, on_orders_requested),
            EventType.ORDERS_CANCEL_REQUESTED: Route(OrderCancelRequested, on_orders_cancel_requested),
        },
    ),
    ConsumerSpec(Stream.PAYMENTS, {EventType.PAYMENTS_FAILED: Route(PaymentFailed, on_payments_failed)}),
    ConsumerSpec(
        Stream.INVENTORY,
        {
            EventType.INVENTORY_RESERVED: Route(InventoryReserved, on_inventory_reserved),
            EventType.INVENTORY_FAILED: Route(InventoryFailed, on_inventory_failed),
        },
    ),
]
