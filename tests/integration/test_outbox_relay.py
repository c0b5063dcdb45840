"""The outbox relay's watermark, on a real nats-server and a real SQLite file: rows are written
once, a hole in the ids holds the watermark until a scan fills it, and a store of schema 1
(a published_at per row) is migrated without losing an unpublished row or reusing an id."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from order_svc.repository import SCHEMA as ORDER_SCHEMA
from shared import outbox
from shared.envelope import Event
from shared.jetstream import MSG_ID_HEADER, Publisher
from shared.outbox import OutboxRecord, Relay, published_through
from shared.store import SCHEMA_VERSION, Store
from shared.streams import ensure_streams
from shared.tracing import TRACEPARENT
from tests.conftest import poll, sync_probe, unique
from tests.integration.conftest import query


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "relay.sqlite3", ORDER_SCHEMA)
    yield opened
    await opened.close()


def _commit(store: Store, order_ids: list[str]) -> Callable[[], asyncio.Future[list[OutboxRecord]]]:
    events = [Event("orders.created", order_id, {"n": i}) for i, order_id in enumerate(order_ids)]
    return lambda: asyncio.ensure_future(store.run(lambda tx: outbox.add(tx, events, None)))


async def test_rows_get_their_ids_and_a_hole_holds_the_watermark_until_a_scan_fills_it(
    nc: Client, js: JetStreamContext, store: Store
) -> None:
    await ensure_streams(js)
    prefix = unique("o")
    seen: list[str] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg.subject.rpartition(".")[2])

    sub = await nc.subscribe("orders.created.*", cb=keep)
    publisher = Publisher(nc)
    await publisher.start()
    relay = Relay(store, publisher, idle_poll_s=60)  # no idle scan: only the test's wake() reads the table
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        first = await _commit(store, [f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"])()
        assert [r.row_id for r in first] == [row[0] for row in query(store.path, "SELECT id FROM outbox ORDER BY id")]
        relay.enqueue(first)
        await poll(_saved(store), lambda through: through == first[-1].row_id)

        # A row committed with no hand-over (as if its wake-up were lost), then two from a round.
        [hole] = await _commit(store, [f"{prefix}-4"])()
        after = await _commit(store, [f"{prefix}-5", f"{prefix}-6"])()
        await relay.send(after)
        await poll(sync_probe(lambda: sorted(seen)), lambda got: len(got) == 5)
        assert f"{prefix}-4" not in seen
        await relay.landed(timeout_s=5)  # their acks are in, so the watermark has moved if it would
        await relay.save_watermark()
        assert await _saved(store)() == first[-1].row_id, "the watermark must not pass the unpublished row"

        relay.wake()  # the scan publishes the hole, and not again what went out after it
        await poll(_saved(store), lambda through: through == after[-1].row_id)
        assert hole.row_id < after[0].row_id
        assert sorted(seen) == sorted(f"{prefix}-{i}" for i in range(1, 7)), "each event published once"
        await relay.send(await _commit(store, [f"{prefix}-1"])())  # the same event again, in a new row
        await poll(_saved(store), lambda through: through == after[-1].row_id + 1)
        assert not relay._published_ahead, "nothing is left waiting on a hole once it is filled"
    finally:
        stop.set()
        await task
        await sub.unsubscribe()


async def test_a_store_of_schema_1_is_migrated_keeping_unpublished_rows_and_the_id_sequence(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_1_OUTBOX)
        for i in range(1, 8):  # ids 1..7; 3 and 5 never published; 6 and 7 pruned since
            published = None if i in (3, 5) else 1_000.0 + i
            conn.execute(
                "INSERT INTO outbox(event_id, subject, payload, created_at, published_at, resends)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (f"e{i}", f"orders.created.o-{i}", b"{}", 1_000.0, published, 1 if i == 5 else 0),
            )
        conn.execute("DELETE FROM outbox WHERE id > 5")
        conn.execute("PRAGMA user_version = 1")

    for _ in range(2):  # and a second open changes nothing
        store = await Store.open(db, ORDER_SCHEMA)
        try:
            assert await store.read(published_through) == 2, "just below the first row never published"
            columns = [row[1] for row in query(db, "PRAGMA table_info(outbox)")]
            assert "published_at" not in columns
            assert query(db, "SELECT id, event_id, resends FROM outbox ORDER BY id") == [
                (1, "e1", 0),
                (2, "e2", 0),
                (3, "e3", 0),
                (4, "e4", 0),
                (5, "e5", 1),
            ]
            assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        finally:
            await store.close()

    store = await Store.open(db, ORDER_SCHEMA)
    try:
        [record] = await store.run(lambda tx: outbox.add(tx, [Event("orders.created", "o-8", {})], None))
        assert record.row_id == 8, "AUTOINCREMENT's high-water mark survives: ids 6 and 7 are never reused"
        # What the relay will send: the rows past the watermark, a re-send under its own msg id.
        _, rows = await store.read(lambda conn: outbox._rows_after(conn, None, 10))
        assert [(r.row_id, r.message[2][MSG_ID_HEADER]) for r in rows] == [
            (3, "e3"),
            (4, "e4"),
            (5, "e5:resend:1"),
            (8, record.event_id),
        ]
    finally:
        await store.close()


async def test_a_repair_appends_a_copy_under_a_fresh_msg_id(store: Store) -> None:
    subject = "orders.cancelled.o-1"
    [original] = await store.run(lambda tx: outbox.add(tx, [Event("orders.cancelled", "o-1", {"reason": "x"})], None))
    assert await outbox.requeue(store, subject) == 1
    assert await outbox.requeue(store, subject) == 1
    rows = query(store.path, "SELECT id, event_id, resends, payload FROM outbox WHERE subject = ? ORDER BY id", subject)
    assert [(r[1], r[2]) for r in rows] == [(original.event_id, 0), (original.event_id, 1), (original.event_id, 2)]
    assert {r[3] for r in rows} == {original.payload}
    assert await outbox.requeue(store, "orders.cancelled.nobody") == 0


SCHEMA_1_OUTBOX = """
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    subject      TEXT NOT NULL,
    payload      BLOB NOT NULL,
    created_at   REAL NOT NULL,
    published_at REAL,
    resends      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_unpublished ON outbox(id) WHERE published_at IS NULL;
"""


def _saved(store: Store) -> Callable[[], asyncio.Future[int]]:
    return lambda: asyncio.ensure_future(store.read(published_through))


async def test_a_rows_traceparent_goes_out_with_it_after_a_restart_and_on_a_resend(
    tmp_path: Path, nc: Client, js: JetStreamContext
) -> None:
    await ensure_streams(js)
    db = tmp_path / "traced.sqlite3"
    traced, untraced = unique("o"), unique("o")
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    store = await Store.open(db, ORDER_SCHEMA)
    [record] = await store.run(lambda tx: outbox.add(tx, [Event("orders.created", traced, {})], None, parent))
    await store.run(lambda tx: outbox.add(tx, [Event("orders.created", untraced, {})], None))
    await store.close()  # committed, never published: the process stopped here

    store = await Store.open(db, ORDER_SCHEMA)
    sub = await nc.subscribe("orders.created.*")
    try:
        publisher = Publisher(nc)
        await publisher.start()
        relay = Relay(store, publisher)
        assert await relay.publish_pending() == 2  # the first scan reads what the last run left
        first, second = await sub.next_msg(timeout=5), await sub.next_msg(timeout=5)
        assert (first.subject, first.headers) == (
            f"orders.created.{traced}",
            {MSG_ID_HEADER: record.event_id, TRACEPARENT: parent},
        )
        assert second.subject == f"orders.created.{untraced}" and TRACEPARENT not in (second.headers or {})
        # A repair's re-send stays in the order's trace.
        assert await outbox.requeue(store, f"orders.created.{traced}") == 1
        relay.wake()
        assert await relay.publish_pending() == 1
        again = await sub.next_msg(timeout=5)
        assert again.headers == {MSG_ID_HEADER: f"{record.event_id}:resend:1", TRACEPARENT: parent}
    finally:
        await sub.unsubscribe()
        await store.close()
