"""``reading_paused``: while a round's transaction runs, what the server sends waits in the
socket's buffer; all of it is read, in order, once the round is over."""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.harness import NatsServer
from shared.jetstream import reading_paused, socket_transport
from tests.conftest import poll


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
