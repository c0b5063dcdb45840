from typing import Any

from shared.ops.audit import Discrepancy, Repair, Snapshot, audit


def order(status: str, total: int = 500, customer: str = "alice", created_at: float = 0.0) -> dict[str, Any]:
    return {"status": status, "total_cents": total, "customer_id": customer, "created_at": created_at}


def payment(status: str, amount: int = 500, customer: str = "alice") -> dict[str, Any]:
    return {"status": status, "amount_cents": amount, "customer_id": customer}


def reservation(status: str, qty: int = 1) -> dict[str, Any]:
    return {"status": status, "items": [{"sku": "w", "quantity": qty}]}


def snapshot(**kw: Any) -> Snapshot:
    snap = Snapshot(order_timeout_s=30, now=100.0)
    for name, value in kw.items():
        setattr(snap, name, value)
    return snap


def kinds(found: list[Discrepancy]) -> set[tuple[str, str]]:
    return {(d.kind, d.key) for d in found}


def consistent() -> Snapshot:
    """o-1 confirmed, o-2 cancelled and refunded, o-3 cancelled before anything happened."""
    return snapshot(
        orders={"o-1": order("CONFIRMED"), "o-2": order("CANCELLED"), "o-3": order("CANCELLED")},
        payments={"o-1": payment("CAPTURED"), "o-2": payment("RELEASED"), "o-3": payment("CANCELLED", 0, "")},
        reservations={"o-1": reservation("COMMITTED"), "o-2": reservation("FAILED", 9)},
        accounts={"alice": {"balance_cents": 500, "deposited_cents": 1000}},
        skus={"w": {"available": 4, "reserved": 0, "restocked": 5}},
    )


def test_consistent_records_are_clean() -> None:
    assert audit(consistent()) == []


def test_cancelled_order_still_charged_is_repaired_by_resending_the_cancel() -> None:
    snap = consistent()
    snap.payments["o-2"] = payment("HELD")
    snap.accounts["alice"]["balance_cents"] = 0
    found = audit(snap)
    [d] = [d for d in found if d.kind == "cancelled_but_charged"]
    assert d.key == "o-2" and d.repair == Repair("orders.cancelled") and d.repair.service == "orders"
    assert ("money_not_conserved", "*") in kinds(found)


def test_confirmed_order_whose_charge_is_still_held_is_repaired_by_resending_the_confirmation() -> None:
    snap = consistent()
    snap.payments["o-1"] = payment("HELD")
    assert audit(snap) == [Discrepancy("charge_not_captured", "o-1", "charge still held", Repair("orders.confirmed"))]


def test_a_cancel_after_the_capture_is_reported_and_a_captured_cancelled_order_too() -> None:
    snap = consistent()
    snap.payments["o-1"] = {**payment("CAPTURED"), "refused_cancel": "forged"}
    found = audit(snap)
    assert [(d.kind, d.key, d.repair) for d in found] == [("cancel_after_capture", "o-1", None)]
    assert "forged" in found[0].detail
    snap = consistent()
    snap.payments["o-2"] = payment("CAPTURED")
    snap.accounts["alice"]["balance_cents"] = 0
    assert ("cancelled_but_captured", "o-2") in kinds(audit(snap))


def test_confirmed_order_with_open_reservation_is_repaired_by_resending_the_confirmation() -> None:
    snap = consistent()
    snap.reservations["o-1"] = reservation("RESERVED")
    snap.skus["w"]["reserved"] = 1
    snap.skus["w"]["available"] = 4
    # Stock still adds up (the units sit in reserved); only the order's step is missing.
    assert audit(snap) == [
        Discrepancy("reservation_not_committed", "o-1", "stock still reserved", Repair("orders.confirmed"))
    ]


def test_confirmed_order_without_charge_or_reservation_is_reported_without_a_repair() -> None:
    snap = consistent()
    del snap.payments["o-1"]
    del snap.reservations["o-1"]
    found = audit(snap)
    assert {("confirmed_without_charge", "o-1"), ("confirmed_without_reservation", "o-1")} <= kinds(found)
    assert all(d.repair is None for d in found if d.key == "o-1")


def test_cancelled_order_holding_stock_is_repaired_and_committed_stock_is_only_reported() -> None:
    snap = consistent()
    snap.reservations["o-2"] = reservation("RESERVED")
    snap.reservations["o-3"] = reservation("COMMITTED")
    found = {d.kind: d for d in audit(snap)}
    assert found["cancelled_but_stock_held"].repair == Repair("orders.cancelled")
    assert found["cancelled_but_stock_committed"].repair is None


def test_charges_and_reservations_for_orders_order_svc_does_not_know_are_reported() -> None:
    snap = consistent()
    snap.payments["ghost"] = payment("HELD", 7)
    snap.reservations["ghost"] = reservation("RESERVED")
    assert {("charge_for_unknown_order", "ghost"), ("reservation_for_unknown_order", "ghost")} <= kinds(audit(snap))


def test_pending_past_timeout_names_the_step_that_stalled() -> None:
    cases = [
        (None, None, "orders.created"),
        ("HELD", None, "payments.completed"),
        ("FAILED", None, "payments.failed"),
        ("HELD", "RESERVED", "inventory.reserved"),
        ("HELD", "FAILED", "inventory.failed"),
    ]
    for pay, res, event in cases:
        snap = snapshot(orders={"o-9": order("PENDING", created_at=0.0)}, now=100.0)
        if pay:
            snap.payments["o-9"] = payment(pay)
        if res:
            snap.reservations["o-9"] = reservation(res)
        stuck = [d for d in audit(snap) if d.kind == "pending_past_timeout"]
        assert [d.repair for d in stuck] == [Repair(event)], (pay, res)


def test_pending_inside_its_timeout_is_not_a_discrepancy() -> None:
    snap = snapshot(orders={"o-9": order("PENDING", created_at=80.0)}, now=100.0)
    assert audit(snap) == []


def test_balance_that_does_not_match_deposits_minus_charges_is_reported() -> None:
    snap = consistent()
    snap.accounts["alice"]["balance_cents"] = 501
    assert ("balance_not_conserved", "alice") in kinds(audit(snap))
