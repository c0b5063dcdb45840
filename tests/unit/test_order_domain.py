from order_svc.domain import Order, OrderStatus, payment_inputs, place_order, with_payment_inputs
from shared.contract import OrderItem, OrderRequested
from shared.partitions import UNPARTITIONED, Partitioning


def request(*lines: tuple[str, int, int]) -> OrderRequested:
    items = [OrderItem(sku=s, quantity=q, unit_price_cents=p) for s, q, p in lines]
    return OrderRequested(customer_id="alice", items=items)


def pending(order_id: str = "o-1") -> Order:
    order, _ = place_order(order_id, "req-1", request(("sku", 1, 100)), None, now=1000.0)
    assert order is not None
    return order


def test_new_order_is_pending_and_emits_created_with_total() -> None:
    order, events = place_order("o-1", "req-1", request(("a", 2, 1250), ("b", 1, 99)), None, now=0.0)
    assert order is not None and order.status is OrderStatus.PENDING
    assert order.total_cents == 2599
    assert [(e.type, e.order_id) for e in events] == [("orders.created", "o-1")]
    assert events[0].data["total_cents"] == 2599
    assert events[0].data["customer_id"] == "alice"
    assert events[0].data["items"][0] == {"sku": "a", "quantity": 2, "unit_price_cents": 1250}


def test_request_for_existing_order_id_is_rejected_and_changes_nothing() -> None:
    existing = pending()
    order, events = place_order("o-1", "req-2", request(("other", 9, 9)), existing, now=5.0)
    assert order is None
    assert [(e.type, e.data) for e in events] == [("orders.rejected", {"reason": "duplicate_order_id"})]
    assert existing.status is OrderStatus.PENDING and existing.total_cents == 100


def test_reserved_confirms_a_pending_order() -> None:
    order = pending()
    events = order.confirm()
    assert order.status is OrderStatus.CONFIRMED
    assert [(e.type, e.data) for e in events] == [("orders.confirmed", {"total_cents": 100})]


def test_cancel_passes_the_reason_through() -> None:
    order = pending()
    events = order.cancel("insufficient_funds")
    assert (order.status, order.reason) == (OrderStatus.CANCELLED, "insufficient_funds")
    assert [(e.type, e.data) for e in events] == [("orders.cancelled", {"reason": "insufficient_funds"})]


def test_cancel_of_confirmed_or_cancelled_order_changes_nothing() -> None:
    confirmed = pending()
    confirmed.confirm()
    assert confirmed.cancel("requested") == []
    assert confirmed.status is OrderStatus.CONFIRMED

    cancelled = pending()
    cancelled.cancel("timeout")
    assert cancelled.cancel("requested") == []
    assert (cancelled.status, cancelled.reason) == (OrderStatus.CANCELLED, "timeout")


def test_reservation_arriving_after_cancel_leaves_order_cancelled() -> None:
    order = pending()
    order.cancel("requested")
    assert order.confirm() == []
    assert order.status is OrderStatus.CANCELLED


def test_timeout_applies_only_to_pending_orders_past_the_deadline() -> None:
    order = pending()
    assert not order.timed_out(now=1029.9, timeout_s=30)
    assert order.timed_out(now=1030.0, timeout_s=30)
    order.confirm()
    assert not order.timed_out(now=5000.0, timeout_s=30)


def test_the_creating_request_arriving_again_is_not_a_duplicate_order_id() -> None:
    existing = pending()
    order, events = place_order("o-1", "req-1", request(("sku", 1, 100)), existing, now=99_999.0)
    assert (order, events) == (None, [])
    assert existing.status is OrderStatus.PENDING


def test_partitioned_each_decision_sends_its_payment_input_to_the_customers_partition() -> None:
    four = Partitioning(4)
    order, created = place_order("o-1", "req-1", request(("sku", 2, 100)), None, now=0.0)
    assert order is not None
    confirmed = order.confirm()
    other = pending("o-2")
    cancelled = other.cancel("out_of_stock")
    inputs = [
        *payment_inputs(order, created, four),
        *payment_inputs(order, confirmed, four),
        *payment_inputs(other, cancelled, four),
    ]
    assert [(e.type, e.order_id, e.data) for e in inputs] == [
        ("payment_svc.charge_requested", "o-1", {"customer_id": "alice", "amount_cents": 200}),
        ("payment_svc.capture_requested", "o-1", {"customer_id": "alice"}),
        ("payment_svc.release_requested", "o-2", {"customer_id": "alice", "reason": "out_of_stock"}),
    ]
    assert {e.partition for e in inputs} == {four.of("alice")}
    assert with_payment_inputs(other, cancelled, four) == [*cancelled, inputs[2]]
    assert payment_inputs(order, created, UNPARTITIONED) == []  # payment_svc reads the events themselves
    assert with_payment_inputs(order, created, UNPARTITIONED) == created
