"""Defence in depth: a service acts only on the event of the order it knows."""

from inventory_svc.domain import OrderTerms, payment_mismatch
from order_svc.domain import Order, OrderStatus
from shared.contract import OrderItem


def test_inventory_takes_only_the_payment_of_the_order_it_knows() -> None:
    order = OrderTerms("alice", 500)
    assert payment_mismatch(order, OrderTerms("alice", 500)) is None
    assert "1 cents" in (payment_mismatch(order, OrderTerms("alice", 1)) or "")
    assert "'mallory'" in (payment_mismatch(order, OrderTerms("mallory", 500)) or "")
    # Kept before the terms were: reserved unchecked, as before the upgrade.
    assert payment_mismatch(None, OrderTerms("alice", 1)) is None
    assert payment_mismatch(order, None) is None


def order(*items: tuple[str, int]) -> Order:
    lines = [OrderItem(sku=sku, quantity=qty, unit_price_cents=100) for sku, qty in items]
    return Order("o-1", "alice", lines, 100 * sum(q for _, q in items), OrderStatus.PENDING, 0.0, "e-1")


def test_order_svc_confirms_only_on_the_stock_the_order_asked_for() -> None:
    pending = order(("w", 1), ("g", 2), ("w", 2))
    assert pending.reservation_mismatch([("g", 2), ("w", 3)]) is None  # summed per sku, in any order
    assert pending.reservation_mismatch([("w", 3)]) is not None  # a line missing
    assert pending.reservation_mismatch([("g", 2), ("w", 1)]) is not None  # too little
    assert pending.reservation_mismatch([("g", 2), ("w", 3), ("x", 1)]) is not None  # more than asked
    assert pending.reservation_mismatch([]) is not None
