"""Integration tier: a service's real code in this process, on a real nats-server and real SQLite."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from shared.ops.harness import NatsServer
from shared.service import ServiceDefinition, serve
from shared.settings import Settings
from tests.conftest import poll


@asynccontextmanager
async def running(definition: ServiceDefinition, settings: Settings) -> AsyncIterator[Settings]:
    """Serve ``definition`` in this event loop until the block ends, then stop it cleanly."""
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(definition, settings, stop, started))
    waiter = asyncio.create_task(started.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task.done():
            task.result()  # raise what made it fail
        raise TimeoutError(f"{definition.name} did not start")
    try:
        yield settings
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


@pytest.fixture
def make_settings(nats_server: NatsServer, tmp_path: Path) -> Callable[..., Settings]:
    def make(service: str, **overrides: Any) -> Settings:
        base = Settings(service=service, nats_url=nats_server.url, data_dir=tmp_path / "data")
        return dataclasses.replace(base, **overrides)

    return make


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read a service's SQLite file the way an operator would, outside the service."""
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql, args).fetchall())


async def consumer_state(js: JetStreamContext, stream: str, durable: str) -> tuple[int, int, int]:
    """(pending, ack_pending, redelivered) of a durable consumer."""
    info = await js.consumer_info(stream, durable)
    return info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0


async def deliveries(js: JetStreamContext, stream: str, durable: str) -> int:
    """How many deliveries (first ones and redeliveries) a durable consumer has made."""
    info = await js.consumer_info(stream, durable)
    return info.delivered.consumer_seq if info.delivered else 0


async def drained(js: JetStreamContext, durable: str = "order_svc-orders") -> tuple[int, int, int]:
    """Wait until the ORDERS consumer ``durable`` has nothing pending or unacknowledged."""
    return await poll(lambda: consumer_state(js, "ORDERS", durable), lambda s: s[0] == 0 and s[1] == 0)
