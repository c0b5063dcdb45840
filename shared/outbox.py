"""The transactional outbox: events are rows written in the caller's transaction; the relay
publishes committed rows to JetStream with ``Nats-Msg-Id = event_id``.

Pipelined: a consumer hands the rows it just committed straight to the relay, which publishes
them without reading them back; only after a restart, a failed publish or rows written
elsewhere (timeouts, repairs) does the relay scan the table. A crash between publish and
marking the row published re-publishes it with the same ``Nats-Msg-Id``: the stream's
duplicate window drops it, and past the window every consumer's inbox does. Only the relay
talks to NATS.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from shared.aio import forward, reconnect_backoff_s, sleep_unless_stopped, wait_event
from shared.envelope import Event
from shared.jetstream import MSG_ID_HEADER, Publisher
from shared.logging import get_logger
from shared.store import Store
from shared.subjects import event_subject

log = get_logger("outbox")


@dataclass(frozen=True)
class OutboxRecord:
    """One event to publish: what an outbox row holds."""

    event_id: str
    subject: str
    payload: bytes
    msg_id: str
    """Its event_id, plus a suffix on an operator's re-send (so the stream keeps the copy)."""

    @property
    def message(self) -> tuple[str, bytes, dict[str, str]]:
        """What ``Publisher`` sends: subject, payload, and the msg id the stream dedups on."""
        return self.subject, self.payload, {MSG_ID_HEADER: self.msg_id}


def add(conn: sqlite3.Connection, events: Sequence[Event], causation_id: str | None) -> list[OutboxRecord]:
    """Queue ``events`` (caused by the event ``causation_id``, if any) for publishing; they go
    out only if the caller's transaction commits."""
    records = from_events(events, causation_id)
    insert(conn, records)
    return records


def from_events(events: Sequence[Event], causation_id: str | None) -> list[OutboxRecord]:
    """The outbox records of ``events``: ``add`` without the write, for a round that writes
    the records of all its messages with one statement."""
    records = []
    for event in events:
        event_id, payload = event.to_json(causation_id)
        records.append(OutboxRecord(event_id, event_subject(event.type, event.order_id), payload, event_id))
    return records


def insert(conn: sqlite3.Connection, records: Sequence[OutboxRecord]) -> None:
    """Write ``records`` as outbox rows in the caller's transaction (``add`` in two steps)."""
    if records:
        now = time.time()
        conn.executemany(
            "INSERT INTO outbox(event_id, subject, payload, created_at) VALUES (?, ?, ?, ?)",
            [(r.event_id, r.subject, r.payload, now) for r in records],
        )


async def requeue(store: Store, subject: str) -> int:
    """Send the events recorded on ``subject`` again (repair); return how many were queued."""

    def requeue_rows(tx: sqlite3.Connection) -> int:
        sql = "UPDATE outbox SET published_at = NULL, resends = resends + 1 WHERE subject = ?"
        return tx.execute(sql, (subject,)).rowcount

    return await store.run(requeue_rows)


def _pending(conn: sqlite3.Connection, limit: int) -> list[OutboxRecord]:
    sql = "SELECT event_id, subject, payload, resends FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?"
    return [
        OutboxRecord(event_id, subject, payload, f"{event_id}:resend:{resends}" if resends else event_id)
        for event_id, subject, payload, resends in conn.execute(sql, (limit,))
    ]


SAFETY_SCAN_S = 5.0
"""Read the table at least this often even under load, and whenever idle: any row that
somehow missed the in-memory hand-over is still published (copies are dropped by msg id)."""

MARK_CHUNK = 500
"""Event ids per UPDATE, well under SQLite's limit on bound parameters."""

MARK_INTERVAL_S = 0.1
"""Published rows are marked in one transaction at most this often, not one per publish round:
under load a round is a few messages, and its own transaction cost as much as the publishing.
A crash re-publishes at most this long's worth of rows, under the same Nats-Msg-Id."""


def _mark_published(tx: sqlite3.Connection, event_ids: list[str]) -> None:
    now = time.time()
    for start in range(0, len(event_ids), MARK_CHUNK):
        chunk = event_ids[start : start + MARK_CHUNK]
        marks = ",".join("?" * len(chunk))
        tx.execute(f"UPDATE outbox SET published_at = ? WHERE event_id IN ({marks})", (now, *chunk))


class RelayError(Exception):
    """Some publishes of a batch were not acknowledged; their rows stay pending."""


class Relay:
    """Publishes committed outbox rows in id order, pipelined, and marks them published."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        *,
        batch_size: int = 1024,
        ack_timeout_s: float = 5.0,
        idle_poll_s: float = 1.0,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._batch_size = batch_size
        self._ack_timeout_s = ack_timeout_s
        self._idle_poll_s = idle_poll_s
        self._wakeup = asyncio.Event()
        self._queue: deque[OutboxRecord] = deque()
        self._scan = True  # at start, rows left by the previous run may be waiting
        self._last_scan = 0.0
        self._unmarked: list[str] = []  # published and acknowledged, not yet marked in the table
        self._marks_due = 0.0
        self._publishing = False  # the relay task has a batch of its own on the wire
        self._in_flight = 0  # batches sent straight from a round, acks not all in
        self._all_landed = asyncio.Event()
        self._all_landed.set()
        self._last_sent = 0.0

    def enqueue(self, records: Sequence[OutboxRecord]) -> None:
        """Hand over rows a transaction just committed: published without reading them back."""
        if records:
            self._queue.extend(records)
            self._wakeup.set()

    async def send(self, records: Sequence[OutboxRecord]) -> None:
        """Publish rows a round just committed, from the round itself: on the happy path the
        relay task never wakes, and the round's events leave in the same write as its acks.

        Only when the relay has nothing of its own to publish (no scan, no queue, no batch on
        the wire), so the stream still sees commit order; otherwise the rows join its queue.
        """
        if not records:
            return
        if self._scan or self._queue or self._publishing:
            self.enqueue(records)
            return
        self._last_sent = time.monotonic()
        self._in_flight += 1
        self._all_landed.clear()
        messages = [r.message for r in records]
        try:
            await self._publisher.send(messages, self._ack_timeout_s, functools.partial(self._landed, records))
        except Exception as exc:  # NATS away: the rows are in the table, the relay task retries
            self._landed_count_down()
            log.warning("outbox.publish_failed", error=repr(exc))
            self.wake()

    def _landed(self, records: Sequence[OutboxRecord], errors: list[str | None]) -> None:
        published = [r.event_id for r, error in zip(records, errors, strict=True) if error is None]
        if published:
            if not self._unmarked:  # a new marking window: wake the relay task when it closes
                asyncio.get_running_loop().call_later(MARK_INTERVAL_S, self._wakeup.set)
            self._note_published(published)
        if len(published) < len(records):
            first_error = next(error for error in errors if error is not None)
            log.warning("outbox.publish_failed", failed=len(records) - len(published), error=first_error)
            self.wake()  # what did not go out is still unpublished in the table
        self._landed_count_down()

    def _landed_count_down(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._all_landed.set()

    def _note_published(self, event_ids: list[str]) -> None:
        if not self._unmarked:
            self._marks_due = time.monotonic() + MARK_INTERVAL_S
        self._unmarked.extend(event_ids)

    async def landed(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until every batch sent from a round has its acks."""
        await wait_event(self._all_landed, timeout_s)

    def wake(self) -> None:
        """Rows were committed outside a consumer batch (timeouts, repairs): read the table."""
        self._scan = True
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; back off while NATS is away, never busy-loop."""
        async with forward(stop, self._wakeup):  # a stop also ends the idle wait
            await self._rounds(stop)

    async def _rounds(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                # Cleared before looking, so a hand-over while we look is never missed.
                self._wakeup.clear()
                sent = await self.publish_pending()
                if sent == 0:
                    marks_in = self._marks_due - time.monotonic() if self._unmarked else self._idle_poll_s
                    await wait_event(self._wakeup, max(min(marks_in, self._idle_poll_s), 0.0))
                    quiet = not self._wakeup.is_set()
                    if quiet and self._unmarked:
                        await self.flush_marks()  # record what went out
                    elif quiet and time.monotonic() - self._last_sent > self._idle_poll_s:
                        self._scan = True  # idle: look at the table (cheap when it is clean)
                failures = 0
            except Exception as exc:  # NATS away, timeouts: the rows stay and are retried.
                failures += 1
                log.warning("outbox.publish_failed", error=repr(exc), attempt=failures)
                await sleep_unless_stopped(stop, reconnect_backoff_s(failures))

    async def _next_batch(self) -> list[OutboxRecord]:
        if self._scan or time.monotonic() - self._last_scan > SAFETY_SCAN_S:
            # Rows sent from rounds and not yet marked would read as still to publish.
            await self.landed(self._ack_timeout_s)
            await self.flush_marks()
            self._last_scan = time.monotonic()
            # The table holds everything the queue does, in commit order: read it instead.
            self._scan = False
            self._queue.clear()
            records = await self._store.read(functools.partial(_pending, limit=self._batch_size))
            self._scan = self._scan or len(records) == self._batch_size  # more left behind
            return records
        count = min(len(self._queue), self._batch_size)
        return [self._queue.popleft() for _ in range(count)]

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows; return how many were published."""
        self._publishing = True  # rounds queue their rows behind this batch meanwhile
        try:
            return await self._publish_next()
        finally:
            self._publishing = False

    async def _publish_next(self) -> int:
        records = await self._next_batch()
        if not records:
            return 0
        errors = await self._publisher.publish([r.message for r in records], self._ack_timeout_s)
        published = [r.event_id for r, error in zip(records, errors, strict=True) if error is None]
        if published:
            self._note_published(published)
            if time.monotonic() >= self._marks_due:
                await self.flush_marks()
        if len(published) < len(records):
            self._scan = True  # what did not go out is still unpublished in the table
            first_error = next(error for error in errors if error is not None)
            raise RelayError(f"{len(records) - len(published)} of {len(records)} publishes failed: {first_error}")
        return len(published)

    async def flush_marks(self) -> None:
        """Mark every published row as such, in one transaction."""
        if not self._unmarked:
            return
        event_ids, self._unmarked = self._unmarked, []
        try:
            await self._store.run(functools.partial(_mark_published, event_ids=event_ids))
        except BaseException:
            self._unmarked = event_ids + self._unmarked
            raise

    async def pending_count(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL").fetchone()[0])

        return await self._store.read(count)
