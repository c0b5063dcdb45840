"""Starting in any order, stopping on SIGTERM, and what the logs carry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nats

from shared.ops import client
from shared.ops.harness import SERVICES, NatsServer, System, consumers_idle, free_port
from tests.conftest import poll, sync_probe, unique
from tests.e2e.conftest import new_customer, new_sku, settled_stock

ITEM_PRICE = 250


async def test_services_started_before_nats_wait_for_it_and_then_serve(tmp_path: Path) -> None:
    port = free_port()
    system = System(tmp_path, nats_url=f"nats://127.0.0.1:{port}")
    # Reverse order, and before any server exists.
    for name in reversed(SERVICES):
        system.add_service(name).start(wait=False)
    try:
        await poll(
            sync_probe(lambda: all('"nats.error"' in s.log_since_start() for s in system.services.values())),
            lambda ok: ok,
        )
        assert all(s.proc is not None and s.proc.poll() is None for s in system.services.values())
        system.server = NatsServer(tmp_path / "nats", port=port).start()
        for svc in system.services.values():
            svc.wait_started()
        nc = await nats.connect(system.url)
        customer, sku, order_id = await new_customer(nc, 1_000), await new_sku(nc, 1), unique("o")
        await client.place_order(
            nc.jetstream(), order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 1}]
        )
        assert (await client.wait_until_terminal(nc, order_id))["status"] == "CONFIRMED"
        await nc.close()
    finally:
        system.stop()


async def test_sigterm_exits_zero_quickly_and_a_restart_redelivers_nothing(tmp_path: Path) -> None:
    # DEBUG, so every event a service handles leaves a line to look for after the restart.
    system = System(tmp_path, service_env={"LOG_LEVEL": "DEBUG"}).start()
    try:
        nc = await nats.connect(system.url)
        customer, sku = await new_customer(nc, 10_000), await new_sku(nc, 10)
        orders = [unique("o") for _ in range(5)]
        for order_id in orders:
            await client.place_order(
                nc.jetstream(), order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": ITEM_PRICE}]
            )
        for order_id in orders:
            assert (await client.wait_until_terminal(nc, order_id))["status"] == "CONFIRMED"
        await settled_stock(nc, sku, 5)

        for svc in system.services.values():
            began = time.monotonic()
            assert svc.stop() == 0, svc.log_since_start()[-2000:]
            assert time.monotonic() - began < 8
            assert '"service.stopped"' in svc.log_since_start()
        for svc in system.services.values():
            svc.start()
        assert await client.balance(nc, customer) == 10_000 - 5 * ITEM_PRICE
        # Everything was acknowledged before the stop: after the restart, no event is seen again.
        await poll(lambda: consumers_idle(nc.jetstream()), lambda idle: idle)
        for svc in system.services.values():
            before = [json.loads(line)["event"] for line in svc.log_path.read_text().splitlines()]
            assert "event.processed" in before, svc.name  # the probe can see what it looks for
            seen = [json.loads(line)["event"] for line in svc.log_since_start().splitlines() if line.startswith("{")]
            assert "event.processed" not in seen and "event.duplicate_skipped" not in seen, svc.name
        await nc.close()
    finally:
        system.stop()


async def test_every_log_line_is_json_with_service_event_type_order_id_and_event_id(tmp_path: Path) -> None:
    system = System(tmp_path, service_env={"LOG_LEVEL": "DEBUG"}).start()
    try:
        nc = await nats.connect(system.url)
        customer, sku, order_id = await new_customer(nc, 1_000), await new_sku(nc, 1), unique("o")
        await client.place_order(
            nc.jetstream(), order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 5}]
        )
        await client.wait_until_terminal(nc, order_id)
        await settled_stock(nc, sku, 0)
        await nc.close()
    finally:
        system.stop()
    for name in SERVICES:
        lines = [json.loads(line) for line in system.services[name].log_path.read_text().splitlines()]
        assert lines, name
        for line in lines:
            assert {"service", "event_type", "order_id", "event_id", "level", "timestamp"} <= line.keys(), line
            assert line["service"] == name
        about_order = [line for line in lines if line["order_id"] == order_id and line["event"] == "event.processed"]
        assert about_order, name
        for line in about_order:
            assert line["event_type"] and line["event_id"], line
