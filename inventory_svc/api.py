"""inventory_svc's requests: ``api.inventory.restock`` and ``api.inventory.stock``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from inventory_svc import domain, repository
from inventory_svc.domain import Stock
from shared.api import ApiError, ApiRequest, Endpoint, json_endpoint
from shared.contract import MAX_QUANTITY, Sku
from shared.service import ServiceContext
from shared.subjects import API_INVENTORY_RESTOCK, API_INVENTORY_STOCK

MAX_RESTOCK = MAX_QUANTITY * 1000


class Restock(ApiRequest):
    sku: Sku
    quantity: Annotated[int, Field(ge=1, le=MAX_RESTOCK)]


class GetStock(ApiRequest):
    sku: str


def _reply(stock: Stock) -> dict[str, Any]:
    return {"sku": stock.sku, "available": stock.available, "reserved": stock.reserved}


def endpoints(ctx: ServiceContext) -> list[Endpoint]:
    async def restock(req: Restock) -> dict[str, Any]:
        # Committed before the reply: a client that got an answer can rely on the stock.
        async with ctx.store.transaction() as tx:
            current = (await repository.get_stock(tx, [req.sku]))[req.sku]
            stock = domain.restock(current, req.sku, req.quantity)
            await repository.save_stock(tx, [stock])
            await repository.record_restock(tx, req.sku, req.quantity)
        return _reply(stock)

    async def stock(req: GetStock) -> dict[str, Any]:
        found = (await repository.get_stock(ctx.store.reader, [req.sku]))[req.sku]
        if found is None:
            raise ApiError("not_found", f"no sku {req.sku!r}")
        return _reply(found)

    return [
        json_endpoint("restock", API_INVENTORY_RESTOCK, Restock, restock),
        json_endpoint("stock", API_INVENTORY_STOCK, GetStock, stock),
    ]
