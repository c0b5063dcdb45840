"""SQL for accounts, payments and deposits; no business rules."""

from __future__ import annotations

import time

import aiosqlite

from payment_svc.domain import Account, Payment, PaymentStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    customer_id   TEXT PRIMARY KEY,
    balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payments (
    order_id     TEXT PRIMARY KEY,
    customer_id  TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT,
    updated_at   REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deposits (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id  TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    at           REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deposits_by_customer ON deposits(customer_id);
"""


async def get_account(conn: aiosqlite.Connection, customer_id: str) -> Account | None:
    async with conn.execute("SELECT * FROM accounts WHERE customer_id = ?", (customer_id,)) as cursor:
        row = await cursor.fetchone()
    return Account(row["customer_id"], row["balance_cents"]) if row else None


async def save_account(tx: aiosqlite.Connection, account: Account) -> None:
    await tx.execute(
        "INSERT INTO accounts(customer_id, balance_cents) VALUES (?, ?)"
        " ON CONFLICT(customer_id) DO UPDATE SET balance_cents = excluded.balance_cents",
        (account.customer_id, account.balance_cents),
    )


async def get_payment(conn: aiosqlite.Connection, order_id: str) -> Payment | None:
    async with conn.execute("SELECT * FROM payments WHERE order_id = ?", (order_id,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None
    return Payment(
        row["order_id"], row["customer_id"], row["amount_cents"], PaymentStatus(row["status"]), row["reason"]
    )


async def save_payment(tx: aiosqlite.Connection, payment: Payment) -> None:
    await tx.execute(
        "INSERT INTO payments(order_id, customer_id, amount_cents, status, reason, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(order_id) DO UPDATE SET"
        " status = excluded.status, reason = excluded.reason, updated_at = excluded.updated_at",
        (
            payment.order_id,
            payment.customer_id,
            payment.amount_cents,
            payment.status.value,
            payment.reason,
            time.time(),
        ),
    )


async def record_deposit(tx: aiosqlite.Connection, customer_id: str, amount_cents: int) -> None:
    await tx.execute(
        "INSERT INTO deposits(customer_id, amount_cents, at) VALUES (?, ?, ?)", (customer_id, amount_cents, time.time())
    )
