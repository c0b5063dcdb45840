"""inventory_svc's handlers: learn lines from orders.created, reserve on payments.completed
(whichever of the two comes second), commit on orders.confirmed, release on orders.cancelled."""

from __future__ import annotations

import sqlite3

from inventory_svc import domain, repository
from shared.consumer import ConsumerSpec, Route
from shared.contract import OrderCancelled, OrderConfirmed, OrderCreated, PaymentCompleted
from shared.envelope import Envelope, Event
from shared.logging import get_logger
from shared.subjects import EventType, Stream

log = get_logger("inventory_svc")


def on_orders_created(tx: sqlite3.Connection, env: Envelope, data: OrderCreated) -> list[Event]:
    lines = domain.order_lines([(item.sku, item.quantity) for item in data.items])
    repository.add_order_lines(tx, env.order_id, lines)
    if repository.take_early_payment(tx, env.order_id):
        return _reserve(tx, env.order_id, lines)
    return []


def on_payments_completed(tx: sqlite3.Connection, env: Envelope, data: PaymentCompleted) -> list[Event]:
    lines = repository.get_order_lines(tx, env.order_id)
    if lines is None:
        # orders.created is always published before payments.completed, but on another stream,
        # so it may reach us second: the reservation is made when it comes.
        repository.add_early_payment(tx, env.order_id)
        log.debug("reservation.awaiting_lines")
        return []
    return _reserve(tx, env.order_id, lines)


def _reserve(tx: sqlite3.Connection, order_id: str, lines: dict[str, int]) -> list[Event]:
    existing = repository.get_reservation(tx, order_id)
    if existing is not None:
        log.debug("reservation.skipped", status=existing.status.value)
        return []
    stock = repository.get_stock(tx, lines)
    reservation, events = domain.reserve(order_id, lines, existing, stock)
    if reservation is None:
        return []
    if reservation.status is domain.ReservationStatus.RESERVED:
        repository.save_stock(tx, [s for s in stock.values() if s is not None])
    repository.save_reservation(tx, reservation)
    log.debug("reservation.decided", status=reservation.status.value, reason=reservation.reason)
    return events


def on_orders_confirmed(tx: sqlite3.Connection, env: Envelope, data: OrderConfirmed) -> list[Event]:
    reservation = repository.get_reservation(tx, env.order_id)
    stock = repository.get_stock(tx, reservation.lines if reservation else {})
    present = {sku: s for sku, s in stock.items() if s is not None}
    if domain.commit(reservation, present):
        assert reservation is not None
        repository.save_stock(tx, present.values())
        repository.save_reservation(tx, reservation)
        log.debug("reservation.committed")
    else:
        log.warning("reservation.commit_skipped", status=reservation.status.value if reservation else None)
    return []


def on_orders_cancelled(tx: sqlite3.Connection, env: Envelope, data: OrderCancelled) -> list[Event]:
    existing = repository.get_reservation(tx, env.order_id)
    stock = repository.get_stock(tx, existing.lines if existing else {})
    present = {sku: s for sku, s in stock.items() if s is not None}
    reservation, events = domain.release(env.order_id, data.reason, existing, present)
    if reservation is None:
        log.debug("reservation.release_skipped", status=existing.status.value if existing else None)
        return []
    if reservation.status is domain.ReservationStatus.RELEASED:
        repository.save_stock(tx, present.values())
    repository.save_reservation(tx, reservation)
    log.debug("reservation.compensated", status=reservation.status.value)
    return events


CONSUMERS = [
    ConsumerSpec(
        Stream.ORDERS,
        {
            EventType.ORDERS_CREATED: Route(OrderCreated, on_orders_created),
            EventType.ORDERS_CONFIRMED: Route(OrderConfirmed, on_orders_confirmed),
            EventType.ORDERS_CANCELLED: Route(OrderCancelled, on_orders_cancelled),
        },
    ),
    ConsumerSpec(Stream.PAYMENTS, {EventType.PAYMENTS_COMPLETED: Route(PaymentCompleted, on_payments_completed)}),
]
