"""An order across several inventory partitions: the home's dispatch, pure logic."""

from __future__ import annotations

from inventory_svc import domain
from inventory_svc.domain import DispatchStatus, Stock
from shared.partitions import Partitioning
from shared.subjects import EventType


def test_lines_are_grouped_by_the_partition_of_their_sku() -> None:
    four = Partitioning(4)
    lines = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    parts = domain.parts_of(lines, four)
    assert {sku: p for p, part in parts.items() for sku in part} == {sku: four.of(sku) for sku in lines}


def test_a_single_other_partition_is_delegated_the_whole_decision() -> None:
    dispatched, events = domain.dispatch("o-1", {2: {"a": 1}})
    assert dispatched.status is DispatchStatus.DELEGATED
    assert [(e.type, e.partition, e.data["delegated"]) for e in events] == [(domain.RESERVE_REQUESTED, 2, True)]


def test_the_saga_hears_reserved_only_once_every_part_reserved() -> None:
    dispatched, _ = domain.dispatch("o-1", {0: {"a": 1}, 3: {"b": 2}})
    assert domain.part_answered(dispatched, 3, None) == (True, [])
    changed, events = domain.part_answered(dispatched, 0, None)
    assert changed and [e.type for e in events] == [EventType.INVENTORY_RESERVED]
    assert events[0].data == {"items": [{"sku": "a", "quantity": 1}, {"sku": "b", "quantity": 2}]}


def test_a_failed_part_fails_the_order_and_releases_every_other_part() -> None:
    dispatched, _ = domain.dispatch("o-1", {0: {"a": 1}, 1: {"b": 1}, 3: {"c": 1}})
    domain.part_answered(dispatched, 0, None)
    changed, events = domain.part_answered(dispatched, 1, ("out_of_stock", "b"))
    assert changed and dispatched.status is DispatchStatus.FAILED
    assert [(e.type, e.partition) for e in events] == [
        (EventType.INVENTORY_FAILED, None),
        (domain.RELEASE_REQUESTED, 0),
        (domain.RELEASE_REQUESTED, 3),  # not answered yet: it will never reserve (its barrier)
    ]
    assert domain.part_answered(dispatched, 3, None) == (False, [])  # a late answer changes nothing


def test_a_cancel_releases_every_part_once_and_a_confirm_after_it_commits_nothing() -> None:
    dispatched, _ = domain.dispatch("o-1", {0: {"a": 1}, 3: {"b": 2}})
    releases = domain.dispatch_cancelled(dispatched, "timeout")
    assert [(e.type, e.partition, e.data["reason"]) for e in releases] == [
        (domain.RELEASE_REQUESTED, 0, "timeout"),
        (domain.RELEASE_REQUESTED, 3, "timeout"),
    ]
    again = domain.dispatch_cancelled(dispatched, "again")  # a repair: sent again, the parts release once
    assert [(e.partition, e.data["reason"]) for e in again] == [(0, "timeout"), (3, "timeout")]
    assert domain.dispatch_confirmed(dispatched) == []


def test_a_confirmed_order_commits_in_every_part() -> None:
    dispatched, _ = domain.dispatch("o-1", {0: {"a": 1}, 3: {"b": 2}})
    domain.part_answered(dispatched, 0, None)
    domain.part_answered(dispatched, 3, None)
    commits = domain.dispatch_confirmed(dispatched)
    assert [(e.type, e.partition) for e in commits] == [(domain.COMMIT_REQUESTED, 0), (domain.COMMIT_REQUESTED, 3)]
    assert dispatched.status is DispatchStatus.COMMITTED
    assert len(domain.dispatch_confirmed(dispatched)) == 2  # a repair sends them again
    assert domain.dispatch_cancelled(dispatched, "late") == []  # never a release after a commit


def test_a_part_answers_its_home_unless_delegated() -> None:
    stock: dict[str, Stock | None] = {"a": Stock("a", 5, 0)}
    reservation, events = domain.reserve_part("o-1", {"a": 2}, False, home=1, part=2, stock=stock)
    assert reservation.status is domain.ReservationStatus.RESERVED and stock["a"] == Stock("a", 3, 2)
    assert [(e.type, e.partition, e.data) for e in events] == [(domain.PART_RESERVED, 1, {"partition": 2})]
    _, failed = domain.reserve_part("o-2", {"a": 9}, False, home=1, part=2, stock=stock)
    assert [(e.type, e.data["reason"]) for e in failed] == [(domain.PART_FAILED, "out_of_stock")]
    _, delegated = domain.reserve_part("o-3", {"a": 1}, True, home=1, part=2, stock=stock)
    assert [e.type for e in delegated] == [EventType.INVENTORY_RESERVED]
