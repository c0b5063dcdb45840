"""order_svc's queries: ``api.orders.get``."""

from __future__ import annotations

import functools
import time
from typing import Any

from order_svc import repository
from order_svc.domain import Order
from shared.api import ApiError, ApiRequest, ByKey, Endpoint, PageRequest, json_endpoint, merge_pages, page
from shared.service import ServiceContext
from shared.subjects import API_ORDERS_GET, API_ORDERS_LIST


class GetOrder(ApiRequest):
    order_id: str


def _public(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "status": order.status.value,
        "reason": order.reason,
        "customer_id": order.customer_id,
        "items": [i.model_dump() for i in order.items],
        "total_cents": order.total_cents,
    }


def endpoints(ctx: ServiceContext) -> list[Endpoint]:
    async def get_order(req: GetOrder) -> dict[str, Any]:
        order = await ctx.store.read(functools.partial(repository.get, order_id=req.order_id))
        if order is None:
            raise ApiError("not_found", f"no order {req.order_id!r}")
        return _public(order)

    async def list_orders(req: PageRequest) -> dict[str, Any]:
        orders, next_after = await page(
            ctx.store,
            "SELECT * FROM orders WHERE order_id > ? ORDER BY order_id LIMIT ?",
            req,
            "order_id",
            lambda row: {**_public(repository.from_row(row)), "created_at": row["created_at"]},
        )
        return {
            "orders": orders,
            "next": next_after,
            "order_timeout_s": ctx.settings.order_timeout_s,
            "now": time.time(),
        }

    return [
        json_endpoint("get", API_ORDERS_GET, GetOrder, get_order, ByKey("order_id")),
        json_endpoint("list", API_ORDERS_LIST, PageRequest, list_orders, merge_pages("orders", "order_id")),
    ]
