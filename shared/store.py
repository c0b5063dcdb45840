"""SQLite, one file per service: a single writer connection behind a lock, a reader for queries.

Why two connections: aiosqlite runs each connection on its own thread, and a query on the
writer while a batch transaction is open would read that batch's uncommitted rows. The reader
sees only committed state (WAL gives it a snapshot without blocking the writer).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

SCHEMA_VERSION = 1

SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    event_id    TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    received_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_age ON inbox(received_at);
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    subject      TEXT NOT NULL,
    payload      BLOB NOT NULL,
    created_at   REAL NOT NULL,
    published_at REAL,
    -- How often an operator re-queued this row (saga-audit --repair): each re-send goes out
    -- under a fresh Nats-Msg-Id so the stream keeps it; the event_id, and so every
    -- consumer's inbox decision, stays the same.
    resends      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox(id) WHERE published_at IS NULL;
"""

# Markers of SQLite errors that are about the store, not the message: another writer holds the
# lock, or the disk is full or failing. Retrying later is right; dead-lettering would lose work.
_TRANSIENT_MARKERS = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "database or disk is full",
    "disk I/O error",
    "unable to open database file",
)


def is_transient_db_error(exc: BaseException) -> bool:
    """True for SQLite errors worth retrying later (locks, disk trouble), not for bugs."""
    return isinstance(exc, sqlite3.OperationalError) and any(m in str(exc) for m in _TRANSIENT_MARKERS)


class Store:
    """A service's SQLite file: ``transaction()`` for writes, ``reader`` for queries."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self.reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path, service_schema: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000
    ) -> Store:
        """Open (creating if needed) the file, apply the schema, and return the store."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path, synchronous, busy_timeout_ms)
        await writer.executescript(SHARED_SCHEMA + service_schema)
        await writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        reader = await _connect(path, synchronous, busy_timeout_ms)
        await reader.execute("PRAGMA query_only = ON")
        return cls(path, writer, reader)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: commits on success, rolls back on any exception.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so two transactions can never both
        read a row and then both act on it.
        """
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await self._writer.rollback()
                raise
            else:
                await self._writer.commit()

    async def close(self) -> None:
        await self.reader.close()
        await self._writer.close()


@asynccontextmanager
async def savepoint(conn: aiosqlite.Connection, name: str = "msg") -> AsyncIterator[None]:
    """A nested unit inside a transaction: on exception only its own writes are undone."""
    await conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        await conn.execute(f"ROLLBACK TO {name}")
        await conn.execute(f"RELEASE {name}")
        raise
    else:
        await conn.execute(f"RELEASE {name}")


async def _connect(path: Path, synchronous: str, busy_timeout_ms: int) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the driver never opens
    # a transaction behind our back.
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute(f"PRAGMA synchronous = {synchronous}")
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await conn.execute("PRAGMA foreign_keys = ON")
    return conn
