"""Stream names and subjects: the single source of truth for the public contract.

Every saga event travels on ``<domain>.<event>.<order_id>``. One order's whole history is
``*.*.<order_id>``.
"""

from __future__ import annotations

import re
from enum import StrEnum

ORDER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Stream(StrEnum):
    """The four JetStream streams and the subjects they capture."""

    ORDERS = "ORDERS"
    PAYMENTS = "PAYMENTS"
    INVENTORY = "INVENTORY"
    DLQ = "DLQ"
    PAYMENT_STEPS = "PAYMENT_STEPS"
    """payment_svc's own sub-steps between its partitions (only when partitioned: docs/partitions.md)."""
    INVENTORY_STEPS = "INVENTORY_STEPS"
    """inventory_svc's own sub-steps between its partitions (only when partitioned)."""


STREAM_SUBJECTS: dict[Stream, str] = {
    Stream.ORDERS: "orders.>",
    Stream.PAYMENTS: "payments.>",
    Stream.INVENTORY: "inventory.>",
    Stream.DLQ: "dlq.>",
    Stream.PAYMENT_STEPS: "part.*.payment_svc.>",
    Stream.INVENTORY_STEPS: "part.*.inventory_svc.>",
}

PUBLIC_STREAMS = (Stream.ORDERS, Stream.PAYMENTS, Stream.INVENTORY)
"""The streams of the saga's events, which a partitioned deployment renames by order_id."""

STEP_STREAMS = (Stream.PAYMENT_STEPS, Stream.INVENTORY_STEPS)
"""The streams of the services' sub-steps between partitions: made only when partitioned."""


class EventType(StrEnum):
    """Every event type of the saga; the value is the subject's first two tokens."""

    ORDERS_REQUESTED = "orders.requested"
    ORDERS_CANCEL_REQUESTED = "orders.cancel_requested"
    ORDERS_CREATED = "orders.created"
    ORDERS_REJECTED = "orders.rejected"
    ORDERS_CONFIRMED = "orders.confirmed"
    ORDERS_CANCELLED = "orders.cancelled"
    PAYMENTS_COMPLETED = "payments.completed"
    PAYMENTS_FAILED = "payments.failed"
    PAYMENTS_REFUNDED = "payments.refunded"
    INVENTORY_RESERVED = "inventory.reserved"
    INVENTORY_FAILED = "inventory.failed"
    INVENTORY_RELEASED = "inventory.released"


def event_subject(event_type: str, order_id: str) -> str:
    """The subject an event of ``event_type`` about ``order_id`` is published on."""
    return f"{event_type}.{order_id}"


def consumer_filters(event_type: str) -> list[str]:
    """Filters that catch an event type on every subject shape, valid or not.

    A consumer listens on ``<type>.>`` and on the bare ``<type>`` so that a message with a
    missing, extra or invalid order_id token still reaches it and is dead-lettered with a
    reason, instead of sitting in the stream unseen.
    """
    return [event_type, f"{event_type}.>"]


def dlq_subject(service: str) -> str:
    """Where a service dead-letters what it can never process."""
    return f"dlq.{service}"


# Request/reply API subjects (NATS micro services).
API_ORDERS_GET = "api.orders.get"
API_ORDERS_LIST = "api.orders.list"
API_PAYMENTS_LIST = "api.payments.list"
API_PAYMENTS_ACCOUNTS = "api.payments.accounts"
API_INVENTORY_RESERVATIONS = "api.inventory.reservations"
API_INVENTORY_SKUS = "api.inventory.skus"
API_PAYMENTS_DEPOSIT = "api.payments.deposit"
API_PAYMENTS_ACCOUNT = "api.payments.account"
API_INVENTORY_RESTOCK = "api.inventory.restock"
API_INVENTORY_STOCK = "api.inventory.stock"
