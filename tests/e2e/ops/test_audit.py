"""saga-audit against the real processes: clean after a run, and it reports and heals
discrepancies created on purpose in the services' stores."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from shared.ops import client
from shared.ops.harness import System, consumers_idle
from tests.conftest import poll, unique
from tests.e2e.conftest import new_customer, new_sku, settled_balance, settled_stock


def saga_audit(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "saga-audit"),
            "--nats-url",
            system.url,
            "--page-size",
            "2",
            "--confirm-after",
            "0.5",
            "--settle",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def holding(system: System, service: str, sql: str, *args: str) -> Path:
    """The one store file of ``service`` (its only one, or one of its partitions') where ``sql`` finds a row."""
    found = []
    for db in system.services[service].db_paths:
        with sqlite3.connect(db, timeout=10) as conn:
            if conn.execute(sql, args).fetchone():
                found.append(db)
    assert len(found) == 1, (service, sql, args, found)
    return found[0]


def inbox_delete(system: System, service: str, order_id: str, event_type: str) -> None:
    sql = "SELECT 1 FROM inbox WHERE order_id = ? AND event_type = ?"
    with sqlite3.connect(holding(system, service, sql, order_id, event_type), timeout=10) as conn:
        deleted = conn.execute("DELETE FROM inbox WHERE order_id = ? AND event_type = ?", (order_id, event_type))
        assert deleted.rowcount == 1


@pytest.mark.parametrize("partitions", [1, 4], ids=["one_partition", "four_partitions"])
async def test_audit_is_clean_then_reports_and_repairs_discrepancies_made_on_purpose(
    tmp_path: Path, partitions: int
) -> None:
    # Partitioned, a row lives in the partition of its key: the reservation with its sku, the
    # payment with its customer, the inbox entry of an order's event in the order's partition.
    system = System(tmp_path, service_env={"PARTITIONS": str(partitions)}).start()
    try:
        nc = await nats.connect(system.url)
        js = nc.jetstream()
        customer, sku = await new_customer(nc, 10_000), await new_sku(nc, 5)
        confirmed, refunded, poor = unique("o"), unique("o"), unique("o")
        await client.place_order(js, confirmed, customer, [{"sku": sku, "quantity": 2, "unit_price_cents": 1000}])
        await client.place_order(js, refunded, customer, [{"sku": sku, "quantity": 9, "unit_price_cents": 100}])
        await client.place_order(js, poor, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 99_999}])
        for order_id in (confirmed, refunded, poor):
            await client.wait_until_terminal(nc, order_id)
        await settled_balance(nc, customer, 8_000)
        await settled_stock(nc, sku, 3)
        await poll(lambda: consumers_idle(js), lambda idle: idle)

        clean = saga_audit(system)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "audited 3 orders" in clean.stdout and "clean" in clean.stdout

        # 1. inventory "lost" the commit of a confirmed order: stock back in reserved.
        inventory_db = holding(system, "inventory_svc", "SELECT 1 FROM reservations WHERE order_id = ?", confirmed)
        with sqlite3.connect(inventory_db, timeout=10) as db:
            db.execute("UPDATE reservations SET status = 'RESERVED' WHERE order_id = ?", (confirmed,))
            db.execute("UPDATE stock SET reserved = reserved + 2 WHERE sku = ?", (sku,))
        inbox_delete(system, "inventory_svc", confirmed, "orders.confirmed")
        # 2. payment "lost" the refund of a cancelled order.
        payment_db = holding(system, "payment_svc", "SELECT 1 FROM payments WHERE order_id = ?", refunded)
        with sqlite3.connect(payment_db, timeout=10) as db:
            db.execute("UPDATE payments SET status = 'HELD', reason = NULL WHERE order_id = ?", (refunded,))
            db.execute("UPDATE accounts SET balance_cents = balance_cents - 900 WHERE customer_id = ?", (customer,))
        if partitions == 1:
            # Partitioned, payment_svc reads no orders.cancelled: its inbox holds the batch order_svc
            # sent it, and the repair sends the release again in a batch of its own.
            inbox_delete(system, "payment_svc", refunded, "orders.cancelled")

        found = saga_audit(system, "--json")
        assert found.returncode == 1, found.stdout + found.stderr
        report = json.loads(found.stdout)
        kinds = {(d["kind"], d["key"]) for d in report["discrepancies"]}
        assert {("reservation_not_committed", confirmed), ("cancelled_but_charged", refunded)} <= kinds
        assert report["summary"]["orders"] == 3

        healed = saga_audit(system, "--repair")
        assert healed.returncode == 0, healed.stdout + healed.stderr
        assert f"repair: {confirmed}: re-sent orders.confirmed" in healed.stdout
        assert f"repair: {refunded}: re-sent orders.cancelled" in healed.stdout
        assert healed.stdout.rstrip().endswith(
            "clean: every order, charge, reservation, balance and stock level agrees"
        )
        await settled_balance(nc, customer, 8_000)
        await settled_stock(nc, sku, 3)

        # 3. What re-sending cannot heal is reported, and the exit status says so.
        with sqlite3.connect(payment_db, timeout=10) as db:
            db.execute(
                "INSERT INTO payments(order_id, customer_id, amount_cents, status, updated_at)"
                " VALUES ('ghost-order', ?, 5, 'HELD', 0)",
                (customer,),
            )
        unhealable = saga_audit(system, "--repair")
        assert unhealable.returncode == 1
        assert "charge_for_unknown_order" in unhealable.stdout
        assert "nothing here can be healed" in unhealable.stdout
        await nc.close()
    finally:
        system.stop()
