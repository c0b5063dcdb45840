"""NATS killed with SIGKILL and brought back on the same store: nothing lost, nothing twice."""

from __future__ import annotations

from pathlib import Path

import nats

from shared.jetstream import ACK_WAIT_S
from shared.ops import client
from shared.ops.harness import System, consumers_idle
from tests.conftest import last_event, poll, subject_count, sync_probe, unique
from tests.e2e.conftest import new_customer, new_sku, settled_balance, settled_stock


def _outbox_pending(db: Path, subject: str = "%") -> int:
    import sqlite3

    sql = "SELECT count(*) FROM outbox WHERE id > (SELECT published_through FROM outbox_relay) AND subject LIKE ?"
    with sqlite3.connect(db) as conn:
        return int(conn.execute(sql, (subject,)).fetchone()[0])


async def test_events_emitted_while_nats_is_down_wait_in_the_outbox_and_go_out_on_reconnect(tmp_path: Path) -> None:
    # Long enough that the order cannot time out between being seen PENDING and the kill.
    system = System(tmp_path, service_env={"ORDER_TIMEOUT_S": "3"}).start()
    assert system.server is not None
    nc = await nats.connect(system.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        customer, sku = await new_customer(nc, 10_000), await new_sku(nc, 5)
        assert system.services["payment_svc"].stop() == 0
        order_id = unique("o")
        await client.place_order(js, order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 300}])
        await poll(lambda: client.get_order(nc, order_id), lambda o: o is not None and o["status"] == "PENDING")

        system.server.kill()  # SIGKILL: no goodbye to anyone
        # The timeout fires while NATS is away: its orders.cancelled waits in the outbox.
        order_db = system.services["order_svc"].db_path
        cancelled_subject = f"orders.cancelled.{order_id}"
        await poll(sync_probe(lambda: _outbox_pending(order_db, cancelled_subject)), lambda n: n == 1, timeout=15)
        for name in ("order_svc", "inventory_svc"):
            proc = system.services[name].proc
            assert proc is not None and proc.poll() is None, f"{name} must stay up while NATS is down"

        system.server.start()  # same port, same store
        system.services["payment_svc"].start()
        await poll(lambda: subject_count(js, "ORDERS", cancelled_subject), lambda n: n == 1, timeout=30)
        cancelled = await last_event(js, "ORDERS", cancelled_subject)
        assert cancelled["data"] == {"reason": "timeout"}
        await poll(sync_probe(lambda: _outbox_pending(order_db)), lambda n: n == 0)

        # payment_svc charged on orders.created, then refunded on orders.cancelled.
        await settled_balance(nc, customer, 10_000)
        await settled_stock(nc, sku, 5)
        # And the system still works end to end after the outage.
        second = unique("o")
        await client.place_order(js, second, customer, [{"sku": sku, "quantity": 2, "unit_price_cents": 300}])
        assert (await client.wait_until_terminal(nc, second, timeout=30))["status"] == "CONFIRMED"
        await settled_balance(nc, customer, 9_400)
        await settled_stock(nc, sku, 3)
        # A SIGKILLed server may forget acks it got just before dying (it flushes consumer
        # state lazily): it redelivers those after ack_wait, and the inboxes skip them.
        await poll(lambda: consumers_idle(js), lambda idle: idle, timeout=ACK_WAIT_S + 30)
        assert await subject_count(js, "PAYMENTS", f"payments.completed.{order_id}") == 1
        assert await subject_count(js, "PAYMENTS", f"payments.refunded.{order_id}") == 1
        assert await subject_count(js, "DLQ", "dlq.>") == 0
    finally:
        await nc.close()
        system.stop()
