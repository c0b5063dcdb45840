"""Partitioned streams on a real server: the server's partition of each order is ours, a wrong
shape stays where the strays consumer reads it, and a service with another count is refused."""

from __future__ import annotations

import dataclasses
import random
import string

import pytest
from nats.js import JetStreamContext

from shared.partitions import partition_of, split_stored
from shared.streams import StreamSettings, StreamSetupError, ensure_streams, reconcile
from shared.subjects import Stream
from tests.conftest import stream_messages

FOUR = StreamSettings(max_bytes=2**26, partitions=4)


async def test_the_server_puts_every_order_id_in_the_partition_we_compute(js: JetStreamContext) -> None:
    await ensure_streams(js, FOUR)
    rng = random.Random(16)
    alphabet = string.ascii_letters + string.digits + "_-"
    order_ids = [f"o-{n}" for n in range(100)] + [
        "".join(rng.choices(alphabet, k=rng.randint(1, 64))) for _ in range(100)
    ]
    for order_id in order_ids:
        await js.publish(f"orders.created.{order_id}", b"{}")
    stored = [split_stored(m.subject or "") for m in await stream_messages(js, "ORDERS")]
    assert stored == [(partition_of(o, 4), f"orders.created.{o}") for o in order_ids]
    # As the server gives the transform back, the owner sees nothing to repair at its next start.
    config = (await js.stream_info("ORDERS")).config
    assert reconcile(config, Stream.ORDERS, FOUR, owner=True).update is None


async def test_a_subject_of_the_wrong_shape_is_stored_as_published(js: JetStreamContext) -> None:
    await ensure_streams(js, FOUR)
    for subject in ("orders.created", "orders.created.a.b"):
        await js.publish(subject, b"{}")
    assert [m.subject for m in await stream_messages(js, "ORDERS")] == ["orders.created", "orders.created.a.b"]
    # Only partitioned do the sub-steps have streams of their own.
    assert (await js.stream_info(Stream.PAYMENT_STEPS.value)).config.subjects == ["part.*.payment_svc.>"]


async def test_a_service_with_another_partition_count_is_refused(js: JetStreamContext) -> None:
    await ensure_streams(js, FOUR)
    for other in (1, 8):
        with pytest.raises(StreamSetupError, match=f"split into 4 partition.*PARTITIONS={other}"):
            await ensure_streams(js, dataclasses.replace(FOUR, partitions=other))


async def test_unpartitioned_streams_have_no_transform_and_no_step_streams(js: JetStreamContext) -> None:
    await ensure_streams(js, StreamSettings(max_bytes=2**26))
    assert (await js.stream_info("ORDERS")).config.subject_transform is None
    names = {info.config.name for info in await js.streams_info()}
    assert names == {"ORDERS", "PAYMENTS", "INVENTORY", "DLQ"}
