"""Stock: pure and synchronous. Reserve every item or none; release once; never reserve after a cancel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from shared.envelope import Event
from shared.partitions import Partitioning
from shared.subjects import EventType

# Sub-steps between partitions (partitioned only; docs/partitions.md). From the order's partition
# (its "home") to a partition holding some of its skus ("part"), and the part's answer back.
STEPS = "inventory_svc.steps"
"""A batch of the sub-steps below, for one partition (shared.steps)."""
RESERVE_REQUESTED = "inventory_svc.reserve_requested"
PART_RESERVED = "inventory_svc.part_reserved"
PART_FAILED = "inventory_svc.part_failed"
COMMIT_REQUESTED = "inventory_svc.commit_requested"
RELEASE_REQUESTED = "inventory_svc.release_requested"

OUT_OF_STOCK = "out_of_stock"
UNKNOWN_SKU = "unknown_sku"


class ReservationStatus(StrEnum):
    RESERVED = "RESERVED"
    COMMITTED = "COMMITTED"
    """The order was confirmed: the stock has left ``reserved`` for good."""
    RELEASED = "RELEASED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    """Cancelled before anything was reserved: an empty compensation, recorded so that a
    ``payments.completed`` arriving later reserves nothing."""


@dataclass
class Stock:
    sku: str
    available: int
    reserved: int


@dataclass
class Reservation:
    order_id: str
    status: ReservationStatus
    lines: dict[str, int]
    """Quantity per sku, summed over the order's items."""
    reason: str | None = None


@dataclass(frozen=True)
class OrderTerms:
    """Who pays how much for an order: from ``orders.created``, and from its ``payments.completed``."""

    customer_id: str
    amount_cents: int


def payment_mismatch(order: OrderTerms | None, paid: OrderTerms | None) -> str | None:
    """Why a payment is not the one this order needs, or None if it is (or either side is from
    before the terms were kept). Inventory reserves only for the payment of the order it knows:
    a ``payments.completed`` of another amount, or from another customer, is not that payment."""
    if order is None or paid is None or order == paid:
        return None
    return (
        f"payment of {paid.amount_cents} cents by {paid.customer_id!r}, but the order is"
        f" {order.amount_cents} cents by {order.customer_id!r}"
    )


def _items(lines: Mapping[str, int]) -> list[dict[str, object]]:
    return [{"sku": sku, "quantity": qty} for sku, qty in lines.items()]


def reserve(
    order_id: str, lines: dict[str, int], existing: Reservation | None, stock: Mapping[str, Stock | None]
) -> tuple[Reservation | None, list[Event]]:
    """Reserve every line or none. Returns the new reservation (None if nothing changes) and events."""
    if existing is not None:
        # Reserved or failed already, or cancelled first: a late forward step does nothing.
        return None, []
    for sku, quantity in lines.items():
        item = stock.get(sku)
        reason = UNKNOWN_SKU if item is None else OUT_OF_STOCK if item.available < quantity else None
        if reason:
            failed = Reservation(order_id, ReservationStatus.FAILED, lines, reason)
            return failed, [Event(EventType.INVENTORY_FAILED, order_id, {"reason": reason, "sku": sku})]
    for sku, quantity in lines.items():
        item = stock[sku]
        assert item is not None
        item.available -= quantity
        item.reserved += quantity
    reservation = Reservation(order_id, ReservationStatus.RESERVED, lines)
    return reservation, [Event(EventType.INVENTORY_RESERVED, order_id, {"items": _items(lines)})]


def commit(reservation: Reservation | None, stock: Mapping[str, Stock]) -> bool:
    """The order was confirmed: reserved stock leaves for good. True if anything changed."""
    if reservation is None or reservation.status is not ReservationStatus.RESERVED:
        return False
    for sku, quantity in reservation.lines.items():
        stock[sku].reserved -= quantity
    reservation.status = ReservationStatus.COMMITTED
    return True


def release(
    order_id: str, reason: str, existing: Reservation | None, stock: Mapping[str, Stock]
) -> tuple[Reservation | None, list[Event]]:
    """The order was cancelled: give back what was reserved, once; record an empty compensation."""
    if existing is None:
        return Reservation(order_id, ReservationStatus.CANCELLED, {}, reason), []
    if existing.status is not ReservationStatus.RESERVED:
        return None, []
    for sku, quantity in existing.lines.items():
        stock[sku].available += quantity
        stock[sku].reserved -= quantity
    existing.status = ReservationStatus.RELEASED
    existing.reason = reason
    return existing, [Event(EventType.INVENTORY_RELEASED, order_id, {"items": _items(existing.lines)})]


def restock(stock: Stock | None, sku: str, quantity: int) -> Stock:
    if quantity <= 0:
        raise ValueError("a restock must be positive")
    stock = stock or Stock(sku, 0, 0)
    stock.available += quantity
    return stock


# --- partitioned: an order whose skus live in other partitions than the order ----------------


class DispatchStatus(StrEnum):
    DELEGATED = "DELEGATED"
    """All its skus are in one other partition: that partition decides, and says so itself."""
    PENDING = "PENDING"
    """Its skus are in several partitions; some have not answered yet."""
    RESERVED = "RESERVED"
    FAILED = "FAILED"
    """A part could not reserve; every other part was told to release (or never to reserve)."""
    RELEASED = "RELEASED"
    """The order was cancelled; every part was told to release."""
    COMMITTED = "COMMITTED"


@dataclass
class Dispatch:
    """The home partition's record of an order it split between the partitions of its skus."""

    order_id: str
    status: DispatchStatus
    parts: dict[int, dict[str, int]]
    """Partition -> the order's lines whose sku lives there."""
    reserved: set[int] = field(default_factory=set)
    """The parts that answered reserved."""
    reason: str | None = None


def parts_of(lines: Mapping[str, int], partitioning: Partitioning) -> dict[int, dict[str, int]]:
    """The order's lines grouped by the partition of their sku."""
    parts: dict[int, dict[str, int]] = {}
    for sku, quantity in lines.items():
        parts.setdefault(partitioning.of(sku), {})[sku] = quantity
    return parts


def dispatch(order_id: str, parts: dict[int, dict[str, int]]) -> tuple[Dispatch, list[Event]]:
    """Ask each part to reserve its lines. One part alone answers the saga itself (delegated)."""
    delegated = len(parts) == 1
    status = DispatchStatus.DELEGATED if delegated else DispatchStatus.PENDING
    events = [
        Event(RESERVE_REQUESTED, order_id, {"items": _items(lines), "delegated": delegated}, partition)
        for partition, lines in parts.items()
    ]
    return Dispatch(order_id, status, parts), events


def reserve_part(
    order_id: str, lines: dict[str, int], delegated: bool, home: int, part: int, stock: Mapping[str, Stock | None]
) -> tuple[Reservation, list[Event]]:
    """A part reserves its lines, all or none; a delegated part tells the saga, another its home."""
    reservation, events = reserve(order_id, lines, None, stock)
    assert reservation is not None
    if delegated:
        return reservation, events
    if reservation.status is ReservationStatus.RESERVED:
        return reservation, [Event(PART_RESERVED, order_id, {"partition": part}, home)]
    failed = {"partition": part, "reason": events[0].data["reason"], "sku": events[0].data["sku"]}
    return reservation, [Event(PART_FAILED, order_id, failed, home)]


def part_answered(dispatched: Dispatch, partition: int, failure: tuple[str, str] | None) -> tuple[bool, list[Event]]:
    """A part's answer at the home: the saga hears once every part reserved, or at the first that
    could not, and then every other part releases. (changed, events)."""
    if dispatched.status is not DispatchStatus.PENDING or partition not in dispatched.parts:
        return False, []  # failed or released already: the releases sent then cover this part too
    order_id = dispatched.order_id
    if failure is not None:
        reason, sku = failure
        dispatched.status = DispatchStatus.FAILED
        dispatched.reason = reason
        releases = _to_parts(dispatched, RELEASE_REQUESTED, reason, skip=partition)
        return True, [Event(EventType.INVENTORY_FAILED, order_id, {"reason": reason, "sku": sku}), *releases]
    dispatched.reserved.add(partition)
    if dispatched.reserved != set(dispatched.parts):
        return True, []
    dispatched.status = DispatchStatus.RESERVED
    every_line = {sku: qty for lines in dispatched.parts.values() for sku, qty in lines.items()}
    return True, [Event(EventType.INVENTORY_RESERVED, order_id, {"items": _items(every_line)})]


def dispatch_confirmed(dispatched: Dispatch) -> list[Event]:
    """The order was confirmed: every part commits what it reserved (a part that reserved nothing ignores it).

    Committed already, the commits go out again: the inbox drops a redelivery, so this is a
    repair (``saga-audit --repair`` re-sends orders.confirmed), and a part commits only once."""
    if dispatched.status not in (DispatchStatus.RESERVED, DispatchStatus.DELEGATED, DispatchStatus.COMMITTED):
        return []
    dispatched.status = DispatchStatus.COMMITTED
    return _to_parts(dispatched, COMMIT_REQUESTED, None)


def dispatch_cancelled(dispatched: Dispatch, reason: str) -> list[Event]:
    """The order was cancelled: every part releases what it holds, or records that it must never reserve.

    Released already, the releases go out again (a repair, as for ``dispatch_confirmed``)."""
    if dispatched.status is DispatchStatus.RELEASED:
        return _to_parts(dispatched, RELEASE_REQUESTED, dispatched.reason or reason)
    if dispatched.status not in (DispatchStatus.PENDING, DispatchStatus.RESERVED, DispatchStatus.DELEGATED):
        return []
    dispatched.status = DispatchStatus.RELEASED
    dispatched.reason = reason
    return _to_parts(dispatched, RELEASE_REQUESTED, reason)


def _to_parts(dispatched: Dispatch, event_type: str, reason: str | None, skip: int | None = None) -> list[Event]:
    """A commit or release for every part: naming the order only, as a part acts on the lines it
    reserved (or, not having reserved yet, keeps the barrier): the steps' bytes are what the
    server's work grows with (docs/performance.md)."""
    events = []
    for partition in dispatched.parts:
        if partition == skip:
            continue
        data: dict[str, object] = {}
        if reason is not None:
            data["reason"] = reason
        events.append(Event(event_type, dispatched.order_id, data, partition))
    return events
