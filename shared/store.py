"""SQLite, one file per service: a single writer connection behind a lock, a reader for queries.

Why two connections: a query on the writer while a batch transaction is open would read that
batch's uncommitted rows. The reader sees only committed state (WAL gives it a snapshot
without blocking the writer).
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from shared.lease import Lease, LeaseLost
from shared.logging import get_logger

T = TypeVar("T")

log = get_logger("store")

SCHEMA_VERSION = 2

INBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    event_id    TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    received_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_by_age ON inbox(received_at);
"""

OUTBOX_TABLE = """
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL,
    subject      TEXT NOT NULL,
    payload      BLOB NOT NULL,
    created_at   REAL NOT NULL,
    -- 0 for the event as emitted, n for an operator's n-th re-send of it (saga-audit --repair):
    -- a copy of the row that goes out under a fresh Nats-Msg-Id, so the stream keeps it. The
    -- event_id, and so every consumer's inbox decision, stays the same.
    resends      INTEGER NOT NULL DEFAULT 0,
    -- The W3C traceparent of the handling that emitted it (shared.tracing), NULL untraced: the
    -- trace survives the relay and a restart, and a re-send stays in the order's trace.
    traceparent  TEXT
)"""

OUTBOX_RELAY_TABLE = """
CREATE TABLE IF NOT EXISTS outbox_relay (
    -- How far the relay has published: every outbox row with an id up to published_through
    -- is in its stream. One row rewritten now and then, instead of marking each outbox row.
    singleton         INTEGER PRIMARY KEY CHECK (singleton = 1),
    published_through INTEGER NOT NULL
)"""

OUTBOX_RELAY_ROW = "INSERT OR IGNORE INTO outbox_relay(singleton, published_through) VALUES (1, 0)"

WRITER_EPOCHS_TABLE = """
CREATE TABLE IF NOT EXISTS writer_epochs (
    -- One row per lease epoch that wrote this file (shared/lease.py): the newest is the only one
    -- allowed to commit. Every commit checks that and counts itself here, in its own
    -- transaction, so a writer that lost its lease cannot commit after a newer one took over,
    -- and the history shows which epoch committed what, and until when.
    epoch          INTEGER PRIMARY KEY,
    instance       TEXT NOT NULL,
    machine        TEXT NOT NULL,
    pid            INTEGER NOT NULL,
    acquired_at    REAL NOT NULL,
    commits        INTEGER NOT NULL DEFAULT 0,
    last_commit_at REAL
)"""

SHARED_SCHEMA = (
    INBOX_SCHEMA + ";\n".join((OUTBOX_TABLE, OUTBOX_RELAY_TABLE, OUTBOX_RELAY_ROW, WRITER_EPOCHS_TABLE)) + ";\n"
)

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
    """A service's SQLite file: ``run(fn)`` for a write transaction, ``read(fn)`` for a query.

    ``fn`` is a plain synchronous function of a ``sqlite3.Connection``; it runs on that
    connection's own thread in one hop. A statement awaited through aiosqlite costs a thread
    round trip (~50 us here) while one run on the thread costs ~2 us, and a fetched batch runs
    hundreds of statements: one hop per batch is what makes group commit pay (docs/performance.md).
    """

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        fence: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._fence = fence

    @classmethod
    async def open(
        cls,
        path: Path,
        service_schema: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        lease: Lease | None = None,
        migrate: Callable[[sqlite3.Connection], None] | None = None,
    ) -> Store:
        """Open (creating if needed) the file, apply the schema, and return the store.

        ``migrate`` brings a file of an earlier version of the service up to date, in one
        transaction before the schema is applied; it must be a no-op on a new or current file.
        With ``lease``, the file is written only under it: its epoch must be newer than any that
        wrote the file before, and every commit is fenced by it (``WRITER_EPOCHS_TABLE``).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path, synchronous, busy_timeout_ms)
        try:
            await _on_thread(writer, _in_transaction, _migrate_outbox_to_watermark)
            await _on_thread(writer, _in_transaction, _migrate_outbox_traceparent)
            if migrate is not None:
                await _on_thread(writer, _in_transaction, migrate)
            await writer.executescript(SHARED_SCHEMA + service_schema)
            await writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            fence = None
            if lease is not None:
                await _on_thread(writer, _in_transaction, functools.partial(_claim_epoch, lease=lease))
                fence = functools.partial(_fence, lease=lease)
        except BaseException:
            await writer.close()
            raise
        reader = await _connect(path, synchronous, busy_timeout_ms)
        await reader.execute("PRAGMA query_only = ON")
        return cls(path, writer, reader, fence)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` as one write transaction: committed if it returns, rolled back if it raises.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so two transactions can never both
        read a row and then both act on it. Under a lease, the fence runs last, just before
        COMMIT: a transaction that is no longer this writer's to commit is rolled back.
        """
        async with self._write_lock:
            return await _on_thread(self._writer, _in_transaction, fn, self._fence)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run the query ``fn`` on the reader, which sees only committed state."""
        return await _on_thread(self._reader, fn)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()


def add_missing_columns(tx: sqlite3.Connection, table: str, *columns: str) -> list[str]:
    """Add each column (``"name TYPE"``) that ``table`` lacks, for a service's ``migrate``; return
    the names added. None for a table not made yet: the schema's CREATE TABLE has them all."""
    present = {row[1] for row in tx.execute(f"PRAGMA table_info({table})")}
    added = []
    for column in columns:
        name = column.split()[0]
        if present and name not in present:
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            added.append(name)
    return added


def _migrate_outbox_to_watermark(tx: sqlite3.Connection) -> None:
    """Schema 1 to 2: the relay's progress moves from a ``published_at`` per outbox row to one
    watermark. A no-op on a new file and on one already migrated.

    The watermark is set just below the first row never published, so rows published after it
    go out once more at the next start (under the same Nats-Msg-Id: the stream's duplicate
    window, or past it every consumer's inbox, drops them). The table is rebuilt because its
    UNIQUE event_id cannot be dropped in place, and a re-send is now a second row of the same
    event. AUTOINCREMENT's high-water mark is kept, so no id is ever handed out twice.
    """
    columns = {row[1] for row in tx.execute("PRAGMA table_info(outbox)")}
    if "published_at" not in columns:
        return
    (through,) = tx.execute(
        "SELECT COALESCE((SELECT MIN(id) - 1 FROM outbox WHERE published_at IS NULL), (SELECT MAX(id) FROM outbox), 0)"
    ).fetchone()
    (high_water,) = tx.execute("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)").fetchone()
    tx.execute("ALTER TABLE outbox RENAME TO outbox_schema_1")
    for statement in (OUTBOX_TABLE, OUTBOX_RELAY_TABLE, OUTBOX_RELAY_ROW):
        tx.execute(statement)
    tx.execute(
        "INSERT INTO outbox(id, event_id, subject, payload, created_at, resends)"
        " SELECT id, event_id, subject, payload, created_at, resends FROM outbox_schema_1"
    )
    tx.execute("DROP TABLE outbox_schema_1")
    kept = tx.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'", (high_water,))
    if kept.rowcount == 0:  # nothing was copied, so the new table has no sequence row yet
        tx.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('outbox', ?)", (high_water,))
    tx.execute("UPDATE outbox_relay SET published_through = ?", (through,))


def _migrate_outbox_traceparent(tx: sqlite3.Connection) -> None:
    """An outbox from before tracing gets its (empty) ``traceparent`` column."""
    add_missing_columns(tx, "outbox", "traceparent TEXT")


_after_commit: dict[int, list[Callable[[], None]]] = {}
"""Per open transaction (keyed by its connection: sqlite3 connections take no weak references),
what to run once it commits. Emptied at every commit and rollback, so nothing outlives one."""


def after_commit(tx: sqlite3.Connection, fn: Callable[[], None]) -> None:
    """Run ``fn`` once the transaction ``tx`` commits, and never if it (or the savepoint this is
    called in) rolls back: for what must count only what was really stored, as metrics do. It runs
    on the store's thread right after COMMIT; it must be quick and must not touch the store."""
    _after_commit.setdefault(id(tx), []).append(fn)


def _run_after_commit(conn: sqlite3.Connection) -> None:
    for fn in _after_commit.pop(id(conn), ()):
        try:
            fn()
        except Exception:  # committed already: a failing observer must not look like a failed commit
            log.exception("store.after_commit_failed")


_ONE_BODY_AT_A_TIME = threading.Lock()
"""Held while a transaction's body runs, by every store of the process: partitions' transactions
on their own threads would otherwise fight for the GIL at every SQLite statement (each releases
it), which costs several times the CPU of running the same bodies one after another
(docs/performance.md, "Partitions"). The commit, which waits on the disk without the GIL, stays
outside, so one partition's ``fdatasync`` overlaps another's body."""


def _in_transaction(
    conn: sqlite3.Connection,
    fn: Callable[[sqlite3.Connection], T],
    fence: Callable[[sqlite3.Connection], None] | None = None,
) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        with _ONE_BODY_AT_A_TIME:
            result = fn(conn)
            if fence is not None:
                fence(conn)
    except BaseException:
        _after_commit.pop(id(conn), None)
        conn.rollback()
        raise
    try:
        conn.commit()
    except BaseException:
        _after_commit.pop(id(conn), None)  # not committed: its observers must not run with the next one
        raise
    _run_after_commit(conn)
    return result


def _claim_epoch(tx: sqlite3.Connection, lease: Lease) -> None:
    """Record ``lease``'s epoch as the file's writer; refuse if a newer epoch already wrote it."""
    lease.check()
    (newest,) = tx.execute("SELECT COALESCE(MAX(epoch), 0) FROM writer_epochs").fetchone()
    if lease.epoch is None or newest >= lease.epoch:
        raise LeaseLost(f"{lease.key}: this file was written under epoch {newest}, not older than ours ({lease.epoch})")
    holder = lease.holder
    tx.execute(
        "INSERT INTO writer_epochs(epoch, instance, machine, pid, acquired_at) VALUES (?, ?, ?, ?, ?)",
        (lease.epoch, holder.instance, holder.machine, holder.pid, time.time()),
    )


def _fence(tx: sqlite3.Connection, lease: Lease) -> None:
    """Before every commit: the lease is still valid by our clock, and no newer epoch has the file."""
    lease.check()
    counted = tx.execute(
        "UPDATE writer_epochs SET commits = commits + 1, last_commit_at = ?"
        " WHERE epoch = ? AND epoch = (SELECT MAX(epoch) FROM writer_epochs)",
        (time.time(), lease.epoch),
    ).rowcount
    if counted != 1:
        raise LeaseLost(f"{lease.key}: a newer epoch than ours ({lease.epoch}) writes this file")


class WriterLock:
    """An exclusive lock (``flock``) on ``<file>.writer-lock`` beside a store, held while writing it.

    The second guard after the lease: two processes that can reach the same file can never
    both have it open for writing, whatever the leases say. The kernel drops the lock when its
    process dies, however it dies. (Over NFS, flock is only as good as the server's locking.)
    """

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".writer-lock")
        self._fd: int | None = None

    def try_lock(self, holder: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """Who wrote the lock file last (the holder, while it is held)."""
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


async def _on_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(sqlite3_connection, *args)`` on ``conn``'s own thread, in the caller's context.

    aiosqlite has no public way to run a callable on its thread; ``_execute`` is what each of
    its public methods is made of (aiosqlite is pinned below its next minor version, and the
    whole test suite runs through here). The caller's contextvars travel along, so log lines
    written on that thread still carry the service and the event they are about.
    """
    context = contextvars.copy_context()
    return cast(T, await conn._execute(context.run, fn, conn._conn, *args))  # type: ignore[no-untyped-call]


@contextmanager
def savepoint(conn: sqlite3.Connection, name: str = "msg") -> Iterator[None]:
    """A nested unit inside a transaction: on exception only its own writes are undone."""
    conn.execute(f"SAVEPOINT {name}")
    pending = _after_commit.get(id(conn))
    registered = len(pending) if pending else 0
    try:
        yield
    except BaseException:
        if pending := _after_commit.get(id(conn)):
            del pending[registered:]  # what the undone writes registered is undone with them
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    else:
        conn.execute(f"RELEASE {name}")


async def _connect(path: Path, synchronous: str, busy_timeout_ms: int) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the driver never opens
    # a transaction behind our back.
    conn = await aiosqlite.connect(path, isolation_level=None)
    await _on_thread(conn, configure, synchronous, busy_timeout_ms)
    return conn


def configure(conn: sqlite3.Connection, synchronous: str = "FULL", busy_timeout_ms: int = 5000) -> None:
    """The settings every connection to a service's file runs with (``Store.open``'s defaults)."""
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    # SQLite's temporary structures (statement and savepoint journals past their in-memory
    # size, sorters, temporary b-trees) in memory: on disk, a file was created and unlinked in
    # /var/tmp about every other round under load (seen with strace and perf).
    conn.execute("PRAGMA temp_store = MEMORY")
