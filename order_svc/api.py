"""order_svc's queries: ``api.orders.get``."""

from __future__ import annotations

from typing import Any

from order_svc import repository
from shared.api import ApiError, ApiRequest, Endpoint, json_endpoint
from shared.service import ServiceContext
from shared.subjects import API_ORDERS_GET


class GetOrder(ApiRequest):
    order_id: str


def endpoints(ctx: ServiceContext) -> list[Endpoint]:
    async def get_order(req: GetOrder) -> dict[str, Any]:
        order = await repository.get(ctx.store.reader, req.order_id)
        if order is None:
            raise ApiError("not_found", f"no order {req.order_id!r}")
        return {
            "order_id": order.order_id,
            "status": order.status.value,
            "reason": order.reason,
            "customer_id": order.customer_id,
            "items": [i.model_dump() for i in order.items],
            "total_cents": order.total_cents,
        }

    return [json_endpoint("get", API_ORDERS_GET, GetOrder, get_order)]
