"""saga-bench's orders: ``--no-rekeying`` keeps every order's customer and sku at home, or one of them."""

from __future__ import annotations

import json
import random

from shared.ops.bench import make_orders, order_message
from shared.partitions import partition_of


def _parties(customer_among: int, sku_among: int) -> list[tuple[str, str, str]]:
    rng = random.Random(7)
    orders = make_orders(400, False, rng, "t")
    parties = []
    for order in orders:
        _, body, _ = order_message(order, rng, customer_among, sku_among)
        data = json.loads(body)["data"]
        parties.append((order.order_id, data["customer_id"], data["items"][0]["sku"]))
    return parties


def test_no_rekeying_draws_each_orders_customer_and_sku_from_its_own_partition() -> None:
    for order_id, customer, sku in _parties(4, 4):
        home = partition_of(order_id, 4)
        assert partition_of(customer, 4) == home
        assert partition_of(sku, 4) == home


def test_no_rekeying_of_one_service_keeps_only_its_key_at_home() -> None:
    payments_only, inventory_only = _parties(4, 1), _parties(1, 4)
    assert all(partition_of(c, 4) == partition_of(o, 4) for o, c, _ in payments_only)
    assert all(partition_of(s, 4) == partition_of(o, 4) for o, _, s in inventory_only)
    # The other key still crosses partitions about (N-1)/N of the time.
    assert 0.6 < sum(partition_of(s, 4) != partition_of(o, 4) for o, _, s in payments_only) / 400 < 0.9
    assert 0.6 < sum(partition_of(c, 4) != partition_of(o, 4) for o, c, _ in inventory_only) / 400 < 0.9


def test_by_default_orders_cross_partitions_as_real_ones_do() -> None:
    parties = _parties(1, 1)
    crossing = [p for p in parties if partition_of(p[1], 4) != partition_of(p[0], 4)]
    # About (N-1)/N of orders have their customer elsewhere: the re-keying the bench measures.
    assert 0.6 < len(crossing) / len(parties) < 0.9
