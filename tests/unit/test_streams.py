"""Which stream settings a starting service writes, and which it leaves to the operator."""

from __future__ import annotations

import dataclasses
import json

from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig

from shared.streams import APPLIED_KEY, StreamSettings, reconcile, stream_config
from shared.subjects import Stream

OURS = StreamSettings(replicas=3, max_age_s=3_600.0, max_bytes=2**30)


def test_a_stream_made_before_settings_were_recorded_takes_the_owners_settings() -> None:
    legacy = StreamConfig(name="ORDERS", subjects=["orders.>"], retention=RetentionPolicy.LIMITS, duplicate_window=120)
    outcome = reconcile(legacy, Stream.ORDERS, OURS, owner=True)
    assert outcome.update is not None
    assert (outcome.update.num_replicas, outcome.update.max_age, outcome.update.max_bytes) == (3, 3_600.0, 2**30)
    assert outcome.update.discard == DiscardPolicy.NEW
    assert set(outcome.changed) == {"num_replicas", "max_age", "max_bytes", "discard"}
    assert outcome.kept == {}
    assert json.loads((outcome.update.metadata or {})[APPLIED_KEY])["num_replicas"] == 3


def test_a_changed_setting_of_the_owner_is_applied_where_the_stream_still_has_what_it_applied() -> None:
    live = stream_config(Stream.ORDERS, StreamSettings(replicas=1, max_age_s=3_600.0, max_bytes=2**30))
    outcome = reconcile(live, Stream.ORDERS, OURS, owner=True)
    assert outcome.changed == {"num_replicas": (1, 3)}
    assert outcome.update is not None and outcome.update.num_replicas == 3


def test_an_operators_edit_is_kept_and_reported() -> None:
    live = dataclasses.replace(stream_config(Stream.ORDERS, OURS), max_age=600.0)  # nats stream edit --max-age 10m
    outcome = reconcile(live, Stream.ORDERS, OURS, owner=True)
    assert outcome.update is None
    assert outcome.kept == {"max_age": (600.0, 3_600.0)}
    # Still kept at the next start, and after our own setting changes too.
    again = reconcile(live, Stream.ORDERS, dataclasses.replace(OURS, max_age_s=7_200.0), owner=True)
    assert again.update is None and again.kept == {"max_age": (600.0, 7_200.0)}


def test_a_service_that_does_not_own_the_stream_changes_nothing() -> None:
    live = stream_config(Stream.ORDERS, StreamSettings())
    outcome = reconcile(live, Stream.ORDERS, OURS, owner=False)
    assert outcome.update is None and outcome.changed == {}
    assert set(outcome.kept) == {"num_replicas", "max_age", "max_bytes"}


def test_the_owner_sets_back_what_the_saga_depends_on() -> None:
    live = dataclasses.replace(stream_config(Stream.ORDERS, OURS), subjects=["orders.created.>"], duplicate_window=10)
    outcome = reconcile(live, Stream.ORDERS, OURS, owner=True)
    assert outcome.update is not None
    assert outcome.repaired == ["subjects", "duplicate_window"]
    assert outcome.update.subjects == ["orders.created.>", "orders.>"]
    assert outcome.update.duplicate_window == 120


def test_an_unreadable_record_counts_every_difference_as_the_operators() -> None:
    live = dataclasses.replace(stream_config(Stream.ORDERS, StreamSettings()), metadata={APPLIED_KEY: "{not json"})
    outcome = reconcile(live, Stream.ORDERS, OURS, owner=True)
    assert outcome.changed == {}
    assert set(outcome.kept) == {"num_replicas", "max_age", "max_bytes"}


def test_the_dlq_has_limits_of_its_own() -> None:
    config = stream_config(Stream.DLQ, StreamSettings(dlq_max_age_s=86_400.0, dlq_max_bytes=2**20))
    assert (config.subjects, config.max_age, config.max_bytes) == (["dlq.>"], 86_400.0, 2**20)
