"""JetStream for the services: durable consumers, a continuous pull, a pipelined publisher.

The streams themselves are made in ``shared.streams``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from shared.aio import retrying
from shared.logging import get_logger
from shared.subjects import Stream

log = get_logger("jetstream")

DUPLICATE_WINDOW_S = 120.0
"""The stream drops a second publish with the same Nats-Msg-Id inside this window."""

ACK_WAIT_S = 10.0
"""A delivered message not acked, nakked or termed within this is redelivered. It is also how
late a message can be when a node dies with it: a delivery in flight, or an ack or nak sent
while the consumer had no leader, is lost, and only this timer brings the message back. So it
is well under ORDER_TIMEOUT_S (30 s) less an election (~5 s), or a node loss cancels orders;
and well over the time a message waits in hand and in its round's commit, or it is delivered
twice (the inbox drops the copy): saga-bench's ``redelivered`` counts those, none in a burst of
20,000 orders at 4 partitions x 2 instances on this 2-core machine."""

MAX_ACK_PENDING = 4096
"""How many messages a consumer may hold unacknowledged: retries waiting on a delay do not block the rest."""

IDLE_WAIT_S = 1.0
"""How long a consuming loop waits when nothing was delivered, before it renews its pulls."""

PULL_EXPIRES_S = 2.0
"""How long one pull request stays open at the server; an idle consumer renews it at this pace."""

PULL_GRACE_S = 1.0
"""Past every request's expiry by this much with no word from the server, the requests are
written off (lost in a server restart) and asked for again."""

MSG_ID_HEADER = "Nats-Msg-Id"
"""JetStream drops a second publish with the same value of this header inside the duplicate window."""

STATUS_HEADER = "Status"
PENDING_MESSAGES_HEADER = "Nats-Pending-Messages"
HEARTBEAT, NO_MESSAGES, REQUEST_TIMEOUT = "100", "404", "408"


PUBLISH_DEADLINE_S = 30.0
"""How long a publish keeps being retried before the caller hears it failed: a leader election
stalls a stream for about 5 s, a restarted server takes a few seconds more."""


async def publish_until_stored(
    js: JetStreamContext,
    subject: str,
    body: bytes,
    headers: dict[str, str],
    *,
    deadline_s: float = PUBLISH_DEADLINE_S,
    attempt_timeout_s: float = 2.0,
    on_retry: Callable[[Exception], None] | None = None,
) -> PubAck:
    """Publish and wait for the stream's ack, retrying (same headers, so the same Nats-Msg-Id:
    a publish that did land is not stored twice) while the stream has no leader (503), the
    ack does not come, or the connection is being re-established. Raises the last error at the
    deadline, and at once for an error retrying cannot cure (a refused publish, bad input)."""
    deadline = time.monotonic() + deadline_s
    tries = 0
    while True:
        tries += 1
        try:
            return await js.publish(subject, body, headers=headers, timeout=attempt_timeout_s)
        except (NoStreamResponseError, ServiceUnavailableError, NatsTimeoutError, ConnectionClosedError) as exc:
            if time.monotonic() + 0.2 * tries > deadline:
                raise
            if on_retry is not None:
                on_retry(exc)
            await asyncio.sleep(min(0.1 * tries, 1.0))


class Puller:
    """A continuous pull from one durable consumer: what nats.go calls ``Consume``.

    Pull requests are kept outstanding (up to two batches' worth), so messages stream into a
    local buffer while the previous batch is being processed, and ``take_ready`` hands over whatever
    is buffered at once: batches grow with the load by themselves, and a lone message is never
    held back waiting for company. ``arrived`` is set on every delivery, so one loop can
    wait on several pullers. Not nats-py's ``fetch``: it wraps every message in a task
    and a timer (``next_msg``), and lingers for a batch to fill once its first message came.

    Book-keeping is by count: each request asks for ``batch`` messages for PULL_EXPIRES_S; a
    delivered message takes one off, and the server's 408 at a request's expiry gives back
    what it did not deliver. A request lost with the server (a restart) is written off once
    every request sent has expired.
    """

    def __init__(self, nc: Client, stream: str, durable: str, batch: int, arrived: asyncio.Event) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._request = json.dumps({"batch": batch, "expires": int(PULL_EXPIRES_S * 1e9)}).encode()
        self._batch = batch
        self._inbox = nc.new_inbox()
        self._buffer: deque[Msg] = deque()
        self._arrived = arrived
        self._outstanding = 0
        self._last_request = 0.0
        self._refusals = 0  # the server's refusals of our requests in a row (503, 409)
        self._refused_until = 0.0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        if status is None:
            self._outstanding = max(self._outstanding - 1, 0)
            self._refusals = 0
            self._buffer.append(msg)
            self._arrived.set()
        elif status in (NO_MESSAGES, REQUEST_TIMEOUT):  # a request ended; here is what it did not deliver
            undelivered = int(msg.headers.get(PENDING_MESSAGES_HEADER, 0)) if msg.headers else 0
            self._outstanding = max(self._outstanding - undelivered, 0)
            self._arrived.set()  # so the taker asks again now, not at the end of its idle wait
        elif status != HEARTBEAT:
            # 503: the consumer has no leader (an election: ~5 s after a node is lost); 409: the
            # server gave up on our requests (leadership change, consumer deleted or changed, too
            # many waiting requests). Start afresh, but not before a growing pause: asking again
            # at once would spin for the whole election (a bare fetch loop did 21,000 in 5 s).
            self._refusals += 1
            pause = min(0.1 * 2**self._refusals, PULL_EXPIRES_S)
            self._refused_until = time.monotonic() + pause
            if self._refusals == 1 or self._refusals % 10 == 0:
                description = msg.headers.get("Description") if msg.headers else None
                log.warning("pull.refused", status=status, description=description, refusals=self._refusals)
            self._outstanding = 0

    async def _top_up(self) -> None:
        now = time.monotonic()
        if now < self._refused_until:
            return
        if self._outstanding and now - self._last_request > PULL_EXPIRES_S + PULL_GRACE_S:
            self._outstanding = 0  # every request has expired by now: the rest is not coming
        while self._outstanding <= self._batch:
            await self._nc.publish(self._next_subject, self._request, reply=self._inbox)
            self._outstanding += self._batch
            self._last_request = now

    async def take_ready(self, most: int) -> list[Msg]:
        """What has been delivered, up to ``most``, without waiting; keeps requests open."""
        await self._top_up()
        count = min(most, len(self._buffer))
        return [self._buffer.popleft() for _ in range(count)]

    async def close(self) -> None:
        """Stop receiving; hand back what was delivered but not taken, for the next run."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        while self._buffer:
            with contextlib.suppress(Exception):
                await self._buffer.popleft().nak()


@dataclass
class _PendingBatch:
    first: int
    errors: list[str | None]
    on_done: Callable[[list[str | None]], None]
    unanswered: int
    timer: asyncio.TimerHandle | None = None


class Publisher:
    """Pipelined JetStream publishing: a batch goes on the wire at once, then its acks come in.

    Every publish carries a reply subject ``<inbox>.<n>`` on one subscription, so an ack costs
    a counter and a bytes check. nats-py's ``publish_async`` costs a future, random bytes for
    its token, a done-callback and a JSON parse per message, and awaiting those futures costs
    as much again. One connection keeps a batch in order, so the stream sees the caller's order.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._next = 0
        self._pending: dict[int, tuple[_PendingBatch, int]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        try:
            waiting = self._pending.pop(int(msg.subject[len(self._prefix) :]))
        except (KeyError, ValueError):
            return  # the ack of a publish whose batch already gave up waiting
        batch, index = waiting
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        if status is not None:  # 503: no stream listens on the subject
            batch.errors[index] = f"status {status}"
        elif b'"error"' in msg.data:
            batch.errors[index] = msg.data.decode(errors="replace")
        else:
            batch.errors[index] = None
        batch.unanswered -= 1
        if batch.unanswered == 0:
            self._finish(batch)

    def _finish(self, batch: _PendingBatch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
        for seq in range(batch.first, batch.first + len(batch.errors)):
            self._pending.pop(seq, None)
        batch.on_done(batch.errors)

    async def send(
        self,
        messages: Sequence[tuple[str, bytes, dict[str, str]]],
        timeout_s: float,
        on_done: Callable[[list[str | None]], None],
    ) -> None:
        """Publish ``(subject, payload, headers)`` in order without waiting for the acks;
        ``on_done(errors)`` runs once they are all in or ``timeout_s`` has passed: per message,
        None once the stream stored it (or dropped it as a duplicate), else why not. Raises
        (and ``on_done`` never runs) if the messages could not all be written."""
        if self._sub is None:
            await self.start()
        batch = _PendingBatch(self._next, ["no acknowledgement in time"] * len(messages), on_done, len(messages))
        self._next += len(messages)
        try:
            for index, (subject, payload, headers) in enumerate(messages):
                self._pending[batch.first + index] = (batch, index)
                await self._nc.publish(subject, payload, reply=f"{self._prefix}{batch.first + index}", headers=headers)
        except BaseException:
            for seq in range(batch.first, batch.first + len(messages)):
                self._pending.pop(seq, None)
            raise
        if not messages:
            on_done([])
        elif batch.unanswered:  # acks may all be in already, if publish had to wait for the socket
            batch.timer = asyncio.get_running_loop().call_later(timeout_s, self._finish, batch)

    async def publish(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]], timeout_s: float
    ) -> list[str | None]:
        """``send`` and wait for the outcome."""
        outcome: asyncio.Future[list[str | None]] = asyncio.get_running_loop().create_future()

        def resolve(errors: list[str | None]) -> None:
            if not outcome.done():
                outcome.set_result(errors)

        await self.send(messages, timeout_s, resolve)
        return await outcome


def socket_transport(nc: Client) -> asyncio.ReadTransport | None:
    """The asyncio transport ``nc`` reads the server's bytes from, or None where it has none.

    nats-py does not expose it: this follows its TCP transport's stream writer (plain or TLS).
    Its websocket transport has none, and there ``reading_paused`` does nothing.
    """
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    return transport if isinstance(transport, asyncio.ReadTransport) else None


_PAUSES: weakref.WeakKeyDictionary[asyncio.ReadTransport, int] = weakref.WeakKeyDictionary()
"""Per transport, how many blocks hold it paused: every partition a process owns shares its
connection, so one partition's round must not resume reading under another's transaction."""


@contextlib.contextmanager
def reading_paused(nc: Client) -> Iterator[None]:
    """Leave what the server sends in the socket's buffer while the block runs; read it after.

    For a round's transaction on the store's thread: what arrives meanwhile could not be
    processed before the round ends anyway, and reading it would have the event loop take the
    GIL, which that thread needs back after every SQLite statement (at 1,000 orders/s a round
    took over three times its CPU time in wall time; docs/performance.md has the figures).

    Blocks may overlap (the rounds of several partitions on one connection): reading resumes
    when the last of them ends. Leaves the transport alone if it is not reading when the first
    begins (asyncio's stream flow control paused it, or the connection is closing), so it never
    resumes what it did not pause.
    """
    transport = socket_transport(nc)
    if transport is None or (transport not in _PAUSES and not transport.is_reading()):
        yield
        return
    held = _PAUSES.get(transport, 0)
    if held == 0:
        transport.pause_reading()
    _PAUSES[transport] = held + 1
    try:
        yield
    finally:
        left = _PAUSES.pop(transport, 1) - 1
        if left:
            _PAUSES[transport] = left
        else:
            transport.resume_reading()  # a no-op on a transport closed meanwhile (a reconnect)


CONSUMER_DEADLINE_S = 60.0
"""How long start-up keeps retrying to make a durable consumer while its stream has no leader."""


def durable_name(service: str, stream: Stream) -> str:
    return f"{service}-{stream.value.lower()}"


async def ensure_consumer(js: JetStreamContext, name: str, stream: Stream, filter_subjects: Sequence[str]) -> str:
    """Create or update the durable pull consumer ``name`` on ``stream``; return its name."""
    config = ConsumerConfig(
        name=name,
        durable_name=name,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        # Unlimited at the server: the service itself dead-letters a message that keeps
        # failing (reason max_deliveries), so nothing is ever dropped silently.
        max_deliver=-1,
        max_ack_pending=MAX_ACK_PENDING,
        filter_subjects=list(filter_subjects),
    )
    # Since nats-server 2.10 a create with an existing name updates the editable fields. On a
    # cluster, a stream made a moment ago may have no leader yet: retry as stream creation does.
    await retrying(
        functools.partial(js.add_consumer, stream.value, config),
        deadline_s=CONSUMER_DEADLINE_S,
        on_error=lambda exc, attempt: log.warning(
            "consumer.ensure_retrying", consumer=name, error=repr(exc), attempt=attempt
        ),
    )
    return name
