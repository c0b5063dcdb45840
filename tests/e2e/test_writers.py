"""Never two writers, with real processes: a second instance with a volume of its own refuses
to run; one on the same DATA_DIR stands by, takes over when the writer is SIGKILLed, and a
writer SIGSTOPped past its lease commits nothing once it resumes."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from shared.connection import connect
from shared.ops import client
from shared.ops.harness import ServiceProcess, System
from shared.service import EXIT_NOT_THE_REGISTERED_STORE
from tests.conftest import poll, sync_probe, unique
from tests.e2e.conftest import new_customer, new_sku


def writer_epochs(db: Path) -> list[tuple[int, int, float, int, float | None]]:
    """(epoch, pid, acquired_at, commits, last_commit_at) of every epoch that wrote ``db``."""
    with sqlite3.connect(db) as conn:
        sql = "SELECT epoch, pid, acquired_at, commits, last_commit_at FROM writer_epochs ORDER BY epoch"
        return [tuple(row) for row in conn.execute(sql)]


async def micro_roles(nc: Client, name: str) -> Counter[str]:
    """How many instances of micro service ``name`` announce themselves as writer, as standby."""
    inbox = nc.new_inbox()
    roles: Counter[str] = Counter()

    async def collect(msg: Any) -> None:
        roles[json.loads(msg.data)["metadata"]["role"]] += 1

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.INFO.{name}", b"", reply=inbox)
    await asyncio.sleep(0.5)  # a scatter-gather: every instance answers within this
    await sub.unsubscribe()
    return roles


async def place(nc: Client, customer: str, sku: str, count: int, price: int) -> list[str]:
    order_ids = [unique("o") for _ in range(count)]
    for order_id in order_ids:
        await client.place_order(
            nc.jetstream(), order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": price}]
        )
    return order_ids


async def outcomes(nc: Client, order_ids: list[str]) -> Counter[tuple[str, str | None]]:
    found: Counter[tuple[str, str | None]] = Counter()
    for order_id in order_ids:
        order = await client.wait_until_terminal(nc, order_id, timeout=60)
        found[(order["status"], order["reason"])] += 1
    return found


async def test_a_second_instance_with_a_volume_of_its_own_writes_nothing_and_answers_nothing(tmp_path: Path) -> None:
    # The deployment that used to split balances: two payment_svc replicas, a volume each.
    system = System(tmp_path / "a").start()
    second = ServiceProcess("payment_svc", system.url, tmp_path / "b", instance=2)
    try:
        second.start(wait=False)
        assert second.proc is not None
        assert await asyncio.to_thread(second.proc.wait, 30) == EXIT_NOT_THE_REGISTERED_STORE
        said = second.log_since_start()
        assert "payment_svc: refusing to run:" in said and "does not exist" in said, said[-2000:]
        assert not second.db_path.exists()

        nc = await connect(system.url)
        try:
            assert await micro_roles(nc, "payments") == {"writer": 1}
            customer, sku = await new_customer(nc, 20 * 100), await new_sku(nc, 100)
            found = await outcomes(nc, await place(nc, customer, sku, 30, 100))
            assert found == {("CONFIRMED", None): 20, ("CANCELLED", "insufficient_funds"): 10}, found
            assert await client.balance(nc, customer) == 0
        finally:
            await nc.close()
    finally:
        second.stop()
        system.stop()


async def test_the_standby_takes_over_when_the_writer_is_killed(tmp_path: Path) -> None:
    system = System(tmp_path, instances=2).start()
    nc = await connect(system.url)
    try:
        assert await micro_roles(nc, "payments") == {"writer": 1, "standby": 1}
        customer, sku = await new_customer(nc, 1_000_000), await new_sku(nc, 1_000)
        before = await place(nc, customer, sku, 10, 100)
        assert await outcomes(nc, before) == {("CONFIRMED", None): 10}

        writer, standby = system.services["payment_svc"], system.services["payment_svc-2"]
        writer.kill()
        killed_at = time.monotonic()
        await poll(sync_probe(lambda: '"service.started"' in standby.log_since_start()), bool, timeout=20)
        took_over_s = time.monotonic() - killed_at
        after = await place(nc, customer, sku, 10, 100)
        assert await outcomes(nc, after) == {("CONFIRMED", None): 10}
        assert await client.balance(nc, customer) == 1_000_000 - 20 * 100
        # Within LEASE_TTL_S (10) plus a few seconds; on one machine at once, as its holder is gone.
        assert took_over_s < 10 + 5, took_over_s
        epochs = writer_epochs(writer.db_path)
        assert [pid for _, pid, *_ in epochs] == [writer.proc.pid, standby.proc.pid]  # type: ignore[union-attr]
        assert epochs[0][0] < epochs[1][0]
    finally:
        await nc.close()
        system.stop()


async def test_a_writer_paused_past_its_lease_commits_nothing_when_it_resumes(tmp_path: Path) -> None:
    lease_ttl_s = 3.0
    system = System(tmp_path, instances=2, service_env={"LEASE_TTL_S": str(lease_ttl_s)}).start()
    nc = await connect(system.url)
    writer, standby = system.services["order_svc"], system.services["order_svc-2"]
    assert writer.proc is not None
    try:
        customer, sku = await new_customer(nc, 1_000_000), await new_sku(nc, 1_000)
        assert await outcomes(nc, await place(nc, customer, sku, 5, 100)) == {("CONFIRMED", None): 5}

        writer.proc.send_signal(signal.SIGSTOP)
        during = await place(nc, customer, sku, 5, 100)  # waiting in ORDERS: no writer runs now
        # The standby wins the lease once it expires, then waits on the file lock the paused
        # writer still holds: the second guard.
        await poll(
            sync_probe(lambda: '"store.waiting_for_file_lock"' in standby.log_since_start()),
            bool,
            timeout=lease_ttl_s + 10,
        )
        resumed_at = time.time()
        writer.proc.send_signal(signal.SIGCONT)

        assert await outcomes(nc, during) == {("CONFIRMED", None): 5}
        await poll(sync_probe(lambda: '"service.standing_by_again"' in writer.log_since_start()), bool)
        assert '"lease.lost"' in writer.log_since_start()
        epochs = {
            pid: (epoch, acquired, commits, last)
            for epoch, pid, acquired, commits, last in writer_epochs(writer.db_path)
        }
        paused_epoch, _, paused_commits, paused_last_commit = epochs[writer.proc.pid]
        new_epoch, new_acquired, _, _ = epochs[standby.proc.pid]  # type: ignore[union-attr]
        assert paused_commits > 0 and paused_last_commit is not None
        assert paused_last_commit < resumed_at, "a commit under the expired lease"
        assert new_epoch > paused_epoch and new_acquired >= resumed_at
        assert await micro_roles(nc, "orders") == {"writer": 1, "standby": 1}
    finally:
        if writer.proc.poll() is None:
            writer.proc.send_signal(signal.SIGCONT)
        await nc.close()
        system.stop()
