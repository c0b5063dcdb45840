"""The saga explorer's pure part: stored messages into events, one order's history, and the flow
counted from causation ids whatever order the streams are read in."""

from __future__ import annotations

import json
from typing import Any

from shared.ops import explorer
from shared.ops.web import just_before


def body(event_type: str, order_id: str, event_id: str, causation: str | None = None, **data: Any) -> bytes:
    doc = {"event_id": event_id, "type": event_type, "order_id": order_id, "causation_id": causation, "data": data}
    return json.dumps(doc).encode()


def seen(
    stream: str, seq: int, event_type: str, event_id: str, causation: str | None = None, **data: Any
) -> explorer.Seen:
    [event] = explorer.decode(
        stream, seq, float(seq), f"{event_type}.o-1", None, body(event_type, "o-1", event_id, causation, **data)
    )
    return event


def test_a_saga_event_is_decoded_with_its_emitter_and_kind() -> None:
    [event] = explorer.decode(
        "PAYMENTS",
        7,
        1.5,
        "part.1.payments.refunded.o-1",
        {},
        body("payments.refunded", "o-1", "e-9", "e-8", reason="out_of_stock"),
    )
    assert (event.subject, event.partition, event.service, event.kind) == (
        "payments.refunded.o-1",
        1,
        "payment_svc",
        "compensation",
    )
    assert (event.causation_id, event.reason) == ("e-8", "out_of_stock")
    assert explorer.decode("ORDERS", 1, 0.0, "orders.created.o-1", {}, b"[1, 2]") == []


def test_a_batch_of_sub_steps_is_one_event_per_step_with_the_id_its_effects_name() -> None:
    data: dict[str, Any] = {
        "partition": 1,
        "types": ["payment_svc.charge_requested"],
        "steps": [[0, "o-1", "e-1", {}], [0, "o-2", "e-2", {}, "00-tp"]],
    }
    raw = body("payment_svc.steps", "steps-b1", "steps-b1", **data)
    steps = explorer.decode("PAYMENT_STEPS", 3, 0.0, "part.1.payment_svc.steps.steps-b1", {}, raw)
    assert [(s.event_id, s.order_id, s.causation_id, s.kind, s.service) for s in steps] == [
        ("steps-b1:0", "o-1", "e-1", "step", "payment_svc"),
        ("steps-b1:1", "o-2", "e-2", "step", "payment_svc"),
    ]


def test_a_dead_letter_keeps_the_subject_and_reason_it_came_with_even_when_not_json() -> None:
    headers = {"Dlq-Reason": "invalid_json", "Dlq-Service": "order_svc", "Dlq-Original-Subject": "orders.requested.o-9"}
    [letter] = explorer.decode("DLQ", 4, 0.0, "dlq.order_svc", headers, b"not json")
    assert (letter.type, letter.order_id, letter.kind, letter.service) == (
        "orders.requested",
        "o-9",
        "dead_letter",
        "order_svc",
    )


def test_the_flow_links_an_effect_read_before_its_cause_and_counts_each_message_once() -> None:
    flow = explorer.Flow()
    refunded = seen("PAYMENTS", 2, "payments.refunded", "e-3", "e-2")
    cancelled = seen("ORDERS", 5, "orders.cancelled", "e-2", "e-1", reason="out_of_stock")
    failed = seen("INVENTORY", 1, "inventory.failed", "e-1")
    for event in (refunded, cancelled, cancelled, failed):  # the payments stream read first
        flow.add(event)
    assert flow.edges == {("orders.cancelled", "payments.refunded"): 1, ("inventory.failed", "orders.cancelled"): 1}
    assert flow.nodes["orders.cancelled"] == 1
    assert flow.outcomes == {"CANCELLED out_of_stock": 1}
    assert flow.unlinked == 0
    assert explorer.is_failure_path("inventory.failed", "orders.cancelled")
    assert not explorer.is_failure_path("orders.created", "payments.completed")


def test_columns_follow_the_longest_chain_of_causes_and_survive_a_cycle() -> None:
    edges = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "a")]
    assert explorer.layers(["a", "b", "c"], edges) in ({"a": 0, "b": 1, "c": 2}, {"a": 2, "b": 0, "c": 1})
    drawn = explorer.svg({"a": "A", "b": "B"}, {("a", "b"): "3"}, {"b": "failure"}, [("a", "b")])
    assert drawn.count('<g class="node') == 2 and 'class="edge failing"' in drawn and ">3</text>" in drawn


def test_an_orders_history_is_in_stored_order_and_its_graph_draws_its_causes() -> None:
    a, b, c = (
        seen("ORDERS", 1, "orders.requested", "e-1"),
        seen("ORDERS", 2, "orders.created", "e-2", "e-1"),
        seen("PAYMENTS", 3, "payments.failed", "e-3", "e-2"),
    )
    timeline = explorer.history([c, a, b, a])
    assert [e.type for e in timeline] == ["orders.requested", "orders.created", "payments.failed"]
    drawn = explorer.order_svg(timeline)
    assert (
        'data-source="#0" data-target="#1"' in drawn
        and 'class="edge failing" data-source="#1" data-target="#2"' in drawn
    )


def test_the_cursor_just_before_a_key_skips_no_valid_order_id() -> None:
    key = "o-abc9"
    cursor = just_before(key)
    assert cursor < key
    assert not any(cursor < other < key for other in ("o-abc8", "o-abc8z", "o-abc", "o-abc8-", "o-abc8Z_9"))


def test_what_a_sub_step_emits_names_its_batch_and_is_linked_to_that_orders_step() -> None:
    data: dict[str, Any] = {
        "partition": 0,
        "types": ["payment_svc.release_requested"],
        "steps": [[0, "o-2", "e-x", {}], [0, "o-1", "e-1", {}]],
    }
    raw = body("payment_svc.steps", "steps-b", "b-7", **data)
    steps = explorer.decode("PAYMENT_STEPS", 9, 1.0, "part.0.payment_svc.steps.steps-b", {}, raw)
    refunded = seen("PAYMENTS", 10, "payments.refunded", "e-3", "b-7")  # o-1's, in batch b-7
    cancelled = seen("ORDERS", 1, "orders.cancelled", "e-1")
    for order in ([refunded, *steps, cancelled], [cancelled, *steps, refunded]):
        flow = explorer.Flow()
        for event in order:
            flow.add(event)
        assert flow.edges == {
            ("orders.cancelled", "payment_svc.release_requested"): 1,
            ("payment_svc.release_requested", "payments.refunded"): 1,
        }, order
        assert flow.unlinked == 1  # o-2's step: its cause e-x is not here
    timeline = explorer.history([cancelled, steps[1], refunded])
    assert explorer.causes(timeline) == [None, 0, 1]
