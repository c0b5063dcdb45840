"""Which SQLite file is a service's state: a store identity, registered once in NATS.

Each store file carries an identity (``store_identity``), made when the file is made. The first
store of a service to start registers its identity in the ``saga_stores`` KV bucket (a create:
one wins); from then on an instance whose ``DATA_DIR`` holds another store, or none, refuses to
run: it writes nothing, answers nothing, and exits with one line saying why. So two containers
with a volume each can never split a service's balances, stock or inbox between two files.

Replacing a lost store is a deliberate act: ``saga-store replace`` names the identity it
replaces, and the registry changes only if that is still the one registered (compare-and-swap).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from shared.aio import sleep_unless_stopped
from shared.lease import REGISTRY_BUCKET
from shared.logging import get_logger

log = get_logger("registry")

IDENTITY_TABLE = """
CREATE TABLE IF NOT EXISTS store_identity (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    store_id   TEXT NOT NULL,
    service    TEXT NOT NULL,
    created_at REAL NOT NULL
)"""


class NotTheRegisteredStore(Exception):
    """This instance's DATA_DIR does not hold the store registered for its service."""


@dataclass(frozen=True)
class Registration:
    store_id: str
    revision: int
    registered_at: str = ""
    host: str = ""
    path: str = ""


def store_identity(db_path: Path, service: str, busy_timeout_ms: int = 5000) -> str:
    """The identity of the store at ``db_path``, made now if the file (or an older file) has none.

    Its own small transaction: two instances starting on one DATA_DIR both read the one identity
    that the first of them wrote.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(IDENTITY_TABLE)
        conn.execute(
            "INSERT OR IGNORE INTO store_identity(singleton, store_id, service, created_at) VALUES (1, ?, ?, ?)",
            (uuid.uuid4().hex, service, time.time()),
        )
        (store_id,) = conn.execute("SELECT store_id FROM store_identity").fetchone()
        conn.execute("COMMIT")
        return str(store_id)
    finally:
        conn.close()


def read_store_identity(db_path: Path) -> str | None:
    """The identity of the store at ``db_path``, read only; None if it has none yet."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT store_id FROM store_identity").fetchone()
    except sqlite3.OperationalError:  # no such table: made before identities, or never opened
        return None
    finally:
        conn.close()
    return str(row[0]) if row else None


async def registered(js: JetStreamContext, key: str) -> Registration | None:
    """The store registered for ``key``, or None if none is yet."""
    return await _registered_in(await js.key_value(REGISTRY_BUCKET), key)


async def _registered_in(kv: KeyValue, key: str) -> Registration | None:
    try:
        entry = await kv.get(key)
    except (KeyNotFoundError, NotFoundError):
        return None
    try:
        value = json.loads(entry.value or b"{}")
        return Registration(
            str(value["store"]),
            entry.revision or 0,
            str(value.get("registered_at", "")),
            str(value.get("host", "")),
            str(value.get("path", "")),
        )
    except (KeyError, ValueError, TypeError):
        return Registration("unreadable", entry.revision or 0)


def _value(store_id: str, db_path: Path) -> bytes:
    return json.dumps(
        {
            "store": store_id,
            "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(),
            "path": str(db_path.resolve()),
        }
    ).encode()


async def claim(js: JetStreamContext, key: str, db_path: Path, service: str, busy_timeout_ms: int = 5000) -> str:
    """This instance's store identity, once it is the registered one (registering the first store
    of a new deployment); NotTheRegisteredStore if another store is registered."""
    current = await registered(js, key)
    if current is not None and not await asyncio.to_thread(db_path.exists):
        raise NotTheRegisteredStore(
            f"{db_path} does not exist, but {key} already has a store ({current.store_id}, registered"
            f" {current.registered_at} from {current.host}:{current.path}): this instance would start from"
            " nothing beside it. Give it that store's DATA_DIR, or replace the lost store on purpose"
            " with saga-store replace (docs/operations.md)"
        )
    local = await asyncio.to_thread(store_identity, db_path, service, busy_timeout_ms)
    if current is None:
        kv = await js.key_value(REGISTRY_BUCKET)
        try:
            await kv.create(key, _value(local, db_path))
            log.info("store.registered", key=key, store=local, path=str(db_path))
            return local
        except KeyWrongLastSequenceError:
            current = await registered(js, key)  # another instance registered first
    if current is None or current.store_id != local:
        raise NotTheRegisteredStore(
            f"{db_path} holds store {local}, but the registered store of {key} is"
            f" {current.store_id if current else '?'} ({current.host if current else ''}:"
            f"{current.path if current else ''}): this instance writes and answers nothing. Give it"
            " the registered store's DATA_DIR, or replace that store on purpose with saga-store replace"
            " (docs/operations.md)"
        )
    return local


async def replace(js: JetStreamContext, key: str, db_path: Path, service: str, replacing: str) -> str:
    """Register the store at ``db_path`` (made empty if missing) instead of ``replacing``; its identity.

    Refused unless ``replacing`` is the store registered now: nothing changes by accident.
    """
    current = await registered(js, key)
    if current is None or current.store_id != replacing:
        raise NotTheRegisteredStore(
            f"{key}: the registered store is {current.store_id if current else 'none'}, not {replacing};"
            " nothing changed"
        )
    local = await asyncio.to_thread(store_identity, db_path, service)
    kv = await js.key_value(REGISTRY_BUCKET)
    await kv.update(key, _value(local, db_path), last=current.revision)
    log.warning("store.replaced", key=key, store=local, replaced=replacing, path=str(db_path))
    return local


async def watch(js: JetStreamContext, key: str, store_id: str, stop: asyncio.Event, every_s: float) -> str:
    """Return (with why) once ``key`` no longer names ``store_id`` (an operator replaced it); or at ``stop``.

    The bucket is bound once: ``key_value`` asks the server for the bucket's stream info, which
    at every look would be a second request per partition, idle or not."""
    kv: KeyValue | None = None
    while not await sleep_unless_stopped(stop, every_s):
        try:
            kv = kv or await js.key_value(REGISTRY_BUCKET)
            current = await _registered_in(kv, key)
        except Exception:  # NATS away: look again later; the lease guards writing meanwhile
            continue
        if current is None or current.store_id != store_id:
            return f"the registered store of {key} is now {current.store_id if current else 'none'}, not {store_id}"
    return ""
