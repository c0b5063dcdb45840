"""Stores of earlier versions open as the current ones: payment_svc's from before try-confirm-
cancel (a charge is held, a refund a release) and inventory_svc's from before payments were
matched and restocks keyed, and order_svc's from before tracing."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from inventory_svc import repository as inventory_repository
from order_svc import repository as order_repository
from payment_svc import repository
from payment_svc.domain import PaymentStatus
from shared import outbox
from shared.jetstream import MSG_ID_HEADER
from shared.store import Store


async def test_an_old_store_is_migrated_once_and_a_new_one_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "payment_svc.sqlite3"
    with sqlite3.connect(db) as old:
        old.executescript(
            "CREATE TABLE deposits (id INTEGER PRIMARY KEY AUTOINCREMENT, customer_id TEXT NOT NULL,"
            " amount_cents INTEGER NOT NULL, at REAL NOT NULL);"
            "CREATE TABLE payments (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,"
            " amount_cents INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT, updated_at REAL NOT NULL)"
            " WITHOUT ROWID;"
            "INSERT INTO payments VALUES ('o-1', 'alice', 500, 'CHARGED', NULL, 0),"
            " ('o-2', 'alice', 300, 'REFUNDED', 'out_of_stock', 0), ('o-3', '', 0, 'CANCELLED', 'requested', 0);"
        )
    for _ in range(2):  # the second open finds nothing to do
        store = await Store.open(db, repository.SCHEMA, migrate=repository.migrate)
        payments = {
            o: await store.read(functools.partial(repository.get_payment, order_id=o)) for o in ("o-1", "o-2", "o-3")
        }
        await store.close()
        assert {o: (p.status, p.refused_cancel) for o, p in payments.items() if p} == {
            "o-1": (PaymentStatus.HELD, None),
            "o-2": (PaymentStatus.RELEASED, None),
            "o-3": (PaymentStatus.CANCELLED, None),
        }
    fresh = await Store.open(tmp_path / "new.sqlite3", repository.SCHEMA, migrate=repository.migrate)
    assert await fresh.read(lambda c: repository.get_payment(c, "o-1")) is None
    await fresh.close()


async def test_an_old_inventory_store_opens_with_its_lines_unchecked_and_its_restocks_unkeyed(tmp_path: Path) -> None:
    db = tmp_path / "inventory_svc.sqlite3"
    with sqlite3.connect(db) as old:
        old.executescript(
            "CREATE TABLE order_lines (order_id TEXT PRIMARY KEY, lines TEXT NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE early_payments (order_id TEXT PRIMARY KEY, received_at REAL NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE restocks (id INTEGER PRIMARY KEY AUTOINCREMENT, sku TEXT NOT NULL,"
            " quantity INTEGER NOT NULL, at REAL NOT NULL);"
            "INSERT INTO order_lines VALUES ('o-1', '{\"w\": 2}'); INSERT INTO early_payments VALUES ('o-2', 0);"
            "INSERT INTO restocks(sku, quantity, at) VALUES ('w', 5, 0);"
        )
    store = await Store.open(db, inventory_repository.SCHEMA, migrate=inventory_repository.migrate)
    try:
        assert await store.read(functools.partial(inventory_repository.get_order_lines, order_id="o-1")) == (
            {"w": 2},
            None,  # learnt before the terms were kept: its payment is reserved unchecked
        )
        assert await store.read(functools.partial(inventory_repository.restock_of_request, request_id="r-1")) is None
        await store.run(functools.partial(inventory_repository.record_restock, sku="w", quantity=1, request_id="r-1"))
        assert await store.read(functools.partial(inventory_repository.restock_of_request, request_id="r-1")) == (
            "w",
            1,
        )
        assert await store.run(functools.partial(inventory_repository.take_early_payment, order_id="o-2")) == (
            True,
            None,
        )
    finally:
        await store.close()


async def test_an_order_store_from_before_tracing_opens_with_its_rows_untraced(tmp_path: Path) -> None:
    db = tmp_path / "order_svc.sqlite3"
    with sqlite3.connect(db) as old:
        old.executescript(
            "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, items TEXT NOT NULL,"
            " total_cents INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT, created_at REAL NOT NULL,"
            " updated_at REAL NOT NULL, request_event_id TEXT NOT NULL) WITHOUT ROWID;"
            "INSERT INTO orders VALUES ('o-1', 'alice', '[]', 0, 'PENDING', NULL, 0, 0, 'e-1');"
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,"
            " subject TEXT NOT NULL, payload BLOB NOT NULL, created_at REAL NOT NULL,"
            " resends INTEGER NOT NULL DEFAULT 0);"
            "INSERT INTO outbox(event_id, subject, payload, created_at)"
            " VALUES ('e-2', 'orders.created.o-1', x'7b7d', 0);"
            "CREATE TABLE outbox_relay (singleton INTEGER PRIMARY KEY CHECK (singleton = 1),"
            " published_through INTEGER NOT NULL); INSERT INTO outbox_relay VALUES (1, 0);"
        )
    for _ in range(2):  # the second open finds nothing to do
        store = await Store.open(db, order_repository.SCHEMA, migrate=order_repository.migrate)
        try:
            assert await store.read(lambda c: order_repository.traceparent_of(c, "o-1")) is None
            _, [row] = await store.read(lambda c: outbox._rows_after(c, None, 10))
            assert (row.event_id, row.traceparent, row.message[2]) == ("e-2", None, {MSG_ID_HEADER: "e-2"})
        finally:
            await store.close()
