"""Fixtures shared by every tier: a real nats-server per test, polling with a deadline."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from shared.connection import Credentials, RefusedByServer, connect
from shared.ops.harness import NatsServer
from shared.partitions import PART_PREFIX, split_stored

T = TypeVar("T")


@pytest.fixture
def structlog_defaults() -> Iterator[None]:
    """structlog as it is before anything configures it, before and after the test: a test that
    configures logging (or runs a service in-process, which does) leaves no cached loggers or
    processors, nor a stream pytest has since closed, to the next."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def unique(prefix: str) -> str:
    """A fresh id per test, so tests sharing a system never see each other's data."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def poll(
    probe: Callable[[], Awaitable[T]], until: Callable[[T], bool], timeout: float = 15.0, interval: float = 0.05
) -> T:
    """Call ``probe`` until ``until(result)`` holds; fail with the last result at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {result!r}")
        await asyncio.sleep(interval)


def sync_probe(read: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A synchronous read (a file, a log, a local list) as a probe for ``poll``."""

    async def probe() -> T:
        return read()

    return probe


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


async def subject_count(js: JetStreamContext, stream: str, subject: str) -> int:
    """How many messages ``stream`` holds on ``subject`` as published (stored renamed by partition or not)."""
    total = 0
    for stored in (subject, f"{PART_PREFIX}.*.{subject}"):
        info = await js.stream_info(stream, subjects_filter=stored)
        total += sum((info.state.subjects or {}).values())
    return total


async def last_event(js: JetStreamContext, stream: str, subject: str) -> Any:
    """The decoded JSON body of the newest message on ``subject`` (as published) in ``stream``."""
    try:
        msg = await js.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        msg = await js.get_last_msg(stream, f"{PART_PREFIX}.*.{subject}")
    assert msg.data is not None, f"{stream} {subject}: a message with no body"
    return json.loads(msg.data)


async def stream_messages(js: JetStreamContext, stream: str, subject: str | None = None) -> list[Any]:
    """Every message still in ``stream`` (optionally only on ``subject``), oldest first."""
    info = await js.stream_info(stream)
    found: list[Any] = []
    if not info.state.messages:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        if subject is None or split_stored(msg.subject or "")[1] == subject:
            found.append(msg)
    return found


async def admitted(url: str, creds: Credentials, close: bool = False) -> Client | None:
    """A connection the server takes with ``creds``, or None if it refuses them; ``close``: closed
    at once (for polling until a reloaded server refuses a key)."""
    try:
        nc = await connect(url, creds, connect_timeout=2)
    except RefusedByServer:
        return None
    if close:
        await nc.close()
    return nc
