"""Run payment_svc: ``python -m payment_svc`` or ``payment-svc``."""

from __future__ import annotations

from payment_svc import api, handlers, repository
from shared.service import ServiceDefinition
from shared.service import main as run_service
from shared.subjects import Stream

PAYMENT_SERVICE = ServiceDefinition(
    name="payment_svc",
    api_name="payments",
    description="Customer balances of the choreographed saga: hold, capture, release, deposit.",
    stream=Stream.PAYMENTS,
    schema=repository.SCHEMA,
    migrate=repository.migrate,
    consumers=handlers.consumers,
    steps=Stream.PAYMENT_STEPS,
    endpoints=api.endpoints,
)


def main() -> None:
    run_service(PAYMENT_SERVICE)


if __name__ == "__main__":
    main()
