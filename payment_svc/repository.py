"""SQL for accounts, payments and deposits; no business rules."""

from __future__ import annotations

import sqlite3
import time

from payment_svc.domain import Account, Payment, PaymentStatus
from shared.store import add_missing_columns

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
    updated_at   REAL NOT NULL,
    refused_cancel TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deposits (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id  TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    at           REAL NOT NULL,
    request_id   TEXT
);
CREATE INDEX IF NOT EXISTS deposits_by_customer ON deposits(customer_id);
CREATE UNIQUE INDEX IF NOT EXISTS deposits_by_request ON deposits(request_id) WHERE request_id IS NOT NULL;
"""


def migrate(tx: sqlite3.Connection) -> None:
    """Before try-confirm-cancel, a charge was ``CHARGED`` and a compensation ``REFUNDED``. Such a
    file has no ``refused_cancel`` column: once, add it, and read a charge as held (a confirmed
    order's is captured by ``saga-audit --repair``, which re-sends its ``orders.confirmed``) and a
    refund as a release. A no-op on a new file and on one already migrated."""
    add_missing_columns(tx, "deposits", "request_id TEXT")  # deposits before idempotency keys
    if not add_missing_columns(tx, "payments", "refused_cancel TEXT"):
        return
    tx.execute("UPDATE payments SET status = 'HELD' WHERE status = 'CHARGED'")
    tx.execute("UPDATE payments SET status = 'RELEASED' WHERE status = 'REFUNDED'")


def get_account(conn: sqlite3.Connection, customer_id: str) -> Account | None:
    row = conn.execute("SELECT * FROM accounts WHERE customer_id = ?", (customer_id,)).fetchone()
    return Account(row["customer_id"], row["balance_cents"]) if row else None


def save_account(tx: sqlite3.Connection, account: Account) -> None:
    tx.execute(
        "INSERT INTO accounts(customer_id, balance_cents) VALUES (?, ?)"
        " ON CONFLICT(customer_id) DO UPDATE SET balance_cents = excluded.balance_cents",
        (account.customer_id, account.balance_cents),
    )


def get_payment(conn: sqlite3.Connection, order_id: str) -> Payment | None:
    row = conn.execute("SELECT * FROM payments WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return None
    return Payment(
        row["order_id"],
        row["customer_id"],
        row["amount_cents"],
        PaymentStatus(row["status"]),
        row["reason"],
        row["refused_cancel"],
    )


def save_payment(tx: sqlite3.Connection, payment: Payment) -> None:
    tx.execute(
        "INSERT INTO payments(order_id, customer_id, amount_cents, status, reason, updated_at, refused_cancel)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(order_id) DO UPDATE SET status = excluded.status,"
        " reason = excluded.reason, updated_at = excluded.updated_at, refused_cancel = excluded.refused_cancel",
        (
            payment.order_id,
            payment.customer_id,
            payment.amount_cents,
            payment.status.value,
            payment.reason,
            time.time(),
            payment.refused_cancel,
        ),
    )


def record_deposit(tx: sqlite3.Connection, customer_id: str, amount_cents: int, request_id: str | None) -> None:
    tx.execute(
        "INSERT INTO deposits(customer_id, amount_cents, at, request_id) VALUES (?, ?, ?, ?)",
        (customer_id, amount_cents, time.time(), request_id),
    )


def deposit_of_request(conn: sqlite3.Connection, request_id: str | None) -> tuple[str, int] | None:
    """(customer_id, amount_cents) of the deposit made under ``request_id``, if one was."""
    if request_id is None:
        return None
    row = conn.execute("SELECT customer_id, amount_cents FROM deposits WHERE request_id = ?", (request_id,)).fetchone()
    return (row["customer_id"], row["amount_cents"]) if row else None
