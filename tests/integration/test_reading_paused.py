"""``reading_paused``: while a round's transaction runs, what the server sends waits in the
socket's buffer; all of it is read, in order, once the round is over."""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
import struct
import termios
from collections.abc import Callable, Sequence

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from order_svc.__main__ import ORDER_SERVICE
from shared.consumer import BatchLoop, Decoded
from shared.jetstream import reading_paused, socket_transport
from shared.ops.client import place_order
from shared.ops.harness import NatsServer
from shared.settings import Settings
from tests.conftest import poll, subject_count, unique
from tests.integration.conftest import running


def unread_bytes(nc: Client) -> int:
    """Bytes the kernel holds for ``nc``'s socket that nobody has read yet."""
    transport = socket_transport(nc)
    assert transport is not None
    fd = transport.get_extra_info("socket").fileno()
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])


async def test_messages_sent_while_reading_is_paused_wait_in_the_socket_and_arrive_after_in_order(
    nats_server: NatsServer, nc: Client
) -> None:
    # If nats-py moved its transport, the pause would silently do nothing: fail here instead.
    transport = socket_transport(nc)
    assert transport is not None and transport.is_reading()
    received: list[bytes] = []

    async def on_message(msg: Msg) -> None:
        received.append(msg.data)

    await nc.subscribe("paused.test", cb=on_message)
    await nc.flush()
    sender = await nats.connect(nats_server.url)
    try:
        with reading_paused(nc):
            assert not transport.is_reading()
            for i in range(100):
                await sender.publish("paused.test", str(i).encode())
            await sender.flush()
            # The server has written them to our socket, and the loop keeps running ...
            await poll(lambda: asyncio.sleep(0, unread_bytes(nc)), lambda unread: unread > 0)
            for _ in range(50):
                await asyncio.sleep(0)
            # ... but nothing was read.
            assert received == []
        assert transport.is_reading()
        await poll(lambda: asyncio.sleep(0, len(received)), lambda count: count == 100)
        assert received == [str(i).encode() for i in range(100)]
    finally:
        await sender.close()


async def test_a_transport_paused_by_someone_else_stays_paused(nc: Client) -> None:
    transport = socket_transport(nc)
    assert transport is not None
    transport.pause_reading()  # as asyncio's stream flow control does when its buffer is full
    try:
        with reading_paused(nc):
            assert not transport.is_reading()
        assert not transport.is_reading()
    finally:
        transport.resume_reading()


async def test_a_connection_with_no_socket_transport_is_left_alone() -> None:
    never_connected = Client()
    assert socket_transport(never_connected) is None
    with reading_paused(never_connected):
        pass


async def test_a_rounds_transaction_runs_with_the_services_reading_paused(
    js: JetStreamContext, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    reading_during_rounds: list[bool] = []
    apply_batch = BatchLoop._apply_batch

    def watched(self: BatchLoop, batch: Sequence[tuple[int, Decoded]], tx: sqlite3.Connection) -> None:
        transport = socket_transport(self._nc)
        reading_during_rounds.append(transport is None or transport.is_reading())
        apply_batch(self, batch, tx)

    monkeypatch.setattr(BatchLoop, "_apply_batch", watched)
    order_id = unique("o")
    async with running(ORDER_SERVICE, make_settings("order_svc")):
        await place_order(js, order_id, "alice", [{"sku": "widget", "quantity": 1, "unit_price_cents": 100}])
        await poll(lambda: subject_count(js, "ORDERS", f"orders.created.{order_id}"), lambda n: n == 1)
    assert reading_during_rounds and not any(reading_during_rounds)


async def test_overlapping_pauses_resume_reading_only_when_the_last_ends(nc: Client) -> None:
    # Two partitions' rounds on one connection: the first to end must not resume reading
    # under the other's transaction.
    transport = socket_transport(nc)
    assert transport is not None and transport.is_reading()
    first, second = reading_paused(nc), reading_paused(nc)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not transport.is_reading()
    second.__exit__(None, None, None)
    assert transport.is_reading()
