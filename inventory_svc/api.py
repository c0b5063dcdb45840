"""inventory_svc's requests: ``api.inventory.restock`` and ``api.inventory.stock``."""

from __future__ import annotations

import functools
import json
import sqlite3
from typing import Annotated, Any

from pydantic import Field

from inventory_svc import domain, repository
from inventory_svc.domain import Stock
from shared.api import (
    ApiError,
    ApiRequest,
    ByKey,
    Endpoint,
    PageRequest,
    RequestId,
    already_applied,
    json_endpoint,
    merge_pages,
    page,
)
from shared.contract import MAX_QUANTITY, Sku
from shared.service import ServiceContext
from shared.subjects import (
    API_INVENTORY_RESERVATIONS,
    API_INVENTORY_RESTOCK,
    API_INVENTORY_SKUS,
    API_INVENTORY_STOCK,
)

MAX_RESTOCK = MAX_QUANTITY * 1000


class Restock(ApiRequest):
    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=MAX_RESTOCK)]
    request_id: RequestId | None = None
    """Sent again under the same key (after a timeout), the restock is made once."""


class GetStock(ApiRequest):
    sku: str


def _reply(stock: Stock) -> dict[str, Any]:
    return {"sku": stock.sku, "available": stock.available, "reserved": stock.reserved}


def endpoints(ctx: ServiceContext) -> list[Endpoint]:
    async def restock(req: Restock) -> dict[str, Any]:
        # Committed before the reply: a client that got an answer can rely on the stock.
        def apply(tx: sqlite3.Connection) -> Stock:
            current = repository.get_stock(tx, [req.sku])[req.sku]
            recorded = repository.restock_of_request(tx, req.request_id)
            if already_applied(req.request_id, recorded, (req.sku, req.quantity)) and current:
                return current
            stock = domain.restock(current, req.sku, req.quantity)
            repository.save_stock(tx, [stock])
            repository.record_restock(tx, req.sku, req.quantity, req.request_id)
            return stock

        stock = await ctx.store.run(apply)
        return _reply(stock)

    async def stock(req: GetStock) -> dict[str, Any]:
        found = (await ctx.store.read(functools.partial(repository.get_stock, skus=[req.sku])))[req.sku]
        if found is None:
            raise ApiError("not_found", f"no sku {req.sku!r}")
        return _reply(found)

    async def list_reservations(req: PageRequest) -> dict[str, Any]:
        reservations, next_after = await page(
            ctx.store,
            "SELECT order_id, status, lines, reason FROM reservations WHERE order_id > ? ORDER BY order_id LIMIT ?",
            req,
            "order_id",
            lambda row: {
                "order_id": row["order_id"],
                "status": row["status"],
                "reason": row["reason"],
                "items": [{"sku": sku, "quantity": qty} for sku, qty in json.loads(row["lines"]).items()],
            },
        )
        return {"reservations": reservations, "next": next_after}

    async def list_skus(req: PageRequest) -> dict[str, Any]:
        skus, next_after = await page(
            ctx.store,
            "SELECT s.sku, s.available, s.reserved,"
            " (SELECT COALESCE(SUM(r.quantity), 0) FROM restocks r WHERE r.sku = s.sku) AS restocked"
            " FROM stock s WHERE s.sku > ? ORDER BY s.sku LIMIT ?",
            req,
            "sku",
            dict,
        )
        return {"skus": skus, "next": next_after}

    return [
        json_endpoint("restock", API_INVENTORY_RESTOCK, Restock, restock, ByKey("sku")),
        json_endpoint("stock", API_INVENTORY_STOCK, GetStock, stock, ByKey("sku")),
        json_endpoint(
            "reservations",
            API_INVENTORY_RESERVATIONS,
            PageRequest,
            list_reservations,
            merge_pages("reservations", "order_id"),
        ),
        json_endpoint("skus", API_INVENTORY_SKUS, PageRequest, list_skus, merge_pages("skus", "sku")),
    ]
