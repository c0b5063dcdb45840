import json
import os
import uuid

import pytest

from shared.contract import OrderCancelRequested, OrderRequested
from shared.envelope import BadMessage, Envelope, Event, new_event_id, parse_data, parse_envelope, parse_event


def body(**overrides: object) -> bytes:
    envelope: dict[str, object] = {"event_id": "e-1", "type": "orders.requested", "order_id": "o-1", "data": {}}
    envelope.update(overrides)
    return json.dumps(envelope).encode()


def test_valid_client_event_parses_without_occurred_at_or_causation() -> None:
    env = parse_envelope("orders.requested.o-1", body())
    assert (env.event_id, env.type, env.order_id, env.causation_id, env.occurred_at) == (
        "e-1",
        "orders.requested",
        "o-1",
        None,
        None,
    )


def test_occurred_at_must_be_rfc3339_with_offset() -> None:
    assert parse_envelope("orders.requested.o-1", body(occurred_at="2026-11-21T10:00:00Z")).occurred_at
    with pytest.raises(BadMessage) as naive:
        parse_envelope("orders.requested.o-1", body(occurred_at="2026-11-21T10:00:00"))
    assert naive.value.reason == "invalid_envelope"


@pytest.mark.parametrize(
    ("subject", "raw", "reason"),
    [
        ("orders.requested.o-1", b"not json", "invalid_json"),
        ("orders.requested.o-1", b"[1, 2]", "invalid_json"),
        ("orders.requested.o-1", body(event_id=""), "invalid_envelope"),
        ("orders.requested.o-1", body(event_id="x" * 129), "invalid_envelope"),
        ("orders.requested.o-1", body(data=None), "invalid_envelope"),
        ("orders.requested.o-1", body(event_id=7), "invalid_envelope"),
        ("orders.requested.o-1", body(type="orders.created"), "type_mismatch"),
        ("orders.requested.o-1", body(order_id="o-2"), "order_id_mismatch"),
        ("orders.requested", body(), "invalid_subject"),
        ("orders.requested.o-1.extra", body(), "invalid_subject"),
        ("orders.requested." + "x" * 65, body(order_id="x" * 65), "invalid_subject"),
        ("orders.requested.o$1", body(order_id="o$1"), "invalid_subject"),
    ],
)
def test_bad_input_is_rejected_with_a_stable_reason(subject: str, raw: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as bad:
        parse_envelope(subject, raw)
    assert bad.value.reason == reason
    assert bad.value.detail
    # The one-pass decoder the consumer uses gives the same reason ({} is valid cancel data).
    with pytest.raises(BadMessage) as one_pass:
        parse_event(subject, raw, OrderCancelRequested)
    assert (one_pass.value.reason, one_pass.value.detail) == (bad.value.reason, bad.value.detail)


@pytest.mark.parametrize(
    "data",
    [
        {"customer_id": "c", "items": []},
        {"customer_id": "c", "items": [{"sku": "s", "quantity": 0, "unit_price_cents": 1}]},
        {"customer_id": "c", "items": [{"sku": "s", "quantity": "2", "unit_price_cents": 1}]},
        {"customer_id": "c", "items": [{"sku": "s", "quantity": 1, "unit_price_cents": -1}]},
        {"customer_id": "c", "items": [{"sku": "s", "quantity": 1.0, "unit_price_cents": 1}]},
        {"customer_id": "c", "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 1}] * 101},
        {"items": [{"sku": "s", "quantity": 1, "unit_price_cents": 1}]},
    ],
)
def test_order_request_data_is_checked_strictly(data: dict[str, object]) -> None:
    env = parse_envelope("orders.requested.o-1", body(data=data))
    with pytest.raises(BadMessage) as bad:
        parse_data(OrderRequested, env)
    assert bad.value.reason == "invalid_data"
    with pytest.raises(BadMessage) as one_pass:
        parse_event("orders.requested.o-1", body(data=data), OrderRequested)
    assert (one_pass.value.reason, one_pass.value.detail) == ("invalid_data", bad.value.detail)


def test_one_pass_decoding_gives_what_two_steps_give() -> None:
    data = {"customer_id": "c", "items": [{"sku": "s", "quantity": 2, "unit_price_cents": 150}]}
    raw = body(data=data, occurred_at="2026-11-21T10:00:00Z", causation_id="cause-1")
    envelope, typed = parse_event("orders.requested.o-1", raw, OrderRequested)
    two_step = parse_envelope("orders.requested.o-1", raw)
    assert typed == parse_data(OrderRequested, two_step)
    assert envelope.model_dump(exclude={"data"}) == two_step.model_dump(exclude={"data"})


def test_emitted_event_envelope_round_trips_with_causation() -> None:
    event_id, payload = Event("payments.completed", "o-1", {"customer_id": "c", "amount_cents": 5}).to_json("cause-1")
    parsed = parse_envelope("payments.completed.o-1", payload)
    assert (parsed.event_id, parsed.causation_id, parsed.data) == (
        event_id,
        "cause-1",
        {"customer_id": "c", "amount_cents": 5},
    )
    assert parsed.subject == "payments.completed.o-1"
    assert parse_envelope(parsed.subject, parsed.to_bytes()) == parsed
    assert parsed.causation_id == "cause-1"
    assert parsed.occurred_at is not None


def test_emitted_event_json_is_the_envelope_the_model_would_write() -> None:
    event = Event("orders.created", "o-1", {"customer_id": "c", "items": [], "total_cents": 0})
    event_id, payload = event.to_json("cause-1")
    parsed = parse_envelope("orders.created.o-1", payload)
    assert (parsed.event_id, parsed.type, parsed.order_id, parsed.causation_id, parsed.data) == (
        event_id,
        "orders.created",
        "o-1",
        "cause-1",
        event.data,
    )
    assert payload == parsed.to_bytes()  # same keys, order and formats as model_dump_json
    assert list(json.loads(payload)) == list(Envelope.model_fields)


def test_event_ids_are_uuid7_in_canonical_form_and_time_ordered() -> None:
    first, second = new_event_id(), new_event_id()
    assert str(uuid.UUID(first)) == first and uuid.UUID(first).version == 7
    assert first[:13] <= second[:13]  # the millisecond prefix never goes back


def test_a_forked_child_does_not_repeat_its_parents_event_ids() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without running pytest's teardown
        os.write(write_end, new_event_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write_end)
    child_id = os.read(read_end, 100).decode()
    os.close(read_end)
    parent_id = new_event_id()
    assert uuid.UUID(child_id).version == 7
    assert child_id[14:] != parent_id[14:]  # the random part: a shared generator state would repeat it
