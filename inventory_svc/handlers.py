"""inventory_svc's handlers: learn lines from orders.created, reserve on payments.completed
(whichever of the two comes second), commit on orders.confirmed, release on orders.cancelled.

Partitioned, stock lives in its sku's partition and an order's events reach the order's
partition (its home). When every sku of the order is at home, all happens there as before.
Otherwise the home dispatches the reservation to the partitions of the skus (the parts) and
relays the confirm or cancel to them; each part keeps the barrier for its own lines
(docs/partitions.md).
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Annotated

from pydantic import Field

from inventory_svc import domain, repository
from shared.consumer import ConsumerSpec, Route
from shared.contract import (
    MAX_ITEMS,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    PaymentCompleted,
    Reason,
    Sku,
    StockItem,
    quantities_per_sku,
)
from shared.envelope import BadMessage, Envelope, Event, EventData
from shared.logging import get_logger
from shared.partitions import UNPARTITIONED, Partitioning
from shared.steps import StepBatch, apply_batch, partition_of_batch
from shared.subjects import EventType, Stream

log = get_logger("inventory_svc")


class PartLines(EventData):
    """A sub-step to a part: the order's lines whose sku lives there."""

    items: Annotated[list[StockItem], Field(min_length=1, max_length=MAX_ITEMS)]


class ReserveRequested(PartLines):
    delegated: bool
    """The part holds every line of the order, so it answers the saga itself."""


class CommitRequested(EventData):
    """A sub-step to a part: the order was confirmed; commit what the part reserved for it."""


class ReleaseRequested(EventData):
    """A sub-step to a part: the order was cancelled; release what the part reserved, or keep the barrier."""

    reason: Reason


class PartReserved(EventData):
    partition: Annotated[int, Field(ge=0)]
    """The part that answers."""


class PartFailed(PartReserved):
    reason: Reason
    sku: Sku


def _lines(data: PartLines) -> dict[str, int]:
    return quantities_per_sku([(item.sku, item.quantity) for item in data.items])


def on_orders_created(
    partitioning: Partitioning, tx: sqlite3.Connection, env: Envelope, data: OrderCreated
) -> list[Event]:
    lines = quantities_per_sku([(item.sku, item.quantity) for item in data.items])
    terms = domain.OrderTerms(data.customer_id, data.total_cents)
    repository.add_order_lines(tx, env.order_id, lines, terms)
    early, paid = repository.take_early_payment(tx, env.order_id)
    if not early:
        return []
    mismatch = domain.payment_mismatch(terms, paid)
    if mismatch:
        # That payments.completed was acked long ago, so it cannot be dead-lettered now: it is
        # forgotten, and the order's real payment, when it comes, reserves as usual.
        log.error("reservation.payment_mismatch", detail=mismatch)
        return []
    return _reserve_at_home(partitioning, tx, env.order_id, lines)


def on_payments_completed(
    partitioning: Partitioning, tx: sqlite3.Connection, env: Envelope, data: PaymentCompleted
) -> list[Event]:
    paid = domain.OrderTerms(data.customer_id, data.amount_cents)
    known = repository.get_order_lines(tx, env.order_id)
    if known is None:
        # orders.created is always published before payments.completed, but on another stream,
        # so it may reach us second: the reservation is made when it comes, if the payment matches.
        repository.add_early_payment(tx, env.order_id, paid)
        log.debug("reservation.awaiting_lines")
        return []
    lines, terms = known
    mismatch = domain.payment_mismatch(terms, paid)
    if mismatch:
        raise BadMessage("payment_mismatch", mismatch)
    return _reserve_at_home(partitioning, tx, env.order_id, lines)


def _reserve_at_home(
    partitioning: Partitioning, tx: sqlite3.Connection, order_id: str, lines: dict[str, int]
) -> list[Event]:
    parts = domain.parts_of(lines, partitioning)
    if set(parts) == {partitioning.of(order_id)}:  # always so when unpartitioned
        return _reserve(tx, order_id, lines)
    # A reservation here is the barrier of a cancel that came first; a dispatch, a repeat.
    if repository.get_reservation(tx, order_id) or repository.get_dispatch(tx, order_id):
        log.debug("reservation.dispatch_skipped")
        return []
    dispatched, events = domain.dispatch(order_id, parts)
    repository.save_dispatch(tx, dispatched)
    log.debug("reservation.dispatched", parts=sorted(parts), status=dispatched.status.value)
    return events


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


def _commit(tx: sqlite3.Connection, order_id: str) -> list[Event]:
    reservation = repository.get_reservation(tx, order_id)
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


def _release(tx: sqlite3.Connection, order_id: str, reason: str) -> list[Event]:
    existing = repository.get_reservation(tx, order_id)
    stock = repository.get_stock(tx, existing.lines if existing else {})
    present = {sku: s for sku, s in stock.items() if s is not None}
    reservation, events = domain.release(order_id, reason, existing, present)
    if reservation is None:
        log.debug("reservation.release_skipped", status=existing.status.value if existing else None)
        return []
    if reservation.status is domain.ReservationStatus.RELEASED:
        repository.save_stock(tx, present.values())
    repository.save_reservation(tx, reservation)
    log.debug("reservation.compensated", status=reservation.status.value)
    return events


def on_orders_confirmed(tx: sqlite3.Connection, env: Envelope, data: OrderConfirmed) -> list[Event]:
    dispatched = repository.get_dispatch(tx, env.order_id)
    if dispatched is None:
        return _commit(tx, env.order_id)
    events = domain.dispatch_confirmed(dispatched)
    if events:
        repository.save_dispatch(tx, dispatched)
    return events


def on_orders_cancelled(tx: sqlite3.Connection, env: Envelope, data: OrderCancelled) -> list[Event]:
    dispatched = repository.get_dispatch(tx, env.order_id)
    if dispatched is None:
        return _release(tx, env.order_id, data.reason)
    events = domain.dispatch_cancelled(dispatched, data.reason)
    if events:
        repository.save_dispatch(tx, dispatched)
    return events


# --- sub-steps (partitioned only) -----------------------------------------------------------


def on_reserve_requested(
    partitioning: Partitioning, tx: sqlite3.Connection, env: Envelope, data: ReserveRequested
) -> list[Event]:
    existing = repository.get_reservation(tx, env.order_id)
    if existing is not None:  # released before it came (the barrier), or a repeat
        log.debug("reservation.part_skipped", status=existing.status.value)
        return []
    lines = _lines(data)
    stock = repository.get_stock(tx, lines)
    home, part = partitioning.of(env.order_id), partitioning.of(_first_sku(env, data))
    reservation, events = domain.reserve_part(env.order_id, lines, data.delegated, home, part, stock)
    if reservation.status is domain.ReservationStatus.RESERVED:
        repository.save_stock(tx, [s for s in stock.values() if s is not None])
    repository.save_reservation(tx, reservation)
    log.debug("reservation.part_decided", status=reservation.status.value, reason=reservation.reason)
    return events


def _answered(tx: sqlite3.Connection, order_id: str, partition: int, failure: tuple[str, str] | None) -> list[Event]:
    dispatched = repository.get_dispatch(tx, order_id)
    if dispatched is None:
        log.warning("reservation.answer_without_dispatch", partition=partition)
        return []
    changed, events = domain.part_answered(dispatched, partition, failure)
    if changed:
        repository.save_dispatch(tx, dispatched)
    return events


def on_part_reserved(tx: sqlite3.Connection, env: Envelope, data: PartReserved) -> list[Event]:
    return _answered(tx, env.order_id, data.partition, None)


def on_part_failed(tx: sqlite3.Connection, env: Envelope, data: PartFailed) -> list[Event]:
    return _answered(tx, env.order_id, data.partition, (data.reason, data.sku))


def on_commit_requested(tx: sqlite3.Connection, env: Envelope, data: CommitRequested) -> list[Event]:
    return _commit(tx, env.order_id)


def on_release_requested(tx: sqlite3.Connection, env: Envelope, data: ReleaseRequested) -> list[Event]:
    return _release(tx, env.order_id, data.reason)


def _first_sku(env: Envelope, data: PartLines) -> str:
    """The sku whose partition a part's sub-step is for (all its lines are in that partition)."""
    return data.items[0].sku


def consumers(partitioning: Partitioning) -> list[ConsumerSpec]:
    p = partitioning
    specs = [
        ConsumerSpec(
            Stream.ORDERS,
            {
                EventType.ORDERS_CREATED: Route(OrderCreated, functools.partial(on_orders_created, p)),
                EventType.ORDERS_CONFIRMED: Route(OrderConfirmed, on_orders_confirmed),
                EventType.ORDERS_CANCELLED: Route(OrderCancelled, on_orders_cancelled),
            },
        ),
        ConsumerSpec(
            Stream.PAYMENTS,
            {EventType.PAYMENTS_COMPLETED: Route(PaymentCompleted, functools.partial(on_payments_completed, p))},
        ),
    ]
    if p.partitioned:
        specs.append(
            ConsumerSpec(
                Stream.INVENTORY_STEPS,
                {
                    domain.STEPS: Route(
                        StepBatch,
                        functools.partial(
                            apply_batch,
                            {
                                domain.RESERVE_REQUESTED: (
                                    ReserveRequested,
                                    functools.partial(on_reserve_requested, p),
                                ),
                                domain.COMMIT_REQUESTED: (CommitRequested, on_commit_requested),
                                domain.RELEASE_REQUESTED: (ReleaseRequested, on_release_requested),
                                domain.PART_RESERVED: (PartReserved, on_part_reserved),
                                domain.PART_FAILED: (PartFailed, on_part_failed),
                            },
                        ),
                        key=partition_of_batch,
                    )
                },
            )
        )
    return specs


CONSUMERS = consumers(UNPARTITIONED)
