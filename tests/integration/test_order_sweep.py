"""order_svc's timeout sweep on a real SQLite file under a real lease: a sweep that finds nothing
due commits nothing (no flush to disk each second for each partition), and one that finds an
overdue order cancels it with its outbox row, in one commit."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from order_svc import domain, repository, timeouts
from shared.contract import OrderItem
from shared.jetstream import Publisher
from shared.lease import Holder, Lease, ensure_buckets
from shared.logging import get_logger
from shared.outbox import Relay
from shared.service import ServiceContext
from shared.settings import Settings
from shared.store import Store
from tests.conftest import unique
from tests.integration.conftest import query

pytestmark = pytest.mark.usefixtures("structlog_defaults")  # it logs the timeout it cancels


def _order(order_id: str, created_at: float) -> domain.Order:
    return domain.Order(
        order_id=order_id,
        customer_id="c-1",
        items=[OrderItem(sku="s-1", quantity=1, unit_price_cents=100)],
        total_cents=100,
        status=domain.OrderStatus.PENDING,
        created_at=created_at,
        request_event_id=unique("req"),
    )


def _commits(db: Path) -> int:
    return int(query(db, "SELECT SUM(commits) FROM writer_epochs")[0][0])


async def test_a_sweep_with_nothing_due_commits_nothing_and_one_with_an_overdue_order_cancels_it(
    nc: Client, make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A logger of its own: the module's may keep the methods of a configuration an earlier test
    # made in this process, writing to a stream pytest has closed since (shared.logging._Logger).
    monkeypatch.setattr(timeouts, "log", get_logger("order_svc.timeouts"))
    js = nc.jetstream()
    await ensure_buckets(js, replicas=1)
    holder = dataclasses.replace(Holder.this_process("store-a"), instance=unique("i"))
    lease = Lease(js, unique("order_svc"), holder, ttl_s=10.0)
    assert await lease.acquire(asyncio.Event())
    db = tmp_path / "order_svc.sqlite3"
    store = await Store.open(db, repository.SCHEMA, lease=lease, migrate=repository.migrate)
    settings = make_settings("order_svc", order_timeout_s=30.0)
    ctx = ServiceContext(settings, store, Relay(store, Publisher(nc)))
    try:
        now = time.time()
        await store.run(lambda tx: repository.add(tx, _order("o-fresh", now)))
        before = _commits(db)

        assert await timeouts.cancel_timed_out(ctx) == 0
        assert await timeouts.cancel_timed_out(ctx) == 0
        assert _commits(db) == before  # neither sweep opened a write transaction

        await store.run(lambda tx: repository.add(tx, _order("o-overdue", now - 60)))
        assert await timeouts.cancel_timed_out(ctx) == 1
        assert _commits(db) == before + 2  # the insert, then the sweep's one commit
        statuses = dict(query(db, "SELECT order_id, status || ':' || COALESCE(reason, '') FROM orders"))
        assert statuses == {"o-fresh": "PENDING:", "o-overdue": f"CANCELLED:{domain.TIMEOUT}"}
        assert query(db, "SELECT subject FROM outbox") == [("orders.cancelled.o-overdue",)]
    finally:
        await store.close()
        await lease.release()
