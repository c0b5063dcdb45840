"""Flows that need a service to be away for a while, each on a system of its own."""

from __future__ import annotations

from pathlib import Path

import nats

from shared.ops import client
from shared.ops.harness import System, consumers_idle
from tests.conftest import last_event, poll, subject_count, unique
from tests.e2e.conftest import new_customer, new_sku, settled_balance, settled_stock


async def test_cancel_while_pending_refunds_and_a_late_reservation_leaves_it_cancelled(tmp_path: Path) -> None:
    """inventory_svc is down, so the order waits PENDING after the charge; the customer cancels."""
    system = System(tmp_path).start(names=("order_svc", "payment_svc"))
    try:
        nc = await nats.connect(system.url)
        js = nc.jetstream()
        customer, order_id = await new_customer(nc, 5_000), unique("o")
        await client.place_order(js, order_id, customer, [{"sku": "later", "quantity": 2, "unit_price_cents": 1000}])
        await settled_balance(nc, customer, 3_000)  # charged
        assert (await client.get_order(nc, order_id))["status"] == "PENDING"  # type: ignore[index]

        await client.cancel_order(js, order_id)
        order = await client.wait_until_terminal(nc, order_id)
        assert (order["status"], order["reason"]) == ("CANCELLED", "requested")
        await settled_balance(nc, customer, 5_000)  # refunded

        # inventory_svc comes back: whichever of payments.completed / orders.cancelled it sees
        # first, it must end holding nothing, and the order must stay cancelled.
        system.add_service("inventory_svc").start()
        sku_reply = await client.restock(nc, "later", 10)
        assert sku_reply["sku"] == "later"
        await poll(lambda: consumers_idle(js, ("INVENTORY", "ORDERS")), lambda idle: idle)
        await settled_stock(nc, "later", 10)
        assert (await client.get_order(nc, order_id))["status"] == "CANCELLED"  # type: ignore[index]
        assert await subject_count(js, "ORDERS", f"orders.confirmed.{order_id}") == 0
        assert await subject_count(js, "ORDERS", f"orders.cancelled.{order_id}") == 1
        await settled_balance(nc, customer, 5_000)
        await nc.close()
    finally:
        system.stop()


async def test_order_times_out_and_a_late_charge_is_refunded(tmp_path: Path) -> None:
    """payment_svc is down past ORDER_TIMEOUT_S: the order is cancelled "timeout". When payment_svc
    comes back it reads orders.created (charges) then orders.cancelled (refunds): nothing is kept."""
    system = System(tmp_path, service_env={"ORDER_TIMEOUT_S": "1"}).start()
    try:
        nc = await nats.connect(system.url)
        js = nc.jetstream()
        customer, sku, order_id = await new_customer(nc, 10_000), await new_sku(nc, 4), unique("o")
        assert system.services["payment_svc"].stop() == 0

        await client.place_order(js, order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 800}])
        order = await client.wait_until_terminal(nc, order_id, timeout=15)
        assert (order["status"], order["reason"]) == ("CANCELLED", "timeout")
        cancelled = await last_event(js, "ORDERS", f"orders.cancelled.{order_id}")
        assert cancelled["data"] == {"reason": "timeout"}
        assert cancelled["causation_id"] is None

        system.services["payment_svc"].start()
        await poll(lambda: subject_count(js, "PAYMENTS", f"payments.refunded.{order_id}"), lambda n: n == 1)
        assert await subject_count(js, "PAYMENTS", f"payments.completed.{order_id}") == 1
        await settled_balance(nc, customer, 10_000)
        await poll(lambda: consumers_idle(js, ("PAYMENTS", "ORDERS")), lambda idle: idle)
        await settled_stock(nc, sku, 4)
        assert (await client.get_order(nc, order_id))["status"] == "CANCELLED"  # type: ignore[index]
        assert await subject_count(js, "ORDERS", f"orders.confirmed.{order_id}") == 0
        await nc.close()
    finally:
        system.stop()
