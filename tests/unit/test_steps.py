"""Batching a round's sub-steps: one message per destination partition, applied step by step."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from shared.envelope import BadMessage, Envelope, Event, EventData
from shared.steps import StepBatch, apply_batch, batch_steps


def test_sub_steps_are_merged_per_service_and_partition_and_saga_events_left_alone() -> None:
    caused = [
        (Event("payments.completed", "o-1", {"customer_id": "c", "amount_cents": 1}), "e-1"),
        (Event("payment_svc.charge_requested", "o-2", {"n": 2}, partition=3), "e-2"),
        (Event("payment_svc.charge_requested", "o-3", {"n": 3}, partition=1), "e-3"),
        (Event("payment_svc.refund_requested", "o-4", {"n": 4}, partition=3), "e-4"),
    ]
    events = batch_steps(caused)
    assert [(e.type, e.partition) for e in events] == [
        ("payments.completed", None),
        ("payment_svc.steps", 3),
        ("payment_svc.steps", 1),
    ]
    to_three = events[1]
    assert to_three.order_id.startswith("steps-") and to_three.data["partition"] == 3
    types = to_three.data["types"]
    assert types == ["payment_svc.charge_requested", "payment_svc.refund_requested"]  # each named once
    assert [(types[t], order, cause, data) for t, order, cause, data in to_three.data["steps"]] == [
        ("payment_svc.charge_requested", "o-2", "e-2", {"n": 2}),
        ("payment_svc.refund_requested", "o-4", "e-4", {"n": 4}),
    ]


def parsed(batch: Event) -> StepBatch:
    """As the receiving partition reads it: from the JSON on the wire."""
    return StepBatch.model_validate_json(json.dumps(batch.data))


class Numbered(EventData):
    n: int


def test_a_batch_applies_each_step_by_its_handler_in_order() -> None:
    seen: list[tuple[str, str, int]] = []

    def handler(tx: sqlite3.Connection, env: Envelope, data: Numbered) -> list[Event]:
        seen.append((env.type, env.order_id, data.n))
        return [Event("payments.refunded", env.order_id, {"n": data.n})]

    (batch,) = batch_steps(
        [(Event("payment_svc.a", "o-1", {"n": 1}, 0), None), (Event("payment_svc.b", "o-2", {"n": 2}, 0), None)]
    )
    env = Envelope(event_id="b-1", type=batch.type, order_id=batch.order_id, data=batch.data)
    routes: dict[str, tuple[type[EventData], Any]] = {
        "payment_svc.a": (Numbered, handler),
        "payment_svc.b": (Numbered, handler),
    }
    emitted = apply_batch(routes, sqlite3.connect(":memory:"), env, parsed(batch))
    assert seen == [("payment_svc.a", "o-1", 1), ("payment_svc.b", "o-2", 2)]
    assert [e.order_id for e in emitted] == ["o-1", "o-2"]


def test_a_batch_with_a_step_nobody_handles_is_bad_input() -> None:
    (batch,) = batch_steps([(Event("payment_svc.unknown", "o-1", {}, 0), None)])
    env = Envelope(event_id="b-1", type=batch.type, order_id=batch.order_id, data=batch.data)
    with pytest.raises(BadMessage, match="unroutable"):
        apply_batch({}, sqlite3.connect(":memory:"), env, parsed(batch))


def test_a_round_of_large_steps_is_split_into_batches_that_fit_the_servers_max_payload() -> None:
    items = [{"sku": f"{n:03d}" + "s" * 125, "quantity": 1_000_000} for n in range(100)]  # the contract's largest
    caused = [
        (Event("inventory_svc.reserve_requested", f"o-{n}", {"items": items, "delegated": False}, 3), "e")
        for n in range(200)
    ]
    batches = batch_steps(caused)
    assert len(batches) > 1
    for batch in batches:
        assert len(batch.to_json(None)[1]) < 1024 * 1024
    assert [row[1] for b in batches for row in b.data["steps"]] == [f"o-{n}" for n in range(200)]


def test_a_step_naming_a_type_the_batch_does_not_list_is_bad_data() -> None:
    (batch,) = batch_steps([(Event("payment_svc.a", "o-1", {"n": 1}, 0), None)])
    batch.data["steps"][0][0] = 5
    env = Envelope(event_id="b-1", type=batch.type, order_id=batch.order_id, data=batch.data)
    with pytest.raises(BadMessage, match="invalid_data"):
        apply_batch({}, sqlite3.connect(":memory:"), env, parsed(batch))
