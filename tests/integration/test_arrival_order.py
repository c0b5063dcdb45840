"""inventory_svc needs two events from two streams for one reservation: orders.created (the
items) and payments.completed (the go-ahead). Either may arrive first; neither is redelivered
or dead-lettered for it."""

from __future__ import annotations

import json
from collections.abc import Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from inventory_svc.__main__ import INVENTORY_SERVICE
from shared.ops.client import publish_event, restock, stock
from shared.ops.harness import consumers_idle
from shared.settings import Settings
from shared.subjects import EventType
from tests.conftest import poll, stream_messages, unique
from tests.integration.conftest import consumer_state, query, running


async def test_payment_before_the_items_reserves_when_the_items_come(
    nc: Client, js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    order_id, sku = unique("o"), unique("sku")
    async with running(INVENTORY_SERVICE, make_settings("inventory_svc")) as settings:
        await restock(nc, sku, 5)
        paid = {"customer_id": "alice", "amount_cents": 300}
        await publish_event(js, EventType.PAYMENTS_COMPLETED, order_id, paid)
        await poll(lambda: consumer_state(js, "PAYMENTS", "inventory_svc-payments"), lambda s: s[:2] == (0, 0))
        assert query(settings.db_path, "SELECT count(*) FROM reservations WHERE order_id = ?", order_id) == [(0,)]
        assert await stream_messages(js, "INVENTORY") == []

        items = [{"sku": sku, "quantity": 2, "unit_price_cents": 150}]
        created = {"customer_id": "alice", "items": items, "total_cents": 300}
        await publish_event(js, EventType.ORDERS_CREATED, order_id, created)
        [reserved] = await poll(lambda: stream_messages(js, "INVENTORY"), lambda m: m != [])
        assert reserved.subject == f"inventory.reserved.{order_id}"
        assert json.loads(reserved.data)["data"] == {"items": [{"sku": sku, "quantity": 2}]}
        assert await stock(nc, sku) == {"sku": sku, "available": 3, "reserved": 2}
        assert query(settings.db_path, "SELECT count(*) FROM early_payments") == [(0,)]
        # Delivered once each, nothing redelivered while it waited.
        assert (await consumer_state(js, "PAYMENTS", "inventory_svc-payments"))[2] == 0


async def test_cancel_between_an_early_payment_and_the_items_reserves_nothing(
    nc: Client, js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    order_id, sku = unique("o"), unique("sku")
    async with running(INVENTORY_SERVICE, make_settings("inventory_svc")):
        await restock(nc, sku, 5)
        await publish_event(js, EventType.PAYMENTS_COMPLETED, order_id, {"customer_id": "alice", "amount_cents": 300})
        await publish_event(js, EventType.ORDERS_CANCELLED, order_id, {"reason": "timeout"})
        items = [{"sku": sku, "quantity": 2, "unit_price_cents": 150}]
        await publish_event(
            js, EventType.ORDERS_CREATED, order_id, {"customer_id": "alice", "items": items, "total_cents": 300}
        )
        await poll(lambda: consumers_idle(js, ("ORDERS", "PAYMENTS")), bool)
        assert await stock(nc, sku) == {"sku": sku, "available": 5, "reserved": 0}
        assert await stream_messages(js, "INVENTORY") == []
