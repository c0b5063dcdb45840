"""The stores of one process (its partitions) run their transactions' bodies one at a time: on
their own threads, side by side, they would fight for the GIL at every SQLite statement."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from shared.store import Store

SCHEMA = "CREATE TABLE IF NOT EXISTS t(x INTEGER);"


async def test_two_stores_bodies_never_overlap_and_both_commit(tmp_path: Path) -> None:
    stores = [await Store.open(tmp_path / f"p{k}.sqlite3", SCHEMA) for k in range(2)]
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def body(tx: sqlite3.Connection) -> None:
        nonlocal inside, most_inside
        with guard:
            inside += 1
            most_inside = max(most_inside, inside)
        for i in range(200):
            tx.execute("INSERT INTO t VALUES (?)", (i,))  # each statement lets the GIL go
        time.sleep(0.002)  # and so does this: another thread could run now, if allowed
        with guard:
            inside -= 1

    try:
        await asyncio.gather(*(store.run(body) for _ in range(10) for store in stores))
        assert most_inside == 1
        for store in stores:
            (count,) = await store.read(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone())
            assert count == 10 * 200
    finally:
        for store in stores:
            await store.close()
