"""Streams on a real server: created with their limits, an operator's edit survives a restart."""

from __future__ import annotations

import dataclasses

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from shared.streams import StreamSettings, ensure_streams
from shared.subjects import Stream

SETTINGS = StreamSettings(max_age_s=3_600.0, max_bytes=2**28, dlq_max_age_s=7_200.0, dlq_max_bytes=2**24)


async def test_missing_streams_are_created_with_their_limits_and_refuse_rather_than_drop(js: JetStreamContext) -> None:
    await ensure_streams(js, SETTINGS, owned=frozenset())  # even a service that owns none creates what is missing
    for stream in (Stream.ORDERS, Stream.PAYMENTS, Stream.INVENTORY):
        config = (await js.stream_info(stream.value)).config
        assert (config.max_age, config.max_bytes, config.discard) == (3_600.0, 2**28, DiscardPolicy.NEW)
        assert config.duplicate_window == 120
    dlq = (await js.stream_info("DLQ")).config
    assert (dlq.max_age, dlq.max_bytes) == (7_200.0, 2**24)


async def test_an_operators_edit_is_kept_and_the_owners_own_changes_still_apply(js: JetStreamContext) -> None:
    await ensure_streams(js, SETTINGS)
    edited = dataclasses.replace((await js.stream_info("ORDERS")).config, max_age=600.0)
    await js.update_stream(edited)  # as `nats stream edit ORDERS --max-age 10m` would

    # The owner restarts with a new max_bytes: that applies, the operator's max_age stays.
    await ensure_streams(js, dataclasses.replace(SETTINGS, max_bytes=2**29), owned=frozenset({Stream.ORDERS}))
    config = (await js.stream_info("ORDERS")).config
    assert (config.max_age, config.max_bytes) == (600.0, 2**29)
    # Another service with other settings changes nothing on a stream it does not own.
    await ensure_streams(js, StreamSettings(), owned=frozenset({Stream.PAYMENTS}))
    config = (await js.stream_info("ORDERS")).config
    assert (config.max_age, config.max_bytes) == (600.0, 2**29)


async def test_a_stream_made_by_the_previous_version_gets_its_limits(js: JetStreamContext) -> None:
    await js.add_stream(
        StreamConfig(
            name="ORDERS",
            subjects=["orders.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=120,
        )
    )
    await ensure_streams(js, SETTINGS, owned=frozenset({Stream.ORDERS}))
    config = (await js.stream_info("ORDERS")).config
    assert (config.max_age, config.max_bytes, config.discard) == (3_600.0, 2**28, DiscardPolicy.NEW)
