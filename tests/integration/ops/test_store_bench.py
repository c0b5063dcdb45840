"""``python -m shared.ops.store_bench`` runs the three services' rounds to the end of every saga."""

from __future__ import annotations

from shared.ops.store_bench import SERVICES, run


def test_every_saga_runs_to_its_end_and_each_service_is_timed() -> None:
    result = run(orders=80, seed=3)
    # order_svc takes each order's request and the one event that ends it, so every saga ended.
    assert result.messages_per_saga["order_svc"] == 2.0
    assert result.messages_per_saga["payment_svc"] >= 1.0  # orders.created, plus cancellations
    assert result.messages_per_saga["inventory_svc"] >= 2.0  # orders.created, then its end
    assert set(result.cpu_us_per_saga) == set(SERVICES)
    assert all(us > 0 for us in result.cpu_us_per_saga.values())
