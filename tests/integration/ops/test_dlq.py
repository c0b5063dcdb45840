"""saga-dlq: a handler bug dead-letters a message after bounded retries; once fixed, the
dead letter is replayed and processed exactly once."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from nats.js import JetStreamContext

from order_svc.__main__ import ORDER_SERVICE
from order_svc.handlers import on_orders_requested
from shared.consumer import ConsumerSpec, Route
from shared.contract import OrderRequested
from shared.envelope import Envelope, Event
from shared.ops.client import place_order
from shared.partitions import UNPARTITIONED
from shared.settings import Settings
from shared.subjects import EventType, Stream
from tests.conftest import poll, stream_messages, subject_count, unique
from tests.integration.conftest import drained, query, running

ITEMS = [{"sku": "widget", "quantity": 1, "unit_price_cents": 100}]


def saga_dlq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "saga-dlq"
    return subprocess.run([str(cli), "--nats-url", url, *args], capture_output=True, text=True, timeout=60)


async def test_dead_letter_of_a_fixed_bug_is_listed_shown_and_replayed_exactly_once(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    bug = {"present": True}

    def sometimes_buggy(tx: sqlite3.Connection, env: Envelope, data: OrderRequested) -> list[Event]:
        if bug["present"]:
            raise RuntimeError("bug #42")
        return on_orders_requested(UNPARTITIONED, tx, env, data)

    definition = dataclasses.replace(
        ORDER_SERVICE,
        consumers=[ConsumerSpec(Stream.ORDERS, {EventType.ORDERS_REQUESTED: Route(OrderRequested, sometimes_buggy)})],
        background=lambda ctx, stop: (),
    )
    order_id = unique("o")
    async with running(definition, make_settings("order_svc", max_deliveries=2)) as settings:
        url = settings.nats_url
        await place_order(js, order_id, "alice", ITEMS)
        [dead] = await poll(lambda: stream_messages(js, "DLQ", "dlq.order_svc"), lambda m: len(m) == 1)
        assert dead.headers["Dlq-Reason"] == "max_deliveries"

        listing = saga_dlq(url, "list")
        assert listing.returncode == 0, listing.stderr
        assert f"orders.requested.{order_id}" in listing.stdout and "max_deliveries" in listing.stdout
        assert "1 dead letter(s)" in listing.stdout
        shown = saga_dlq(url, "show", str(dead.seq))
        assert shown.returncode == 0 and "bug #42" in shown.stdout and f'"order_id": "{order_id}"' in shown.stdout

        bug["present"] = False  # the fix is deployed
        replayed = saga_dlq(url, "replay", "--reason", "max_deliveries", "--keep")
        assert replayed.returncode == 0, replayed.stderr
        assert "1 replayed" in replayed.stdout
        await poll(lambda: subject_count(js, "ORDERS", f"orders.created.{order_id}"), lambda n: n == 1)

        # Replaying the same dead letter again (say, by mistake) applies nothing twice.
        again = saga_dlq(url, "replay", str(dead.seq))
        assert again.returncode == 0, again.stderr
        await drained(js)
        assert query(settings.db_path, "SELECT count(*) FROM orders WHERE order_id = ?", order_id) == [(1,)]
        assert saga_dlq(url, "list").stdout.strip().endswith("0 dead letter(s)")
    assert await subject_count(js, "ORDERS", f"orders.created.{order_id}") == 1
