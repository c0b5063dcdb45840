"""The inbox: record-or-skip by event_id inside the caller's transaction.

Insert, don't check (DTM's barrier): ``INSERT OR IGNORE`` on the primary key and read back
``rowcount``. Inside ``BEGIN IMMEDIATE`` two deliveries of one event cannot both pass.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from shared.envelope import BadMessage, Envelope


def record(conn: sqlite3.Connection, envelope: Envelope) -> bool:
    """Mark ``envelope`` processed; return False if it already was (a duplicate to skip).

    An event_id seen before with another type or order_id is not a duplicate but a client
    reusing an id for a different event: that is bad input, not something to drop silently.
    """
    cursor = conn.execute(
        "INSERT OR IGNORE INTO inbox(event_id, event_type, order_id, received_at) VALUES (?, ?, ?, ?)",
        (envelope.event_id, envelope.type, envelope.order_id, time.time()),
    )
    if cursor.rowcount == 1:
        return True
    row = conn.execute("SELECT event_type, order_id FROM inbox WHERE event_id = ?", (envelope.event_id,)).fetchone()
    if row is not None and (reused := reused_id(envelope, (row["event_type"], row["order_id"]))):
        raise reused
    return False


SEEN_CHUNK = 500
"""Event ids per SELECT, well under SQLite's limit on bound parameters."""


def seen(conn: sqlite3.Connection, event_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Which of ``event_ids`` are recorded already, with the type and order_id they came with."""
    found: dict[str, tuple[str, str]] = {}
    for start in range(0, len(event_ids), SEEN_CHUNK):
        chunk = event_ids[start : start + SEEN_CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT event_id, event_type, order_id FROM inbox WHERE event_id IN ({marks})"
        for event_id, event_type, order_id in conn.execute(sql, chunk):
            found[event_id] = (event_type, order_id)
    return found


def record_all(conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
    """Mark ``envelopes`` processed in one statement; the caller checked ``seen`` first, so a
    conflict here is a bug and fails the transaction rather than skipping silently."""
    now = time.time()
    conn.executemany(
        "INSERT INTO inbox(event_id, event_type, order_id, received_at) VALUES (?, ?, ?, ?)",
        [(e.event_id, e.type, e.order_id, now) for e in envelopes],
    )


def reused_id(envelope: Envelope, seen_as: tuple[str, str]) -> BadMessage | None:
    """The error for an event_id seen before with another type or order_id, else None."""
    if seen_as == (envelope.type, envelope.order_id):
        return None
    return BadMessage(
        "event_id_reused",
        f"event_id {envelope.event_id!r} was already used by {seen_as[0]} for {seen_as[1]}",
    )
