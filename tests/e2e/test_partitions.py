"""Partitions spread over instances: even at start, taken over from a killed instance within a
lease's TTL, handed over to a newcomer and by an instance that stops; `nats micro ls` shows it."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from shared.connection import connect
from shared.lease import read
from shared.ops import client
from shared.ops.harness import ServiceProcess, System
from shared.partitions import Partitioning
from tests.conftest import poll, unique
from tests.e2e.conftest import new_customer, new_sku

PARTITIONS = 4
LEASE_TTL_S = 4.0


async def owners(nc: Client, service: str) -> dict[int, str | None]:
    """Partition -> the instance (its label's pid) holding its lease, or None."""
    four = Partitioning(PARTITIONS)
    found: dict[int, str | None] = {}
    for p in four.all():
        held = await read(nc.jetstream(), four.unit(service, p))
        found[p] = str(held.holder.pid) if held.holder else None
    return found


def spread(found: dict[int, str | None]) -> list[int]:
    """How many partitions each owner holds, most first; [] if any partition has none."""
    if None in found.values():
        return []
    return sorted(Counter(found.values()).values(), reverse=True)


async def micro_partitions(nc: Client, name: str) -> dict[str, str]:
    """Partition label -> instance, from every ``writer`` entry of ``$SRV.INFO.<name>``."""
    inbox = nc.new_inbox()
    found: dict[str, str] = {}

    async def collect(msg: Any) -> None:
        meta = json.loads(msg.data)["metadata"]
        if meta["role"] == "writer":
            found[meta["partition"]] = meta["instance"]

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.INFO.{name}", b"", reply=inbox)
    await asyncio.sleep(0.5)  # a scatter-gather: every instance answers within this
    await sub.unsubscribe()
    return found


async def confirmed(nc: Client, customer: str, sku: str, count: int) -> int:
    order_ids = [unique("o") for _ in range(count)]
    for order_id in order_ids:
        await client.place_order(
            nc.jetstream(), order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 1}]
        )
    done = [await client.wait_until_terminal(nc, order_id, timeout=60) for order_id in order_ids]
    return sum(1 for order in done if order["status"] == "CONFIRMED")


async def test_partitions_spread_move_on_a_kill_and_are_handed_over_on_join_and_stop(tmp_path: Path) -> None:
    env = {"PARTITIONS": str(PARTITIONS), "LEASE_TTL_S": str(LEASE_TTL_S)}
    system = System(tmp_path, instances=2, service_env=env).start()
    nc = await connect(system.url)
    try:
        first, second = system.services["payment_svc"], system.services["payment_svc-2"]
        assert spread(await owners(nc, "payment_svc")) == [2, 2]
        shown = await micro_partitions(nc, "payments")
        assert sorted(shown) == [f"partition {p} of {PARTITIONS}" for p in range(PARTITIONS)]
        assert len(set(shown.values())) == 2  # two instances, each named as the owner of its two
        customer, sku = await new_customer(nc, 1_000_000), await new_sku(nc, 1_000)
        assert await confirmed(nc, customer, sku, 8) == 8

        # Killed: the other instance has every partition within the lease's TTL and a few seconds.
        first.kill()
        killed_at = time.monotonic()
        survivor = str(second.proc.pid)  # type: ignore[union-attr]
        await poll(lambda: owners(nc, "payment_svc"), lambda o: set(o.values()) == {survivor}, timeout=LEASE_TTL_S + 10)
        assert time.monotonic() - killed_at < LEASE_TTL_S + 5
        assert await confirmed(nc, customer, sku, 8) == 8

        # A newcomer gets its share, handed over cleanly (released, not left to expire).
        newcomer = system.add_service("payment_svc", instance=3).start()
        joined_at = time.monotonic()
        await poll(lambda: owners(nc, "payment_svc"), lambda o: spread(o) == [2, 2], timeout=15)
        assert time.monotonic() - joined_at < LEASE_TTL_S + 3
        given = second.log_since_start()
        assert given.count('"partition.handing_over"') == 2 and given.count('"lease.released"') == 2
        assert await confirmed(nc, customer, sku, 8) == 8

        # An instance that stops hands its partitions over too: faster than a lease expiry.
        stopping_at = time.monotonic()
        assert second.stop() == 0
        mine = str(newcomer.proc.pid)  # type: ignore[union-attr]
        await poll(lambda: owners(nc, "payment_svc"), lambda o: set(o.values()) == {mine}, timeout=15)
        assert time.monotonic() - stopping_at < LEASE_TTL_S + 3
        assert second.log_since_start().count('"lease.released"') == 4  # its two, then two more given back
        assert await confirmed(nc, customer, sku, 8) == 8
        assert await client.balance(nc, customer) == 1_000_000 - 32
    finally:
        await nc.close()
        system.stop()


async def test_two_hosts_with_a_volume_each_own_their_partition_sets_and_run_the_saga(tmp_path: Path) -> None:
    # As a StatefulSet would: each "host" (instance) has its own DATA_DIR and PARTITION_SET.
    env = {"PARTITIONS": str(PARTITIONS)}
    system = System(tmp_path / "host-a", service_env={**env, "PARTITION_SET": "0-1"})
    system.start_nats()
    for name in ("order_svc", "payment_svc", "inventory_svc"):
        system.add_service(name).start()
        other = ServiceProcess(name, system.url, tmp_path / "host-b", {**env, "PARTITION_SET": "2-3"}, instance=2)
        system.services[other.label] = other.start()
    system.wait_partitions_owned()
    nc = await connect(system.url)
    try:
        for name in ("order_svc", "payment_svc", "inventory_svc"):
            files_a = sorted(p.name for p in (tmp_path / "host-a").glob(f"{name}.p*.sqlite3"))
            files_b = sorted(p.name for p in (tmp_path / "host-b").glob(f"{name}.p*.sqlite3"))
            assert (files_a, files_b) == (
                [f"{name}.p0.sqlite3", f"{name}.p1.sqlite3"],
                [f"{name}.p2.sqlite3", f"{name}.p3.sqlite3"],
            )
        # Customers and skus in every partition: each order crosses the two hosts somewhere.
        four = Partitioning(PARTITIONS)
        customers = {four.of(c): c for c in (unique("cust") for _ in range(40))}
        skus = {four.of(s): s for s in (unique("sku") for _ in range(40))}
        assert len(customers) == len(skus) == PARTITIONS
        for customer in customers.values():
            await client.deposit(nc, customer, 1_000)
        for sku in skus.values():
            await client.restock(nc, sku, 10)
        for customer in customers.values():
            assert await confirmed(nc, customer, skus[0], 2) == 2
        assert [await client.balance(nc, c) for c in customers.values()] == [998] * PARTITIONS
        assert (await client.stock(nc, skus[0])) == {"sku": skus[0], "available": 2, "reserved": 0}
    finally:
        await nc.close()
        system.stop()
