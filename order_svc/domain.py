"""Orders: pure and synchronous. Each decision changes the order and returns the events it causes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.contract import (
    CAPTURE_REQUESTED,
    CHARGE_REQUESTED,
    RELEASE_REQUESTED,
    OrderItem,
    OrderRequested,
    quantities_per_sku,
)
from shared.envelope import Event
from shared.partitions import Partitioning
from shared.subjects import EventType

DUPLICATE_ORDER_ID = "duplicate_order_id"
CANCEL_REQUESTED = "requested"
TIMEOUT = "timeout"


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


@dataclass
class Order:
    order_id: str
    customer_id: str
    items: list[OrderItem]
    total_cents: int
    status: OrderStatus
    created_at: float
    request_event_id: str
    """The event_id of the orders.requested that created this order."""
    reason: str | None = None

    def confirm(self) -> list[Event]:
        """Stock is reserved: a PENDING order is confirmed. A cancelled one stays cancelled."""
        if self.status is not OrderStatus.PENDING:
            return []
        self.status = OrderStatus.CONFIRMED
        return [Event(EventType.ORDERS_CONFIRMED, self.order_id, {"total_cents": self.total_cents})]

    def reservation_mismatch(self, reserved: list[tuple[str, int]]) -> str | None:
        """Why ``reserved`` (sku, quantity) is not this order's reservation, or None if it is: the
        order is confirmed only on the stock it asked for, summed per sku as inventory keeps it."""
        wanted = quantities_per_sku((item.sku, item.quantity) for item in self.items)
        got = quantities_per_sku(reserved)
        if got == wanted:
            return None
        return f"reserved {dict(sorted(got.items()))}, but the order is for {dict(sorted(wanted.items()))}"

    def cancel(self, reason: str) -> list[Event]:
        """Cancel a PENDING order; a confirmed or cancelled order does not change."""
        if self.status is not OrderStatus.PENDING:
            return []
        self.status = OrderStatus.CANCELLED
        self.reason = reason
        return [Event(EventType.ORDERS_CANCELLED, self.order_id, {"reason": reason})]

    def timed_out(self, now: float, timeout_s: float) -> bool:
        return self.status is OrderStatus.PENDING and now - self.created_at >= timeout_s


def place_order(
    order_id: str, request_event_id: str, request: OrderRequested, existing: Order | None, now: float
) -> tuple[Order | None, list[Event]]:
    """Create a PENDING order, or reject a request for an order_id that already exists.

    The very request that created the order, arriving again after the inbox forgot it, is
    recognised by its event_id and changes nothing: it is not a second request.
    """
    if existing is not None:
        if existing.request_event_id == request_event_id:
            return None, []
        return None, [Event(EventType.ORDERS_REJECTED, order_id, {"reason": DUPLICATE_ORDER_ID})]
    total = sum(item.quantity * item.unit_price_cents for item in request.items)
    order = Order(
        order_id=order_id,
        customer_id=request.customer_id,
        items=list(request.items),
        total_cents=total,
        status=OrderStatus.PENDING,
        created_at=now,
        request_event_id=request_event_id,
    )
    created = {
        "customer_id": order.customer_id,
        "items": [item.model_dump() for item in order.items],
        "total_cents": total,
    }
    return order, [Event(EventType.ORDERS_CREATED, order_id, created)]


def with_payment_inputs(order: Order, events: list[Event], partitioning: Partitioning) -> list[Event]:
    """``events``, and what payment_svc's partition of the order's customer must receive of them."""
    return [*events, *payment_inputs(order, events, partitioning)]


def payment_inputs(order: Order, events: list[Event], partitioning: Partitioning) -> list[Event]:
    """Partitioned, what payment_svc's partition of the order's customer must receive of
    ``events``: the charge of ``orders.created``, the capture of ``orders.confirmed``, the
    release of ``orders.cancelled`` (with the order's reason: a cancelled order keeps the one it
    was cancelled with). Unpartitioned, none: payment_svc reads those events themselves."""
    if not partitioning.partitioned:
        return []
    partition = partitioning.of(order.customer_id)
    inputs = []
    for event in events:
        match event.type:
            case EventType.ORDERS_CREATED:
                data = {"customer_id": order.customer_id, "amount_cents": order.total_cents}
                inputs.append(Event(CHARGE_REQUESTED, order.order_id, data, partition))
            case EventType.ORDERS_CONFIRMED:
                inputs.append(Event(CAPTURE_REQUESTED, order.order_id, {"customer_id": order.customer_id}, partition))
            case EventType.ORDERS_CANCELLED:
                data = {"customer_id": order.customer_id, "reason": order.reason}
                inputs.append(Event(RELEASE_REQUESTED, order.order_id, data, partition))
    return inputs
