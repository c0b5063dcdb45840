"""SQL for stock, order lines and reservations; no business rules."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import aiosqlite

from inventory_svc.domain import Reservation, ReservationStatus, Stock

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku       TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved  INTEGER NOT NULL CHECK (reserved >= 0)
) WITHOUT ROWID;
-- What each order asks for, learnt from orders.created: payments.completed does not carry items.
CREATE TABLE IF NOT EXISTS order_lines (
    order_id TEXT PRIMARY KEY,
    lines    TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    order_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    lines      TEXT NOT NULL,
    reason     TEXT,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS restocks (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    sku      TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS restocks_by_sku ON restocks(sku);
"""


async def get_stock(conn: aiosqlite.Connection, skus: Iterable[str]) -> dict[str, Stock | None]:
    wanted = list(dict.fromkeys(skus))
    found: dict[str, Stock | None] = dict.fromkeys(wanted)
    if wanted:
        marks = ",".join("?" * len(wanted))
        async with conn.execute(f"SELECT * FROM stock WHERE sku IN ({marks})", wanted) as cursor:
            for row in await cursor.fetchall():
                found[row["sku"]] = Stock(row["sku"], row["available"], row["reserved"])
    return found


async def save_stock(tx: aiosqlite.Connection, items: Iterable[Stock]) -> None:
    await tx.executemany(
        "INSERT INTO stock(sku, available, reserved) VALUES (?, ?, ?) ON CONFLICT(sku) DO UPDATE SET"
        " available = excluded.available, reserved = excluded.reserved",
        [(s.sku, s.available, s.reserved) for s in items],
    )


async def add_order_lines(tx: aiosqlite.Connection, order_id: str, lines: dict[str, int]) -> None:
    await tx.execute("INSERT OR IGNORE INTO order_lines(order_id, lines) VALUES (?, ?)", (order_id, json.dumps(lines)))


async def get_order_lines(conn: aiosqlite.Connection, order_id: str) -> dict[str, int] | None:
    async with conn.execute("SELECT lines FROM order_lines WHERE order_id = ?", (order_id,)) as cursor:
        row = await cursor.fetchone()
    return dict(json.loads(row["lines"])) if row else None


async def get_reservation(conn: aiosqlite.Connection, order_id: str) -> Reservation | None:
    async with conn.execute("SELECT * FROM reservations WHERE order_id = ?", (order_id,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None
    return Reservation(row["order_id"], ReservationStatus(row["status"]), dict(json.loads(row["lines"])), row["reason"])


async def save_reservation(tx: aiosqlite.Connection, reservation: Reservation) -> None:
    await tx.execute(
        "INSERT INTO reservations(order_id, status, lines, reason, updated_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(order_id) DO UPDATE SET status = excluded.status, reason = excluded.reason,"
        " updated_at = excluded.updated_at",
        (
            reservation.order_id,
            reservation.status.value,
            json.dumps(reservation.lines),
            reservation.reason,
            time.time(),
        ),
    )


async def record_restock(tx: aiosqlite.Connection, sku: str, quantity: int) -> None:
    await tx.execute("INSERT INTO restocks(sku, quantity, at) VALUES (?, ?, ?)", (sku, quantity, time.time()))
