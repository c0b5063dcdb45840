"""End-to-end tier: nats-server and the three services as real OS processes, driven only through NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from nats.aio.client import Client

from shared.connection import connect
from shared.ops import client
from shared.ops.harness import System
from tests.conftest import poll, unique

TOPOLOGIES = {
    "one_partition": {"instances": 1, "service_env": {}},
    "four_partitions_two_instances_auth": {"instances": 2, "service_env": {"PARTITIONS": "4"}, "auth": True},
}
"""Every saga test runs against both: the system as it always was (an open server, one
partition), and a partitioned one behind the trust boundary, each service with only its own
permissions (shared.ops.auth); the tests themselves connect as the operator."""


@pytest.fixture(scope="session", params=list(TOPOLOGIES))
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One running system per topology, shared by the tests that need no special settings (ids are per test)."""
    topology: dict[str, Any] = TOPOLOGIES[request.param]
    running = System(tmp_path_factory.mktemp(f"e2e-{request.param}"), **topology).start()
    yield running
    running.stop()
    # Behind the boundary, every service did all its work with only its own permissions.
    denied = [
        line
        for svc in running.services.values()
        for line in svc.log_path.read_text().splitlines()
        if "nats.permission_denied" in line
    ]
    assert not denied, denied[:3]


@pytest.fixture
async def nc(system: System) -> AsyncIterator[Client]:
    conn = await connect(system.url, system.credentials("operator"))
    yield conn
    await conn.close()


async def new_customer(nc: Client, cents: int) -> str:
    customer_id = unique("cust")
    reply = await client.deposit(nc, customer_id, cents)
    assert reply == {"customer_id": customer_id, "balance_cents": cents}
    return customer_id


async def new_sku(nc: Client, quantity: int) -> str:
    sku = unique("sku")
    reply = await client.restock(nc, sku, quantity)
    assert reply == {"sku": sku, "available": quantity, "reserved": 0}
    return sku


async def settled_stock(nc: Client, sku: str, available: int) -> None:
    """Wait until ``sku`` shows ``available`` with nothing left reserved."""
    await poll(lambda: client.stock(nc, sku), lambda s: s == {"sku": sku, "available": available, "reserved": 0})


async def settled_balance(nc: Client, customer_id: str, cents: int) -> None:
    await poll(lambda: client.balance(nc, customer_id), lambda b: b == cents)
