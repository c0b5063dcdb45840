"""SQL for stock, order lines and reservations; no business rules."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

from pydantic_core import from_json, to_json

from inventory_svc.domain import Dispatch, DispatchStatus, OrderTerms, Reservation, ReservationStatus, Stock
from shared.store import add_missing_columns

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku       TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved  INTEGER NOT NULL CHECK (reserved >= 0)
) WITHOUT ROWID;
-- What each order asks for, learnt from orders.created: payments.completed does not carry items.
-- Its customer and total too, which a payments.completed must match to reserve anything.
CREATE TABLE IF NOT EXISTS order_lines (
    order_id    TEXT PRIMARY KEY,
    lines       TEXT NOT NULL,
    customer_id TEXT,
    total_cents INTEGER
) WITHOUT ROWID;
-- payments.completed that came before orders.created (they travel on different streams): the
-- reservation is made when the lines arrive, instead of redelivering the payment until they do.
CREATE TABLE IF NOT EXISTS early_payments (
    order_id     TEXT PRIMARY KEY,
    received_at  REAL NOT NULL,
    customer_id  TEXT,
    amount_cents INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    order_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    lines      TEXT NOT NULL,
    reason     TEXT,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS restocks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    sku        TEXT NOT NULL,
    quantity   INTEGER NOT NULL,
    at         REAL NOT NULL,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS restocks_by_sku ON restocks(sku);
CREATE UNIQUE INDEX IF NOT EXISTS restocks_by_request ON restocks(request_id) WHERE request_id IS NOT NULL;
-- Partitioned only: orders of this partition whose skus live in other partitions (docs/partitions.md).
CREATE TABLE IF NOT EXISTS dispatches (
    order_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    parts      TEXT NOT NULL,
    reserved   TEXT NOT NULL,
    reason     TEXT,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""


def get_stock(conn: sqlite3.Connection, skus: Iterable[str]) -> dict[str, Stock | None]:
    wanted = list(dict.fromkeys(skus))
    found: dict[str, Stock | None] = dict.fromkeys(wanted)
    if wanted:
        marks = ",".join("?" * len(wanted))
        for row in conn.execute(f"SELECT * FROM stock WHERE sku IN ({marks})", wanted):
            found[row["sku"]] = Stock(row["sku"], row["available"], row["reserved"])
    return found


def save_stock(tx: sqlite3.Connection, items: Iterable[Stock]) -> None:
    tx.executemany(
        "INSERT INTO stock(sku, available, reserved) VALUES (?, ?, ?) ON CONFLICT(sku) DO UPDATE SET"
        " available = excluded.available, reserved = excluded.reserved",
        [(s.sku, s.available, s.reserved) for s in items],
    )


def migrate(tx: sqlite3.Connection) -> None:
    """Stores from before payments were matched to their orders lack the customer and amount
    columns: add them (empty on old rows, which are then reserved unchecked, as before). And
    restocks from before idempotency keys lack ``request_id``, which the schema indexes."""
    add_missing_columns(tx, "order_lines", "customer_id TEXT", "total_cents INTEGER")
    add_missing_columns(tx, "early_payments", "customer_id TEXT", "amount_cents INTEGER")
    add_missing_columns(tx, "restocks", "request_id TEXT")


def add_order_lines(tx: sqlite3.Connection, order_id: str, lines: dict[str, int], terms: OrderTerms) -> None:
    tx.execute(
        "INSERT OR IGNORE INTO order_lines(order_id, lines, customer_id, total_cents) VALUES (?, ?, ?, ?)",
        (order_id, to_json(lines).decode(), terms.customer_id, terms.amount_cents),
    )


def get_order_lines(conn: sqlite3.Connection, order_id: str) -> tuple[dict[str, int], OrderTerms | None] | None:
    """The order's lines, and what its payment must be (None for an order learnt before that was kept)."""
    row = conn.execute("SELECT * FROM order_lines WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    terms = OrderTerms(row["customer_id"], row["total_cents"]) if row["customer_id"] is not None else None
    return dict(from_json(row["lines"])), terms


def add_early_payment(tx: sqlite3.Connection, order_id: str, paid: OrderTerms) -> None:
    tx.execute(
        "INSERT OR IGNORE INTO early_payments(order_id, received_at, customer_id, amount_cents) VALUES (?, ?, ?, ?)",
        (order_id, time.time(), paid.customer_id, paid.amount_cents),
    )


def take_early_payment(tx: sqlite3.Connection, order_id: str) -> tuple[bool, OrderTerms | None]:
    """Forget the order's early payment: (whether there was one, what it paid: None if unknown,
    for a payment kept before that was)."""
    row = tx.execute("DELETE FROM early_payments WHERE order_id = ? RETURNING *", (order_id,)).fetchone()
    if row is None:
        return False, None
    return True, OrderTerms(row["customer_id"], row["amount_cents"]) if row["customer_id"] is not None else None


def get_reservation(conn: sqlite3.Connection, order_id: str) -> Reservation | None:
    row = conn.execute("SELECT * FROM reservations WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    return Reservation(row["order_id"], ReservationStatus(row["status"]), dict(from_json(row["lines"])), row["reason"])


def save_reservation(tx: sqlite3.Connection, reservation: Reservation) -> None:
    tx.execute(
        "INSERT INTO reservations(order_id, status, lines, reason, updated_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(order_id) DO UPDATE SET status = excluded.status, reason = excluded.reason,"
        " updated_at = excluded.updated_at",
        (
            reservation.order_id,
            reservation.status.value,
            to_json(reservation.lines).decode(),
            reservation.reason,
            time.time(),
        ),
    )


def record_restock(tx: sqlite3.Connection, sku: str, quantity: int, request_id: str | None) -> None:
    tx.execute(
        "INSERT INTO restocks(sku, quantity, at, request_id) VALUES (?, ?, ?, ?)",
        (sku, quantity, time.time(), request_id),
    )


def restock_of_request(conn: sqlite3.Connection, request_id: str | None) -> tuple[str, int] | None:
    """(sku, quantity) of the restock made under ``request_id``, if one was."""
    if request_id is None:
        return None
    row = conn.execute("SELECT sku, quantity FROM restocks WHERE request_id = ?", (request_id,)).fetchone()
    return (row["sku"], row["quantity"]) if row else None


def get_dispatch(conn: sqlite3.Connection, order_id: str) -> Dispatch | None:
    row = conn.execute("SELECT * FROM dispatches WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    parts = {int(k): dict(v) for k, v in from_json(row["parts"]).items()}
    return Dispatch(
        row["order_id"], DispatchStatus(row["status"]), parts, set(from_json(row["reserved"])), row["reason"]
    )


def save_dispatch(tx: sqlite3.Connection, dispatched: Dispatch) -> None:
    tx.execute(
        "INSERT INTO dispatches(order_id, status, parts, reserved, reason, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(order_id) DO UPDATE SET status = excluded.status, reserved = excluded.reserved,"
        " reason = excluded.reason, updated_at = excluded.updated_at",
        (
            dispatched.order_id,
            dispatched.status.value,
            to_json({str(k): v for k, v in dispatched.parts.items()}).decode(),
            to_json(sorted(dispatched.reserved)).decode(),
            dispatched.reason,
            time.time(),
        ),
    )
