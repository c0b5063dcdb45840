"""Run inventory_svc: ``python -m inventory_svc`` or ``inventory-svc``."""

from __future__ import annotations

from inventory_svc import api, handlers, repository
from shared.service import ServiceDefinition
from shared.service import main as run_service
from shared.subjects import Stream

INVENTORY_SERVICE = ServiceDefinition(
    name="inventory_svc",
    api_name="inventory",
    description="Stock of the choreographed saga: reserve, release, restock.",
    stream=Stream.INVENTORY,
    schema=repository.SCHEMA,
    migrate=repository.migrate,
    consumers=handlers.consumers,
    steps=Stream.INVENTORY_STEPS,
    endpoints=api.endpoints,
)


def main() -> None:
    run_service(INVENTORY_SERVICE)


if __name__ == "__main__":
    main()
