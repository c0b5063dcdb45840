"""The saga on a 3-node JetStream cluster with R3 streams: the node leading ORDERS is SIGKILLed
under load, and nothing is lost, doubled, dead-lettered or timed out for it. Unpartitioned, and
with 4 partitions on 2 instances of each service and orders whose skus lie in two partitions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.connection import connect
from shared.jetstream import ACK_WAIT_S
from shared.ops import client
from shared.ops.harness import System
from shared.partitions import Partitioning, split_stored
from tests.conftest import poll, stream_messages, unique
from tests.e2e.conftest import new_customer, new_sku, settled_stock

ORDERS = 60
RATE = 15.0  # orders per second: the leader is killed a second into the load and stays down


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / name
    return subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("partitions", [1, 4], ids=["one_partition", "four_partitions_two_instances"])
async def test_killing_the_orders_leader_under_load_loses_doubles_and_times_out_nothing(
    tmp_path: Path, partitions: int
) -> None:
    system = System(  # the default ORDER_TIMEOUT_S, 30 s
        tmp_path, cluster_size=3, instances=2 if partitions > 1 else 1, service_env={"PARTITIONS": str(partitions)}
    ).start()
    assert system.cluster is not None
    nc = await connect(system.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        for stream in ("ORDERS", "PAYMENTS", "INVENTORY", "DLQ", "KV_saga_leases", "KV_saga_stores"):
            assert (await js.stream_info(stream)).config.num_replicas == 3, stream
        customer, sku = await new_customer(nc, 1_000_000), await new_sku(nc, 1_000)
        lines = [{"sku": sku, "quantity": 1, "unit_price_cents": 100}]
        other_sku = sku
        if partitions > 1:  # and a second line whose stock lives in another inventory partition
            four = Partitioning(partitions)
            while four.of(other_sku) == four.of(sku):
                other_sku = await new_sku(nc, 1_000)
            lines.append({"sku": other_sku, "quantity": 2, "unit_price_cents": 50})
        order_ids = [unique("o") for _ in range(ORDERS)]

        async def load() -> None:
            began = time.monotonic()
            for n, order_id in enumerate(order_ids):
                await client.place_order(js, order_id, customer, lines)
                await asyncio.sleep(max(0.0, (n + 1) / RATE - (time.monotonic() - began)))

        async def kill_the_leader() -> str:
            await asyncio.sleep(1.0)
            info = await js.stream_info("ORDERS")
            assert info.cluster is not None and info.cluster.leader
            system.cluster.node(info.cluster.leader).kill()  # type: ignore[union-attr]
            return info.cluster.leader

        _, killed = await asyncio.gather(load(), kill_the_leader())
        outcomes: Counter[tuple[str, str | None]] = Counter()
        for order_id in order_ids:
            order = await client.wait_until_terminal(nc, order_id, timeout=60)
            outcomes[(order["status"], order["reason"])] += 1
        assert outcomes == {("CONFIRMED", None): ORDERS}, outcomes
        await settled_stock(nc, sku, 1_000 - ORDERS)
        total = sum(line["quantity"] * line["unit_price_cents"] for line in lines)  # type: ignore[operator]
        if partitions > 1:
            await settled_stock(nc, other_sku, 1_000 - 2 * ORDERS)
        assert await client.balance(nc, customer) == 1_000_000 - total * ORDERS

        # Every event of every saga once in its stream: no publish retried into a second copy.
        for stream in ("ORDERS", "PAYMENTS", "INVENTORY"):
            per_subject = Counter(split_stored(m.subject)[1] for m in await stream_messages(js, stream))
            doubled = {s: n for s, n in per_subject.items() if n > 1 and s.rpartition(".")[2] in order_ids}
            assert doubled == {}, (stream, doubled)
        assert (await js.stream_info("DLQ")).state.messages == 0

        # The killed node comes back on its store and catches up.
        node = system.cluster.node(killed)
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(system.cluster.wait_healthy)

        async def replicas_current() -> bool:
            info = await js.stream_info("ORDERS")
            return info.cluster is not None and all(r.current for r in info.cluster.replicas or [])

        await poll(replicas_current, bool, timeout=30)

        # The operator's tools take the comma-separated list too, as NATS_URL does.
        assert "," in system.url
        # A step after the outcome (a confirmed order's capture) whose ack the killed node lost
        # comes back after ack_wait: clean by then, or something was lost.
        await poll(
            lambda: asyncio.to_thread(run_tool, "saga-audit", "--nats-url", system.url, "--confirm-after", "0.5"),
            lambda done: done.returncode == 0 and "clean" in done.stdout,
            timeout=ACK_WAIT_S + 15,
            interval=2,
        )
        dlq = run_tool("saga-dlq", "--nats-url", system.url, "list")
        assert dlq.returncode == 0 and "0 dead letter(s)" in dlq.stdout, dlq.stdout + dlq.stderr
    finally:
        await nc.close()
        system.stop()
