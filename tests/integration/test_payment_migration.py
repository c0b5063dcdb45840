"""A payment_svc store from before try-confirm-cancel opens as one: a charge is held, a refund a release."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from payment_svc import repository
from payment_svc.domain import PaymentStatus
from shared.store import Store


async def test_an_old_store_is_migrated_once_and_a_new_one_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "payment_svc.sqlite3"
    with sqlite3.connect(db) as old:
        old.executescript(
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
