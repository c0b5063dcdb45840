"""Run order_svc: ``python -m order_svc`` or ``order-svc``."""

from __future__ import annotations

from order_svc import api, handlers, repository
from order_svc.timeouts import run_timeouts, warn_if_a_node_loss_can_time_out_orders
from shared.service import ServiceDefinition
from shared.service import main as run_service
from shared.subjects import Stream

ORDER_SERVICE = ServiceDefinition(
    name="order_svc",
    api_name="orders",
    description="Orders of the choreographed saga: place, cancel, query.",
    stream=Stream.ORDERS,
    schema=repository.SCHEMA,
    consumers=handlers.consumers,
    feeds=(Stream.PAYMENT_STEPS,),
    requeue_fed=handlers.requeue_payment_input,
    endpoints=api.endpoints,
    background=lambda ctx, stop: [run_timeouts(ctx, stop)],
    migrate=repository.migrate,
    check_settings=warn_if_a_node_loss_can_time_out_orders,
)


def main() -> None:
    run_service(ORDER_SERVICE)


if __name__ == "__main__":
    main()
