"""The transactional outbox: events are rows written in the caller's transaction; the relay
publishes committed rows to JetStream with ``Nats-Msg-Id = event_id``.

A crash between publish and marking the row published re-publishes it with the same
``Nats-Msg-Id``: the stream's duplicate window drops it, and past the window every consumer's
inbox does. Only the relay talks to NATS.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence

import structlog
from nats.js import JetStreamContext

from shared.aio import sleep_unless_stopped, wait_any
from shared.envelope import Envelope
from shared.store import Store

log = structlog.get_logger("outbox")

MSG_ID_HEADER = "Nats-Msg-Id"


def add(conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
    """Queue ``envelopes`` for publishing; they go out only if the caller's transaction commits."""
    if not envelopes:
        return
    now = time.time()
    conn.executemany(
        "INSERT INTO outbox(event_id, subject, payload, created_at) VALUES (?, ?, ?, ?)",
        [(e.event_id, e.subject, e.to_bytes(), now) for e in envelopes],
    )


def msg_id(row: sqlite3.Row) -> str:
    """The Nats-Msg-Id of an outbox row: its event_id, plus a suffix on an operator's re-send."""
    event_id: str = row["event_id"]
    return event_id if not row["resends"] else f"{event_id}:resend:{row['resends']}"


async def requeue(store: Store, subject: str) -> int:
    """Send the events recorded on ``subject`` again (repair); return how many were queued."""

    def requeue_rows(tx: sqlite3.Connection) -> int:
        sql = "UPDATE outbox SET published_at = NULL, resends = resends + 1 WHERE subject = ?"
        return tx.execute(sql, (subject,)).rowcount

    return await store.run(requeue_rows)


def _pending(limit: int) -> Callable[[sqlite3.Connection], list[sqlite3.Row]]:
    def query(conn: sqlite3.Connection) -> list[sqlite3.Row]:
        sql = (
            "SELECT id, event_id, subject, payload, resends FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?"
        )
        return conn.execute(sql, (limit,)).fetchall()

    return query


def _mark_published(row_ids: list[int]) -> Callable[[sqlite3.Connection], None]:
    def update(tx: sqlite3.Connection) -> None:
        now = time.time()
        tx.executemany("UPDATE outbox SET published_at = ? WHERE id = ?", [(now, row_id) for row_id in row_ids])

    return update


class RelayError(Exception):
    """Some publishes of a batch were not acknowledged; their rows stay pending."""


class Relay:
    """Publishes committed outbox rows in id order, pipelined, and marks them published."""

    def __init__(
        self,
        store: Store,
        js: JetStreamContext,
        *,
        batch_size: int = 512,
        ack_timeout_s: float = 5.0,
        idle_poll_s: float = 1.0,
    ) -> None:
        self._store = store
        self._js = js
        self._batch_size = batch_size
        self._ack_timeout_s = ack_timeout_s
        self._idle_poll_s = idle_poll_s
        self._wakeup = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        """Tell the relay that a transaction just committed outbox rows."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; back off while NATS is away, never busy-loop."""
        failures = 0
        while not stop.is_set():
            try:
                sent = await self.publish_pending()
                failures = 0
            except Exception as exc:  # NATS away, timeouts: the rows stay and are retried.
                failures += 1
                log.warning("outbox.publish_failed", error=repr(exc), attempt=failures)
                await sleep_unless_stopped(stop, min(0.2 * 2**failures, 5.0))
                continue
            if sent == 0:
                self._wakeup.clear()
                await wait_any(stop, self._wakeup, timeout=self._idle_poll_s)

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows; return how many were published."""
        rows = await self._store.read(_pending(self._batch_size))
        if not rows:
            return 0
        # Pipelined: every publish is on the wire before the first ack is awaited. One
        # connection keeps them in order, so the stream sees the outbox order.
        futures = [
            await self._js.publish_async(row["subject"], row["payload"], headers={MSG_ID_HEADER: msg_id(row)})
            for row in rows
        ]
        done, pending = await asyncio.wait(futures, timeout=self._ack_timeout_s)
        for future in pending:
            future.cancel()
        published_ids = [
            row["id"] for row, fut in zip(rows, futures, strict=True) if fut in done and not fut.exception()
        ]
        if published_ids:
            await self._store.run(_mark_published(published_ids))
            self.published += len(published_ids)
        if len(published_ids) < len(rows):
            errors = [repr(f.exception()) for f in done if f.exception()]
            raise RelayError(
                f"{len(rows) - len(published_ids)} of {len(rows)} publishes failed or timed out",
                errors[:1],
            )
        return len(published_ids)

    async def pending_count(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL").fetchone()[0])

        return await self._store.read(count)
