"""Traces end to end: the three services export their spans over OTLP/HTTP to a receiver in the
test, and one order is one trace: order_svc's handling of ``orders.requested`` is its root, and
every later handling, in every service, descends from the handling that emitted its event,
through the outbox, the relay, the sub-steps between partitions and a compensation. A timeout's
cancel joins the order's trace too, and a dead letter is a failed span in its sender's trace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from shared.connection import connect
from shared.ops import client
from shared.ops.harness import System
from shared.ops.otlp import OtlpReceiver, ReceivedSpan
from shared.partitions import Partitioning
from tests.conftest import poll, sync_probe, unique
from tests.e2e.conftest import new_customer, new_sku

pytestmark = pytest.mark.e2e

PARTITIONS = 2
ORDER_TIMEOUT_S = 6


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, OtlpReceiver]]:
    """Two partitions (so sub-steps cross partitions), each service exporting to the receiver."""
    receiver = OtlpReceiver().start()
    env = {
        "PARTITIONS": str(PARTITIONS),
        "ORDER_TIMEOUT_S": str(ORDER_TIMEOUT_S),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s, not every 5 s
    }
    system = System(Path(tmp_path_factory.mktemp("tracing")), service_env=env).start()
    try:
        yield system, receiver
    finally:
        system.stop()
        receiver.stop()


@pytest.fixture
async def nc(traced: tuple[System, OtlpReceiver]) -> AsyncIterator[Client]:
    conn = await connect(traced[0].url)
    yield conn
    await conn.close()


def _trace_of(spans: list[ReceivedSpan], order_id: str) -> list[ReceivedSpan]:
    """The spans in the trace of the order's root, or [] before the root has arrived."""
    roots = [s for s in spans if s.name == "handle orders.requested" and s.attributes.get("saga.order_id") == order_id]
    return [s for s in spans if roots and s.trace_id == roots[0].trace_id]


def _connected(trace: list[ReceivedSpan]) -> bool:
    ids = {s.span_id for s in trace}
    return bool(trace) and all(s.parent_id in ids for s in trace if s.parent_id)


def _ancestors(span: ReceivedSpan, trace: list[ReceivedSpan]) -> list[tuple[str, str]]:
    by_id = {s.span_id: s for s in trace}
    found = []
    while span.parent_id:
        span = by_id[span.parent_id]
        found.append((span.service, span.name))
    return found


def _only(trace: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    matching = [s for s in trace if (s.service, s.name) == (service, name)]
    assert len(matching) == 1, (service, name, [(s.service, s.name) for s in trace])
    return matching[0]


async def _whole_trace(receiver: OtlpReceiver, order_id: str, expected: set[tuple[str, str]]) -> list[ReceivedSpan]:
    """Wait until the order's trace holds ``expected`` and every span's parent (spans arrive in batches)."""
    return await poll(
        sync_probe(lambda: _trace_of(receiver.received(), order_id)),
        lambda trace: _connected(trace) and expected <= {(s.service, s.name) for s in trace},
        20,
    )


async def test_one_order_is_one_trace_across_the_services_compensation_included(
    traced: tuple[System, OtlpReceiver], nc: Client
) -> None:
    _, receiver = traced
    js = nc.jetstream()
    partitioning = Partitioning(PARTITIONS)
    # Two lines in two inventory partitions; the second runs out, so the first is given back,
    # the payment released and the order cancelled.
    skus: dict[int, str] = {}
    while len(skus) < PARTITIONS:
        sku = unique("sku")
        skus.setdefault(partitioning.of(sku), sku)
    for sku, quantity in ((skus[0], 5), (skus[1], 1)):
        await client.restock(nc, sku, quantity)
    customer = await new_customer(nc, 10_000)
    order_id = unique("o")
    while partitioning.of(order_id) == partitioning.of(customer):  # the charge in another partition
        order_id = unique("o")
    lines = [
        {"sku": skus[0], "quantity": 2, "unit_price_cents": 10},
        {"sku": skus[1], "quantity": 3, "unit_price_cents": 10},
    ]
    await client.place_order(js, order_id, customer, lines)
    order = await client.wait_until_terminal(nc, order_id)
    assert (order["status"], order["reason"]) == ("CANCELLED", "out_of_stock")

    handlings = {
        ("order_svc", "handle orders.requested"),
        ("payment_svc", "handle payment_svc.charge_requested"),  # sent by order_svc to the customer's partition
        ("inventory_svc", "handle payments.completed"),
        ("inventory_svc", "handle inventory_svc.reserve_requested"),  # a line in each partition
        ("order_svc", "handle inventory.failed"),
        ("payment_svc", "handle payment_svc.release_requested"),  # the compensation
    }
    trace = await _whole_trace(receiver, order_id, handlings)

    root = _only(trace, "order_svc", "handle orders.requested")
    assert [s for s in trace if not s.parent_id] == [root]
    assert {s.service for s in trace} == {"order_svc", "payment_svc", "inventory_svc"}
    assert all(s.attributes.get("saga.order_id") == order_id for s in trace), "one order, one trace"
    others = [s for s in receiver.received() if s.attributes.get("saga.order_id") == order_id and s not in trace]
    assert not others, [(s.service, s.name, s.trace_id) for s in others]

    # Each handling descends from the one that emitted what it handled.
    charge = _only(trace, "payment_svc", "handle payment_svc.charge_requested")
    assert _ancestors(charge, trace) == [("order_svc", "handle orders.requested")]
    assert ("payment_svc", "handle payment_svc.charge_requested") in _ancestors(
        _only(trace, "inventory_svc", "handle payments.completed"), trace
    )
    release = _only(trace, "payment_svc", "handle payment_svc.release_requested")
    assert _ancestors(release, trace)[:1] == [("order_svc", "handle inventory.failed")]
    assert ("inventory_svc", "handle payments.completed") in _ancestors(release, trace)
    # Parent and causation agree: a span's parent handled the event that caused its message
    # (or, for what a sub-step emitted, is that step of the batch the causation names).
    by_id = {s.span_id: s for s in trace}
    for span in trace:
        cause = span.attributes.get("saga.causation_id")
        if span.parent_id and cause:
            parent = by_id[span.parent_id].attributes
            handled = parent.get("messaging.message.id") or parent.get("saga.event_id", "")
            assert handled == cause or handled.startswith(f"{cause}:"), (span.name, cause, parent)
    assert {s.attributes.get("saga.outcome") for s in trace} == {"processed"}
    assert all(s.status != 2 for s in trace)


async def test_a_dead_letter_is_a_failed_span_in_its_senders_trace(
    traced: tuple[System, OtlpReceiver], nc: Client
) -> None:
    _, receiver = traced
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    subject = f"orders.requested.{unique('o')}"
    await nc.jetstream().publish(
        subject, b"{not json", headers={"Nats-Msg-Id": unique("bad"), "traceparent": f"00-{trace_id}-{parent_id}-01"}
    )
    [span] = await poll(
        sync_probe(lambda: [s for s in receiver.received() if s.trace_id == trace_id]), lambda found: len(found) > 0
    )
    assert (span.service, span.name, span.parent_id) == ("order_svc", "handle orders.requested", parent_id)
    assert span.attributes["saga.outcome"] == "dead_lettered"
    assert span.attributes["messaging.destination.name"].endswith(subject)
    assert span.status == 2 and span.status_message.startswith("invalid_json"), span


async def test_a_timeouts_cancel_joins_the_orders_trace(traced: tuple[System, OtlpReceiver], nc: Client) -> None:
    system, receiver = traced
    payments = system.services["payment_svc"]
    customer = await new_customer(nc, 10_000)
    sku = await new_sku(nc, 5)
    order_id = unique("o")
    payments.stop()  # no payment answers: the order stays PENDING until it times out
    try:
        await client.place_order(
            nc.jetstream(), order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 5}]
        )
        order = await client.wait_until_terminal(nc, order_id, timeout=ORDER_TIMEOUT_S + 15)
        assert (order["status"], order["reason"]) == ("CANCELLED", "timeout")
    finally:
        payments.start()
        system.wait_partitions_owned(("payment_svc",))
    # Back, payment_svc handles the charge and the release it missed (partitioned, order_svc
    # sends them to the customer's partition: the release from the timeout's transaction).
    release = ("payment_svc", "handle payment_svc.release_requested")
    trace = await _whole_trace(receiver, order_id, {("order_svc", "order timeout"), release})
    timeout = _only(trace, "order_svc", "order timeout")
    assert _ancestors(timeout, trace) == [("order_svc", "handle orders.requested")]
    assert _ancestors(_only(trace, *release), trace)[:1] == [("order_svc", "order timeout")]
