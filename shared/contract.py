"""The ``data`` of every saga event: the public contract, as pydantic models (docs/events.md).

Bounds beyond the contract's ``>= 0`` / ``>= 1`` keep every sum inside SQLite's 64-bit
integers: 100 items x 10^6 units x 10^10 cents stays below 2^63.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field

from shared.envelope import EventData

MAX_QUANTITY = 1_000_000
MAX_UNIT_PRICE_CENTS = 10_000_000_000
MAX_ITEMS = 100

Sku = Annotated[str, Field(min_length=1, max_length=128)]
CustomerId = Annotated[str, Field(min_length=1, max_length=128)]
Cents = Annotated[int, Field(ge=0)]
Reason = Annotated[str, Field(min_length=1, max_length=256)]


class OrderItem(EventData):
    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY)]
    unit_price_cents: Annotated[int, Field(ge=0, le=MAX_UNIT_PRICE_CENTS)]


class StockItem(EventData):
    """A quantity of one sku, as reserved or released."""

    sku: Sku
    quantity: Annotated[int, Field(ge=1)]


# orders.*
class OrderRequested(EventData):
    customer_id: CustomerId
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=MAX_ITEMS)]


class OrderCancelRequested(EventData):
    pass


class OrderCreated(EventData):
    customer_id: CustomerId
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=MAX_ITEMS)]
    total_cents: Cents


class OrderRejected(EventData):
    reason: Reason


class OrderConfirmed(EventData):
    total_cents: Cents


class OrderCancelled(EventData):
    reason: Reason


# Partitioned only: what payment_svc's partition of a customer receives of that customer's orders.
# order_svc writes them, batched per partition (shared.steps), in the transaction that decides the
# order's orders.created, orders.confirmed or orders.cancelled: the customer is in the order's
# state, not in those events' subjects, and this way no partition of payment_svc has to look it up
# and hand it on (docs/partitions.md).
CHARGE_REQUESTED = "payment_svc.charge_requested"
CAPTURE_REQUESTED = "payment_svc.capture_requested"
RELEASE_REQUESTED = "payment_svc.release_requested"


class ChargeRequested(EventData):
    customer_id: CustomerId
    amount_cents: Cents


class CaptureRequested(EventData):
    customer_id: CustomerId


class ReleaseRequested(EventData):
    customer_id: CustomerId
    reason: Reason


# payments.*
class PaymentCompleted(EventData):
    customer_id: CustomerId
    amount_cents: Cents


class PaymentFailed(EventData):
    reason: Reason


class PaymentRefunded(EventData):
    amount_cents: Cents
    reason: Reason


# inventory.*
class InventoryReserved(EventData):
    items: list[StockItem]


class InventoryFailed(EventData):
    reason: Reason
    sku: Sku


class InventoryReleased(EventData):
    items: list[StockItem]


def quantities_per_sku(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """An order's quantities summed per sku, in the order the skus first appear: how inventory
    keeps an order's lines and reports its reservation, and how order_svc checks that report."""
    summed: dict[str, int] = {}
    for sku, quantity in lines:
        summed[sku] = summed.get(sku, 0) + quantity
    return summed
