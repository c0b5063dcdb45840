"""The transactional outbox: events are rows written in the caller's transaction; the relay
publishes committed rows to JetStream with ``Nats-Msg-Id = event_id``.

Pipelined: a consumer hands the rows it just committed straight to the relay, which publishes
them without reading them back; only after a restart, a failed publish or rows written
elsewhere (timeouts, repairs) does the relay scan the table. Its progress is one watermark,
"every row up to id N is published", saved every MARK_INTERVAL_S: an outbox row is written
once and never updated. A crash re-publishes what went out after the last save, with the same
``Nats-Msg-Id``: the stream's duplicate window drops it, and past the window every consumer's
inbox does. Only the relay talks to NATS.
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
from shared.tracing import TRACEPARENT

log = get_logger("outbox")


@dataclass(slots=True)
class OutboxRecord:
    """One event to publish: what an outbox row holds."""

    event_id: str
    subject: str
    payload: bytes
    msg_id: str
    """Its event_id, plus a suffix on an operator's re-send (so the stream keeps the copy)."""
    row_id: int = 0
    """Its outbox row's id, set by ``insert``: the relay's watermark counts in these."""
    traceparent: str | None = None
    """The span of the handling that emitted it (shared.tracing): the next handling's parent."""

    @property
    def message(self) -> tuple[str, bytes, dict[str, str]]:
        """What ``Publisher`` sends: subject, payload, and headers: the msg id the stream dedups
        on, and the trace the event belongs to, if tracing."""
        if self.traceparent is None:
            return self.subject, self.payload, {MSG_ID_HEADER: self.msg_id}
        return self.subject, self.payload, {MSG_ID_HEADER: self.msg_id, TRACEPARENT: self.traceparent}


def add(
    conn: sqlite3.Connection, events: Sequence[Event], causation_id: str | None, traceparent: str | None = None
) -> list[OutboxRecord]:
    """Queue ``events`` (caused by the event ``causation_id``, if any, in the span ``traceparent``)
    for publishing; they go out only if the caller's transaction commits."""
    records = from_events(events, causation_id, traceparent)
    insert(conn, records)
    return records


def from_events(
    events: Sequence[Event], causation_id: str | None, traceparent: str | None = None
) -> list[OutboxRecord]:
    """The outbox records of ``events``: ``add`` without the write, for a round that writes
    the records of all its messages with one statement. An event's own ``traceparent`` (a
    sub-step's span) wins over the one given."""
    records = []
    for event in events:
        event_id, payload = event.to_json(causation_id)
        records.append(
            OutboxRecord(event_id, event.subject, payload, event_id, traceparent=event.traceparent or traceparent)
        )
    return records


def insert(conn: sqlite3.Connection, records: Sequence[OutboxRecord]) -> None:
    """Write ``records`` as outbox rows in the caller's transaction (``add`` in two steps), and
    set each one's ``row_id``."""
    if records:
        now = time.time()
        conn.executemany(
            "INSERT INTO outbox(event_id, subject, payload, created_at, traceparent) VALUES (?, ?, ?, ?, ?)",
            [(r.event_id, r.subject, r.payload, now, r.traceparent) for r in records],
        )
        # One writer holds the lock and AUTOINCREMENT never reuses an id: the statement's rows
        # took consecutive ids ending at the last one inserted.
        (last,) = conn.execute("SELECT last_insert_rowid()").fetchone()
        for row_id, record in enumerate(records, start=last - len(records) + 1):
            record.row_id = row_id


async def requeue(store: Store, subject: str) -> int:
    """Send the events recorded on ``subject`` again (repair); return how many were queued.

    Each event gets a new row, a copy of its latest send with ``resends`` one higher, so it goes
    out under a Nats-Msg-Id the stream has not seen (``msg_id_of``) and behind the watermark.
    """

    def requeue_rows(tx: sqlite3.Connection) -> int:
        sql = (
            "INSERT INTO outbox(event_id, subject, payload, created_at, resends, traceparent)"
            " SELECT event_id, subject, payload, ?, MAX(resends) + 1, traceparent FROM outbox WHERE subject = ?"
            " GROUP BY event_id ORDER BY MIN(id)"
        )
        return tx.execute(sql, (time.time(), subject)).rowcount

    return await store.run(requeue_rows)


def msg_id_of(event_id: str, resends: int) -> str:
    """The Nats-Msg-Id of a row: its event_id, with a suffix on an operator's re-send."""
    return f"{event_id}:resend:{resends}" if resends else event_id


def published_through(conn: sqlite3.Connection) -> int:
    """The saved watermark: every outbox row with an id up to this one is published."""
    return int(conn.execute("SELECT published_through FROM outbox_relay").fetchone()[0])


def _rows_after(conn: sqlite3.Connection, after: int | None, limit: int) -> tuple[int, list[OutboxRecord]]:
    """The saved watermark if ``after`` is None, and up to ``limit`` rows past ``after`` (or it)."""
    start = published_through(conn) if after is None else after
    sql = "SELECT id, event_id, subject, payload, resends, traceparent FROM outbox WHERE id > ? ORDER BY id LIMIT ?"
    return start, [
        OutboxRecord(event_id, subject, payload, msg_id_of(event_id, resends), row_id, traceparent)
        for row_id, event_id, subject, payload, resends, traceparent in conn.execute(sql, (start, limit))
    ]


def save_published_through(tx: sqlite3.Connection, through: int) -> None:
    """Move the saved watermark up to ``through``; never down (a late save of an older one is a no-op)."""
    tx.execute("UPDATE outbox_relay SET published_through = ? WHERE published_through < ?", (through, through))


SAFETY_SCAN_S = 5.0
"""Read the table at least this often even under load, and whenever idle: any row that
somehow missed the in-memory hand-over is still published (copies are dropped by msg id)."""

MARK_INTERVAL_S = 0.1
"""The watermark is saved at most this often, not once per publish round: under load a round
is a few messages, and a transaction of its own would cost as much as the publishing. A crash
re-publishes at most this long's worth of rows, under the same Nats-Msg-Id."""

MAX_TRACKED = 100_000
"""Rows published past a hole in the ids (a row not yet published: written outside a round and
not yet scanned, or whose publish failed) are remembered until the hole is filled and the
watermark can pass them. If a hole lasts, this caps the memory: the relay forgets them, and the
next scans publish them again (the stream drops the copies)."""


class RelayError(Exception):
    """Some publishes of a batch were not acknowledged; their rows stay pending."""


class Relay:
    """Publishes committed outbox rows in id order, pipelined, and keeps the watermark.

    The watermark advances over ids in order: past every row whose publish was acknowledged,
    and past every id a scan found no row for (a scan reads all committed rows in its id range:
    the one writer commits ids in order, so a missing id was rolled back or pruned, never late).
    """

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
        self._scan_after: int | None = None  # where a sweep of the table goes on from; None: the watermark
        self._last_scan = 0.0
        self._through: int | None = None  # the watermark in memory; None until read from the table
        self._saved_through = 0
        self._published_ahead: set[int] = set()  # acknowledged ids past the watermark, waiting on a hole
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
        published = [r.row_id for r, error in zip(records, errors, strict=True) if error is None]
        self._note_published(published)
        if len(published) < len(records):
            first_error = next(error for error in errors if error is not None)
            log.warning("outbox.publish_failed", failed=len(records) - len(published), error=first_error)
            self.wake()  # what did not go out is still past the watermark in the table
        self._landed_count_down()

    def _landed_count_down(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._all_landed.set()

    def _note_published(self, row_ids: Sequence[int], *, swept_through: int | None = None) -> None:
        """Acknowledged: ``row_ids``, and if a scan's whole batch, every id up to ``swept_through``."""
        if self._through is None:
            self._published_ahead.update(row_ids)
            return
        through = self._through
        # Ids at or below the watermark (a row sent twice: by a scan, then from the queue) are done.
        self._published_ahead.update(row_id for row_id in row_ids if row_id > through)
        if swept_through is not None and swept_through > through:
            through = swept_through
            self._published_ahead = {row_id for row_id in self._published_ahead if row_id > through}
        while through + 1 in self._published_ahead:
            through += 1
            self._published_ahead.discard(through)
        if len(self._published_ahead) > MAX_TRACKED:
            log.warning("outbox.watermark_held", through=through, published_ahead=len(self._published_ahead))
            self._published_ahead.clear()
        if through > self._through:
            if self._through == self._saved_through:  # a new saving window: wake the relay when it closes
                self._marks_due = time.monotonic() + MARK_INTERVAL_S
                asyncio.get_running_loop().call_later(MARK_INTERVAL_S, self._wakeup.set)
            self._through = through

    async def landed(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until every batch sent from a round has its acks."""
        await wait_event(self._all_landed, timeout_s)

    def wake(self) -> None:
        """Rows were committed outside a consumer batch (timeouts, repairs): read the table."""
        self._scan = True
        self._wakeup.set()

    @property
    def _unsaved(self) -> bool:
        return self._through is not None and self._through > self._saved_through

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
                    saving_in = self._marks_due - time.monotonic() if self._unsaved else self._idle_poll_s
                    await wait_event(self._wakeup, max(min(saving_in, self._idle_poll_s), 0.0))
                    quiet = not self._wakeup.is_set()
                    if quiet and self._unsaved:
                        await self.save_watermark()  # record how far we got
                    elif quiet and time.monotonic() - self._last_sent > self._idle_poll_s:
                        self._scan = True  # idle: look at the table (cheap when it is clean)
                failures = 0
            except Exception as exc:  # NATS away, timeouts: the rows stay and are retried.
                failures += 1
                log.warning("outbox.publish_failed", error=repr(exc), attempt=failures)
                await sleep_unless_stopped(stop, reconnect_backoff_s(failures))

    async def _next_batch(self) -> tuple[list[OutboxRecord], tuple[int, int] | None]:
        """The next rows to publish and, for a scan, the id range ``(after, last]`` it read: every
        committed row in that range is among the rows, or was published already."""
        if self._scan or time.monotonic() - self._last_scan > SAFETY_SCAN_S:
            # Rows sent from rounds must have their acks in, or the scan would send them again.
            await self.landed(self._ack_timeout_s)
            await self.save_watermark()
            self._last_scan = time.monotonic()
            # The table holds everything the queue does, in commit order: read it instead.
            self._scan = False
            self._queue.clear()
            from_id = self._through
            if self._scan_after is not None and (from_id is None or self._scan_after > from_id):
                from_id = self._scan_after
            after, rows = await self._store.read(functools.partial(_rows_after, after=from_id, limit=self._batch_size))
            if self._through is None:  # the first scan: where the previous run got to
                self._through = self._saved_through = after
            more = len(rows) == self._batch_size
            self._scan = self._scan or more  # more left behind: the sweep goes on from there
            self._scan_after = rows[-1].row_id if more else None
            read = (after, rows[-1].row_id) if rows else None
            return [r for r in rows if r.row_id not in self._published_ahead], read
        count = min(len(self._queue), self._batch_size)
        return [self._queue.popleft() for _ in range(count)], None

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows; return how many were published."""
        self._publishing = True  # rounds queue their rows behind this batch meanwhile
        try:
            return await self._publish_next()
        finally:
            self._publishing = False

    async def _publish_next(self) -> int:
        records, read = await self._next_batch()
        errors = await self._publisher.publish([r.message for r in records], self._ack_timeout_s) if records else []
        published = [r.row_id for r, error in zip(records, errors, strict=True) if error is None]
        # A scan's rows all out: the watermark may pass the whole range it read, holes included,
        # if nothing before that range is still to go (a sweep's later batches may lie past a
        # row that failed in an earlier one).
        all_out = len(published) == len(records)
        swept = read is not None and all_out and self._through is not None and read[0] <= self._through
        self._note_published(published, swept_through=read[1] if swept and read else None)
        if self._unsaved and time.monotonic() >= self._marks_due:
            await self.save_watermark()
        if not all_out:
            self._scan = True  # what did not go out is still past the watermark in the table
            first_error = next(error for error in errors if error is not None)
            raise RelayError(f"{len(records) - len(published)} of {len(records)} publishes failed: {first_error}")
        return len(published)

    async def save_watermark(self) -> None:
        """Save the watermark, in one small transaction."""
        through = self._through
        if through is None or through <= self._saved_through:
            return
        await self._store.run(functools.partial(save_published_through, through=through))
        self._saved_through = max(self._saved_through, through)

    async def pending_count(self) -> int:
        """Rows committed and not yet acknowledged by their stream, as this relay knows it: past
        its watermark in memory (the saved one trails it by up to a second), less those
        acknowledged beyond a hole."""
        through, ahead = self._through, len(self._published_ahead)

        def count(conn: sqlite3.Connection) -> int:
            after = published_through(conn) if through is None else through
            return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE id > ?", (after,)).fetchone()[0])

        return max(await self._store.read(count) - ahead, 0)
