"""saga-bench's orders: ``--no-rekeying`` keeps every order's customer and sku at home."""

from __future__ import annotations

import json
import random

from shared.ops.bench import make_orders, order_message
from shared.partitions import partition_of


def _parties(local_among: int) -> list[tuple[str, str, str]]:
    rng = random.Random(7)
    orders = make_orders(400, False, rng, "t")
    parties = []
    for order in orders:
        _, body, _ = order_message(order, rng, local_among)
        data = json.loads(body)["data"]
        parties.append((order.order_id, data["customer_id"], data["items"][0]["sku"]))
    return parties


def test_no_rekeying_draws_each_orders_customer_and_sku_from_its_own_partition() -> None:
    for order_id, customer, sku in _parties(4):
        home = partition_of(order_id, 4)
        assert partition_of(customer, 4) == home
        assert partition_of(sku, 4) == home


def test_by_default_orders_cross_partitions_as_real_ones_do() -> None:
    parties = _parties(1)
    crossing = [p for p in parties if partition_of(p[1], 4) != partition_of(p[0], 4)]
    # About (N-1)/N of orders have their customer elsewhere: the re-keying the bench measures.
    assert 0.6 < len(crossing) / len(parties) < 0.9
