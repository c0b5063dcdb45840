"""Stock: pure and synchronous. Reserve every item or none; release once; never reserve after a cancel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from shared.envelope import Event
from shared.subjects import EventType

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


def order_lines(items: list[tuple[str, int]]) -> dict[str, int]:
    """Sum an order's quantities per sku, keeping the order's first-seen sku order."""
    lines: dict[str, int] = {}
    for sku, quantity in items:
        lines[sku] = lines.get(sku, 0) + quantity
    return lines


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
