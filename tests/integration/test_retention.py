"""Bounded storage: what pruning deletes, what it keeps, and that duplicates still change nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from order_svc.__main__ import ORDER_SERVICE
from order_svc.repository import SCHEMA as ORDER_SCHEMA
from shared import retention
from shared.envelope import Event
from shared.ops.client import place_order
from shared.outbox import add
from shared.retention import inbox_retention_floor_s, prune
from shared.settings import Settings
from shared.store import Store
from tests.conftest import poll, subject_count, unique
from tests.integration.conftest import drained, query, running

ITEMS = [{"sku": "widget", "quantity": 1, "unit_price_cents": 100}]
DAY = 86_400.0


async def test_prune_deletes_old_inbox_entries_and_old_published_outbox_rows_only(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.sqlite3", ORDER_SCHEMA)
    now = time.time()
    try:

        def setup(tx: sqlite3.Connection) -> None:
            tx.executemany(
                "INSERT INTO inbox(event_id, event_type, order_id, received_at) VALUES (?, 'orders.requested', 'o', ?)",
                [("old-1", now - 2 * DAY), ("old-2", now - 1.5 * DAY), ("fresh", now - 60)],
            )
            add(tx, [Event("orders.created", f"o-{i}", {}) for i in range(4)], None)
            # o-0: published, created long ago; o-1: published, recent; o-2 (old), o-3: not published.
            tx.execute("UPDATE outbox SET created_at = ? WHERE subject = 'orders.created.o-0'", (now - 2.1 * DAY,))
            tx.execute("UPDATE outbox SET created_at = ? WHERE subject = 'orders.created.o-2'", (now - 3 * DAY,))
            tx.execute(
                "UPDATE outbox_relay SET published_through = (SELECT id FROM outbox WHERE subject = ?)",
                ("orders.created.o-1",),
            )

        await store.run(setup)
        deleted = await prune(store, inbox_retention_s=DAY, outbox_retention_s=DAY, now=now)
        assert deleted == (2, 1)
    finally:
        await store.close()
    db = tmp_path / "s.sqlite3"
    assert query(db, "SELECT event_id FROM inbox") == [("fresh",)]
    # An unpublished row is never pruned, however old: it has not gone out yet.
    assert query(db, "SELECT subject FROM outbox ORDER BY id") == [
        ("orders.created.o-1",),
        ("orders.created.o-2",),
        ("orders.created.o-3",),
    ]


async def test_duplicate_inside_the_retention_window_changes_nothing_after_a_prune(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    order_id = unique("o")
    async with running(ORDER_SERVICE, make_settings("order_svc")) as settings:
        event_id = await place_order(js, order_id, "alice", ITEMS)
        await poll(lambda: subject_count(js, "ORDERS", f"orders.created.{order_id}"), lambda n: n == 1)
        # The schedule runs with the default retention: this entry is far inside it.
        store = await Store.open(settings.db_path, ORDER_SCHEMA)
        try:
            assert await prune(store, inbox_retention_s=DAY, outbox_retention_s=DAY) == (0, 0)
        finally:
            await store.close()
        await place_order(js, order_id, "alice", ITEMS, event_id=event_id, msg_id=unique("again"))
        await drained(js)
        assert query(settings.db_path, "SELECT count(*) FROM inbox WHERE event_id = ?", event_id) == [(1,)]
    assert await subject_count(js, "ORDERS", f"orders.created.{order_id}") == 1
    assert await subject_count(js, "ORDERS", f"orders.rejected.{order_id}") == 0


@pytest.mark.parametrize(
    ("stream_max_age_s", "floor"),
    [(Settings.stream_max_age_s, 86_400 + 131.75), (120.0, 251.75), (3_600.0, 3_731.75)],
    ids=["default-max-age", "max-age-at-the-duplicate-window", "max-age-an-hour"],
)
def test_a_retention_below_the_safe_minimum_is_refused_at_start(
    tmp_path: Path, stream_max_age_s: float, floor: float
) -> None:
    # The inbox must outlive whatever a stream can still deliver: the longer of the duplicate
    # window and the stream's max_age, plus the redelivery horizon (ACK_WAIT_S, 10 s, + 121.75 s of retries).
    assert inbox_retention_floor_s(10, stream_max_age_s) == floor
    env = {"DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "STREAM_MAX_AGE_S": str(stream_max_age_s)}
    done = subprocess.run(
        [sys.executable, "-m", "payment_svc"],
        env={**env, "INBOX_RETENTION_S": str(floor - 1)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "INBOX_RETENTION_S" in done.stderr and "safe minimum" in done.stderr
    # At the floor itself, accepted.
    retention.check_retention(
        Settings(service="payment_svc", stream_max_age_s=stream_max_age_s, inbox_retention_s=floor)
    )


async def test_outbox_pruning_walks_chunk_by_chunk_and_stops_at_the_young_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PRUNE_CHUNK", 5)
    store = await Store.open(tmp_path / "s.sqlite3", ORDER_SCHEMA)
    now = time.time()

    def setup(tx: sqlite3.Connection) -> None:
        for i in range(23):  # 17 old rows, then 6 young ones; the first 20 published
            tx.execute(
                "INSERT INTO outbox(event_id, subject, payload, created_at) VALUES (?, ?, ?, ?)",
                (f"e{i}", f"orders.created.o-{i}", b"", now - 3 * DAY if i < 17 else now - 20),
            )
        tx.execute("UPDATE outbox_relay SET published_through = (SELECT id FROM outbox WHERE event_id = 'e19')")

    try:
        await store.run(setup)
        assert await prune(store, inbox_retention_s=DAY, outbox_retention_s=DAY, now=now) == (0, 17)
    finally:
        await store.close()
    kept = [row[0] for row in query(tmp_path / "s.sqlite3", "SELECT event_id FROM outbox ORDER BY id")]
    assert kept == [f"e{i}" for i in range(17, 23)]
