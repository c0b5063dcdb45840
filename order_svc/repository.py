"""SQL for orders; no business rules."""

from __future__ import annotations

import sqlite3
import time

from pydantic import TypeAdapter

from order_svc.domain import Order, OrderStatus
from shared.contract import OrderItem
from shared.store import add_missing_columns

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id    TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    items       TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    request_event_id TEXT NOT NULL,
    -- The span of its orders.requested handling, when traced (shared.tracing): what happens to
    -- the order without a message (a timeout) joins its trace from here.
    traceparent TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS orders_pending_by_age ON orders(created_at) WHERE status = 'PENDING';
"""


ITEMS = TypeAdapter(list[OrderItem])
"""An order's items as the JSON column holds them: one pass each way, read on every event."""


def from_row(row: sqlite3.Row) -> Order:
    return Order(
        order_id=row["order_id"],
        customer_id=row["customer_id"],
        items=ITEMS.validate_json(row["items"]),
        total_cents=row["total_cents"],
        status=OrderStatus(row["status"]),
        created_at=row["created_at"],
        request_event_id=row["request_event_id"],
        reason=row["reason"],
    )


def get(conn: sqlite3.Connection, order_id: str) -> Order | None:
    row = conn.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    return from_row(row) if row else None


def migrate(tx: sqlite3.Connection) -> None:
    """An orders table from before tracing gets its (empty) ``traceparent`` column."""
    add_missing_columns(tx, "orders", "traceparent TEXT")


def add(tx: sqlite3.Connection, order: Order, traceparent: str | None = None) -> None:
    tx.execute(
        "INSERT INTO orders(order_id, customer_id, items, total_cents, status, reason, created_at, updated_at,"
        " request_event_id, traceparent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            order.order_id,
            order.customer_id,
            ITEMS.dump_json(order.items).decode(),
            order.total_cents,
            order.status.value,
            order.reason,
            order.created_at,
            time.time(),
            order.request_event_id,
            traceparent,
        ),
    )


def traceparent_of(conn: sqlite3.Connection, order_id: str) -> str | None:
    """The span the order was placed in, if it was traced."""
    row = conn.execute("SELECT traceparent FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    return row[0] if row else None


def save_status(tx: sqlite3.Connection, order: Order) -> None:
    tx.execute(
        "UPDATE orders SET status = ?, reason = ?, updated_at = ? WHERE order_id = ?",
        (order.status.value, order.reason, time.time(), order.order_id),
    )


def any_pending_older_than(conn: sqlite3.Connection, cutoff: float) -> bool:
    row = conn.execute(
        "SELECT 1 FROM orders WHERE status = 'PENDING' AND created_at <= ? LIMIT 1", (cutoff,)
    ).fetchone()
    return row is not None


def pending_older_than(conn: sqlite3.Connection, cutoff: float, limit: int) -> list[Order]:
    return [
        from_row(row)
        for row in conn.execute(
            "SELECT * FROM orders WHERE status = 'PENDING' AND created_at <= ? ORDER BY created_at LIMIT ?",
            (cutoff, limit),
        ).fetchall()
    ]
