"""Partition arithmetic and the spreading of partitions over instances: pure logic."""

from __future__ import annotations

import pytest

from shared.balance import Member, decide
from shared.partitions import Partitioning, fnv1a_32, partition_of, split_stored, stored_subject, transform_dest


def test_fnv1a_matches_the_published_test_vectors() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_one_partition_keeps_every_name_of_before() -> None:
    one = Partitioning(1)
    assert (one.unit("order_svc", 0), one.subject(0, "orders.created.o-1"), one.of("anything")) == (
        "order_svc",
        "orders.created.o-1",
        0,
    )


def test_partitioned_names_carry_the_partition() -> None:
    four = Partitioning(4)
    assert four.unit("payment_svc", 3) == "payment_svc.p3"
    assert four.subject(2, "orders.created.o-1") == "part.2.orders.created.o-1"
    assert partition_of("o-1", 4) == fnv1a_32(b"o-1") % 4


def test_a_stored_subject_splits_back_into_its_partition_and_the_published_subject() -> None:
    assert split_stored(stored_subject(7, "inventory.reserved.o-9")) == (7, "inventory.reserved.o-9")
    assert split_stored("orders.created.o-1") == (None, "orders.created.o-1")
    assert split_stored("part.x.orders.created.o-1") == (None, "part.x.orders.created.o-1")


def test_the_stream_transform_hashes_the_order_id_token() -> None:
    assert transform_dest("orders", 4) == "part.{{partition(4,2)}}.orders.{{wildcard(1)}}.{{wildcard(2)}}"


def member(name: str, owned: set[int], eligible: range = range(4)) -> Member:
    return Member(name, frozenset(owned), frozenset(eligible))


def test_an_instance_alone_takes_every_free_partition() -> None:
    assert decide(member("a", {0, 1}), [], free=[2, 3]).take


def test_the_richest_instance_hands_one_over_to_a_newcomer() -> None:
    a, b = member("a", {0, 1, 2, 3}), member("b", set())
    assert decide(a, [b], free=[]).hand_over == 3
    assert not decide(b, [a], free=[]).take  # nothing free yet


def test_a_newcomer_takes_what_was_handed_over_but_the_giver_does_not_take_it_back() -> None:
    a, b = member("a", {0, 1, 2}), member("b", set())
    assert decide(b, [a], free=[3]).take
    assert not decide(a, [b], free=[3]).take


@pytest.mark.parametrize(
    ("owned", "others", "expected"),
    [
        ({0, 1}, [{2, 3}], None),  # even: nothing to do
        ({0, 1}, [{2}, {3}], None),  # 2/1/1 of 4: within floor and ceiling
        ({0, 1}, [{2, 3}, set()], 1),  # 2/2/0: the richest (ties to the highest id: "c"?) hands over
    ],
)
def test_spreading_settles_within_floor_and_ceiling(
    owned: set[int], others: list[set[int]], expected: int | None
) -> None:
    me = member("z", owned)  # the highest id: the richest on a tie
    peers = [member(chr(ord("a") + i), o) for i, o in enumerate(others)]
    assert decide(me, peers, free=[]).hand_over == expected


def test_one_partition_and_two_instances_is_a_writer_and_a_standby() -> None:
    writer, standby = member("a", {0}, range(1)), member("b", set(), range(1))
    assert decide(writer, [standby], free=[]) == decide(standby, [writer], free=[])  # both: nothing
    assert decide(standby, [], free=[0]).take  # the writer gone: the standby takes over


def test_instances_with_other_partition_sets_do_not_count_against_each_other() -> None:
    a = member("a", {0, 1}, range(2))
    other_host = member("b", set(), range(2, 4))
    assert decide(a, [other_host], free=[]).hand_over is None


def test_a_partition_set_reads_ranges_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import Settings, SettingsError

    monkeypatch.setenv("PARTITIONS", "8")
    monkeypatch.setenv("PARTITION_SET", "0-2,6")
    assert Settings.from_env("order_svc").owned_partitions == [0, 1, 2, 6]
    monkeypatch.setenv("PARTITION_SET", "9")
    with pytest.raises(SettingsError, match="no partition below PARTITIONS"):
        Settings.from_env("order_svc")
    monkeypatch.setenv("PARTITION_SET", "a-b")
    with pytest.raises(SettingsError, match="0-3,6"):
        Settings.from_env("order_svc")
    monkeypatch.delenv("PARTITION_SET")
    assert Settings.from_env("order_svc").owned_partitions == list(range(8))
