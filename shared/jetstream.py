"""Create or update the streams and durable consumers a service needs, idempotently.

Any service may start first, so each one ensures all four streams exist with the same settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from shared.subjects import STREAM_SUBJECTS, Stream

log = structlog.get_logger("jetstream")

DUPLICATE_WINDOW_S = 120.0
"""The stream drops a second publish with the same Nats-Msg-Id inside this window."""

ACK_WAIT_S = 30.0
"""A delivered message not acked, nakked or termed within this is redelivered."""

MAX_ACK_PENDING = 4096
"""How many messages a consumer may hold unacknowledged: retries waiting on a delay do not block the rest."""

READY_WINDOW_S = 0.005
"""How long a fetch lingers for more once messages are flowing: a small batching window."""

IDLE_WAIT_S = 1.0
"""How long a fetch waits when nothing is ready, before the loop checks for shutdown."""

STREAM_IN_USE = 10058  # JetStream's err_code for "stream name already in use with a different configuration"


def stream_config(stream: Stream) -> StreamConfig:
    return StreamConfig(
        name=stream.value,
        subjects=[STREAM_SUBJECTS[stream]],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create every stream of the saga, or update one whose settings drifted."""
    for stream in Stream:
        config = stream_config(stream)
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != STREAM_IN_USE:
                raise
            await js.update_stream(config)
            log.info("stream.updated", stream=stream.value)


async def fetch_ready(sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
    """What is ready now, up to ``batch``; if nothing is, wait for the next message.

    Not ``sub.fetch(batch, timeout=1)``: once its first message arrives, nats-py keeps waiting
    for the batch to fill, up to the whole timeout, so a trickle of messages waits up to a
    second at every hop. Here a lingering pull is either bounded to READY_WINDOW_S or asks for
    one message and returns with it. Messages a pull delivers after its fetch returned wait in
    the subscription and are taken first by the next fetch. Raises TimeoutError when idle.
    """
    try:
        return await sub.fetch(batch, timeout=READY_WINDOW_S)
    except TimeoutError:
        pass
    return await sub.fetch(1, timeout=IDLE_WAIT_S)


def durable_name(service: str, stream: Stream) -> str:
    return f"{service}-{stream.value.lower()}"


async def ensure_consumer(js: JetStreamContext, service: str, stream: Stream, filter_subjects: Sequence[str]) -> str:
    """Create or update the service's durable pull consumer on ``stream``; return its name."""
    name = durable_name(service, stream)
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
    # Since nats-server 2.10 a create with an existing name updates the editable fields.
    await js.add_consumer(stream.value, config)
    return name
