"""The inbox: record-or-skip by event_id inside the caller's transaction.

Insert, don't check (DTM's barrier): ``INSERT OR IGNORE`` on the primary key and read back
``rowcount``. Inside ``BEGIN IMMEDIATE`` two deliveries of one event cannot both pass.
"""

from __future__ import annotations

import sqlite3
import time

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
    seen = conn.execute("SELECT event_type, order_id FROM inbox WHERE event_id = ?", (envelope.event_id,)).fetchone()
    if seen is not None and (seen["event_type"], seen["order_id"]) != (envelope.type, envelope.order_id):
        raise BadMessage(
            "event_id_reused",
            f"event_id {envelope.event_id!r} was already used by {seen['event_type']} for {seen['order_id']}",
        )
    return False
