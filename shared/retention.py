"""Bounded storage: old inbox entries and published outbox rows are pruned on a schedule.

Why the inbox may forget: a consumer needs an event_id only as long as a duplicate of that
event can still reach it. A duplicate comes as a second copy in the stream (the stream's
duplicate window drops copies with the same Nats-Msg-Id), as a JetStream redelivery of an
unacknowledged message (which stops after MAX_DELIVERIES deliveries spaced by the retry delays,
each at most ACK_WAIT after the last), or as the same stream message delivered again from the
stream itself, for as long as the stream keeps it (a durable consumer deleted and made anew
starts from the stream's first message). So the floor is

    max(duplicate window, STREAM_MAX_AGE_S) + ACK_WAIT + sum of the retry delays over MAX_DELIVERIES

(a day and 152 s with the defaults), and a service refuses to start with a shorter
INBOX_RETENTION_S. Past the floor, a very late copy (a client re-sending a day-old event, a
server that lost its ack state during a long outage) meets the second line: every handler is a
state machine keyed by order_id that refuses to apply a step twice (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time

from shared.aio import sleep_unless_stopped
from shared.consumer import retry_delay_s
from shared.jetstream import ACK_WAIT_S, DUPLICATE_WINDOW_S
from shared.logging import get_logger
from shared.outbox import published_through
from shared.settings import Settings, SettingsError
from shared.store import Store

log = get_logger("retention")

PRUNE_CHUNK = 5_000
"""Rows deleted per transaction, so pruning never holds the write lock for long."""


def redelivery_horizon_s(max_deliveries: int) -> float:
    """The longest JetStream can keep redelivering one message before the consumer gives up on it."""
    return ACK_WAIT_S + sum(retry_delay_s(n) for n in range(1, max_deliveries + 1))


def inbox_retention_floor_s(max_deliveries: int, stream_max_age_s: float = 0.0) -> float:
    """The shortest safe INBOX_RETENTION_S (see the module docstring)."""
    return max(DUPLICATE_WINDOW_S, stream_max_age_s) + redelivery_horizon_s(max_deliveries)


def check_retention(settings: Settings) -> None:
    """Refuse settings under which a duplicate could outlive its inbox entry."""
    floor = inbox_retention_floor_s(settings.max_deliveries, settings.stream_max_age_s)
    if settings.inbox_retention_s < floor:
        longest, what = max(
            (DUPLICATE_WINDOW_S, "the duplicate window"), (settings.stream_max_age_s, "STREAM_MAX_AGE_S")
        )
        raise SettingsError(
            f"INBOX_RETENTION_S={settings.inbox_retention_s:g} is below the safe minimum {floor:g} s "
            f"({what} {longest:g} s + redelivery horizon "
            f"{redelivery_horizon_s(settings.max_deliveries):g} s for MAX_DELIVERIES={settings.max_deliveries})"
        )


async def prune(
    store: Store, *, inbox_retention_s: float, outbox_retention_s: float, now: float | None = None
) -> tuple[int, int]:
    """Delete inbox entries and published outbox rows older than their retention; return the counts."""
    now = time.time() if now is None else now
    inbox_deleted = 0
    while True:  # the received_at index finds old entries without scanning the rest
        deleted = await store.run(
            lambda tx: (
                tx.execute(
                    "DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox WHERE received_at < ? LIMIT ?)",
                    (now - inbox_retention_s, PRUNE_CHUNK),
                ).rowcount
            )
        )
        inbox_deleted += deleted
        if deleted < PRUNE_CHUNK:
            break
    outbox_deleted = 0
    after_id: int | None = 0
    while after_id is not None:
        deleted, after_id = await store.run(
            functools.partial(_prune_outbox_chunk, after_id=after_id, cutoff=now - outbox_retention_s)
        )
        outbox_deleted += deleted
    return inbox_deleted, outbox_deleted


def _prune_outbox_chunk(tx: sqlite3.Connection, after_id: int, cutoff: float) -> tuple[int, int | None]:
    """Delete published rows created before ``cutoff`` among the next PRUNE_CHUNK ids after ``after_id``.

    Published rows are those up to the relay's watermark, and outbox ids grow with creation time,
    so the rows old enough to prune are a prefix in id order: walking rowid ranges and stopping
    at the first younger row never scans the recent bulk of the table. Returns the count
    deleted and where to continue, or None when the old prefix is done.
    """
    rows = tx.execute(
        "SELECT id, created_at FROM outbox WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
        (after_id, published_through(tx), PRUNE_CHUNK),
    ).fetchall()
    old = [row_id for row_id, created_at in rows if created_at < cutoff]
    if not old:
        return 0, None
    deleted = tx.execute(
        "DELETE FROM outbox WHERE id > ? AND id <= ? AND created_at < ?", (after_id, old[-1], cutoff)
    ).rowcount
    return deleted, old[-1] if len(old) == len(rows) == PRUNE_CHUNK else None


async def run_pruning(store: Store, settings: Settings, stop: asyncio.Event) -> None:
    """Prune every PRUNE_INTERVAL_S until ``stop``."""
    while not await sleep_unless_stopped(stop, settings.prune_interval_s):
        try:
            inbox_deleted, outbox_deleted = await prune(
                store, inbox_retention_s=settings.inbox_retention_s, outbox_retention_s=settings.outbox_retention_s
            )
        except Exception as exc:  # a locked store: next time
            log.warning("retention.prune_failed", error=repr(exc))
            continue
        if inbox_deleted or outbox_deleted:
            log.info("retention.pruned", inbox=inbox_deleted, outbox=outbox_deleted)
