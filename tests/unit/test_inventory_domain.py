from inventory_svc.domain import (
    Reservation,
    ReservationStatus,
    Stock,
    commit,
    release,
    reserve,
    restock,
)
from shared.contract import quantities_per_sku


def stock(**levels: int) -> dict[str, Stock | None]:
    return {sku: Stock(sku, available, 0) for sku, available in levels.items()}


def test_order_lines_sum_repeated_skus() -> None:
    assert quantities_per_sku([("a", 1), ("b", 2), ("a", 3)]) == {"a": 4, "b": 2}


def test_reserve_takes_every_line_and_emits_reserved() -> None:
    levels = stock(a=5, b=2)
    reservation, events = reserve("o-1", {"a": 3, "b": 2}, None, levels)
    assert reservation is not None and reservation.status is ReservationStatus.RESERVED
    assert (levels["a"].available, levels["a"].reserved) == (2, 3)  # type: ignore[union-attr]
    assert (levels["b"].available, levels["b"].reserved) == (0, 2)  # type: ignore[union-attr]
    assert [(e.type, e.data) for e in events] == [
        ("inventory.reserved", {"items": [{"sku": "a", "quantity": 3}, {"sku": "b", "quantity": 2}]})
    ]


def test_reserve_is_all_or_nothing_when_one_sku_is_short() -> None:
    levels = stock(a=5, b=1)
    reservation, events = reserve("o-1", {"a": 3, "b": 2}, None, levels)
    assert reservation is not None and reservation.status is ReservationStatus.FAILED
    assert [(e.type, e.data) for e in events] == [("inventory.failed", {"reason": "out_of_stock", "sku": "b"})]
    assert levels["a"].available == 5 and levels["a"].reserved == 0  # type: ignore[union-attr]


def test_reserve_fails_for_unknown_sku() -> None:
    levels: dict[str, Stock | None] = {"a": Stock("a", 5, 0), "ghost": None}
    _, events = reserve("o-1", {"a": 1, "ghost": 1}, None, levels)
    assert [e.data for e in events] == [{"reason": "unknown_sku", "sku": "ghost"}]


def test_commit_moves_reserved_stock_out_for_good() -> None:
    levels = stock(a=5)
    reservation, _ = reserve("o-1", {"a": 3}, None, levels)
    present = {k: v for k, v in levels.items() if v}
    assert commit(reservation, present) is True
    assert (present["a"].available, present["a"].reserved) == (2, 0)
    assert commit(reservation, present) is False


def test_release_gives_stock_back_once() -> None:
    levels = stock(a=5)
    reservation, _ = reserve("o-1", {"a": 3}, None, levels)
    present = {k: v for k, v in levels.items() if v}
    released, events = release("o-1", "requested", reservation, present)
    assert released is not None and released.status is ReservationStatus.RELEASED
    assert (present["a"].available, present["a"].reserved) == (5, 0)
    assert [(e.type, e.data) for e in events] == [("inventory.released", {"items": [{"sku": "a", "quantity": 3}]})]
    assert release("o-1", "requested", released, present) == (None, [])
    assert present["a"].available == 5


def test_empty_compensation_is_recorded_and_blocks_a_late_reservation() -> None:
    barrier, events = release("o-1", "timeout", None, {})
    assert barrier is not None and barrier.status is ReservationStatus.CANCELLED and events == []
    levels = stock(a=5)
    assert reserve("o-1", {"a": 1}, barrier, levels) == (None, [])
    assert levels["a"].available == 5  # type: ignore[union-attr]


def test_release_after_failed_reservation_gives_nothing_back() -> None:
    failed = Reservation("o-1", ReservationStatus.FAILED, {"a": 9}, "out_of_stock")
    levels = {"a": Stock("a", 1, 0)}
    assert release("o-1", "out_of_stock", failed, levels) == (None, [])
    assert levels["a"].available == 1


def test_restock_creates_or_adds() -> None:
    assert restock(None, "a", 4) == Stock("a", 4, 0)
    assert restock(Stock("a", 4, 1), "a", 6) == Stock("a", 10, 1)
