"""``python -m shared.ops.store_bench`` runs the three services' rounds to the end of every saga."""

from __future__ import annotations

from shared.ops.store_bench import SERVICES, run
from shared.partitions import Partitioning


def test_every_saga_runs_to_its_end_and_each_service_is_timed() -> None:
    result = run(orders=80, seed=3)
    # order_svc takes each order's request and the one event that ends it, so every saga ended.
    assert result.messages_per_saga["order_svc"] == 2.0
    assert result.messages_per_saga["payment_svc"] >= 1.0  # orders.created, plus cancellations
    assert result.messages_per_saga["inventory_svc"] >= 2.0  # orders.created, then its end
    assert set(result.cpu_us_per_saga) == set(SERVICES)
    assert all(us > 0 for us in result.cpu_us_per_saga.values())


def test_partitioned_every_saga_still_ends_and_the_sub_steps_are_applied() -> None:
    unpartitioned = run(orders=80, seed=3)
    result = run(orders=80, seed=3, partitioning=Partitioning(4))
    assert result.messages_per_saga["order_svc"] == 2.0  # every saga ended, as unpartitioned
    # inventory_svc also takes the batches of sub-steps between its partitions. payment_svc takes
    # only batches: what order_svc sends each partition of its customers' orders.
    assert result.messages_per_saga["inventory_svc"] > unpartitioned.messages_per_saga["inventory_svc"]
    assert 0 < result.messages_per_saga["payment_svc"] < unpartitioned.messages_per_saga["payment_svc"]
    assert sum(result.commits.values()) > sum(unpartitioned.commits.values())
