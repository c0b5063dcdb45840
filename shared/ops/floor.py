"""Bare relays for ``saga-bench --floor``: the same hops as the saga with none of its guarantees.

``python -m shared.ops.floor order|payment|inventory`` consumes the same subjects as the real
service with the same pull, decodes each message the same way (one validation pass against the
route's data model), writes the next event's JSON and publishes it the same way (pipelined,
``Nats-Msg-Id`` set) and acks — with no store, no dedup, no outbox, no compensation records. The
decisions follow the benchmark's naming: a ``poor-`` customer cannot pay, a ``scarce-`` sku is
out of stock. inventory keeps each order's items in a dict (what the real one keeps in SQLite),
because payments.completed does not carry them. The gap between this and the real services is
the cost of the guarantees.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

from shared.aio import forward, wait_event
from shared.connection import connect, nats_url_from_env
from shared.consumer import ConsumerSpec
from shared.envelope import BadMessage, Envelope, Event
from shared.jetstream import IDLE_WAIT_S, Publisher, Puller, durable_name, ensure_consumer
from shared.outbox import from_events
from shared.partitions import UNPARTITIONED, Partitioning, split_stored
from shared.runtime import tune_gc
from shared.settings import Settings
from shared.streams import ensure_streams
from shared.subjects import EventType

Decide = Callable[[Envelope, Any], list[Event]]
"""What a relay emits for a decoded event: ``(envelope, data)``, data typed by the route's model."""

BATCH = 256


def _order(env: Envelope, data: Any) -> list[Event]:
    match env.type:
        case EventType.ORDERS_REQUESTED:
            items = [item.model_dump() for item in data.items]
            total = sum(i["quantity"] * i["unit_price_cents"] for i in items)
            created = {"customer_id": data.customer_id, "items": items, "total_cents": total}
            return [Event(EventType.ORDERS_CREATED, env.order_id, created)]
        case EventType.INVENTORY_RESERVED:
            return [Event(EventType.ORDERS_CONFIRMED, env.order_id, {"total_cents": 0})]
        case EventType.PAYMENTS_FAILED | EventType.INVENTORY_FAILED:
            return [Event(EventType.ORDERS_CANCELLED, env.order_id, {"reason": data.reason})]
    return []


def _payment(env: Envelope, data: Any) -> list[Event]:
    if env.type != EventType.ORDERS_CREATED:
        return []
    if data.customer_id.startswith("poor-"):
        return [Event(EventType.PAYMENTS_FAILED, env.order_id, {"reason": "insufficient_funds"})]
    completed = {"customer_id": data.customer_id, "amount_cents": data.total_cents}
    return [Event(EventType.PAYMENTS_COMPLETED, env.order_id, completed)]


def _inventory() -> Decide:
    lines: dict[str, list[dict[str, Any]]] = {}

    def decide(env: Envelope, data: Any) -> list[Event]:
        if env.type == EventType.ORDERS_CREATED:
            lines[env.order_id] = [{"sku": i.sku, "quantity": i.quantity} for i in data.items]
            return []
        if env.type != EventType.PAYMENTS_COMPLETED:
            lines.pop(env.order_id, None)
            return []
        items = lines.pop(env.order_id, [])
        scarce = next((i["sku"] for i in items if i["sku"].startswith("scarce-")), None)
        if scarce:
            return [Event(EventType.INVENTORY_FAILED, env.order_id, {"reason": "out_of_stock", "sku": scarce})]
        return [Event(EventType.INVENTORY_RESERVED, env.order_id, {"items": items})]

    return decide


async def relay(
    nc: Client,
    publisher: Publisher,
    name: str,
    spec: ConsumerSpec,
    decide: Decide,
    stop: asyncio.Event,
    partitioning: Partitioning = UNPARTITIONED,
    partition: int = 0,
) -> None:
    # Partitioned, the streams store events renamed by partition: a relay reads one partition,
    # and each instance relays its share of them (no lease: the floor has no state to guard).
    filters = spec.partition_filters(partitioning, partition)
    durable = await ensure_consumer(nc.jetstream(), durable_name(f"floor_{name}", spec.stream), spec.stream, filters)
    arrived = asyncio.Event()
    puller = Puller(nc, spec.stream.value, durable, BATCH, arrived)
    await puller.start()
    async with forward(stop, arrived):
        while not stop.is_set():
            arrived.clear()
            msgs = await puller.take_ready(BATCH)
            if not msgs:
                await wait_event(arrived, IDLE_WAIT_S)
                continue
            outgoing = []
            for msg in msgs:
                try:
                    env, _, data = spec.decode(split_stored(msg.subject)[1], msg.data)
                except BadMessage:
                    continue
                for record in from_events(decide(env, data), env.event_id):
                    outgoing.append(record.message)
            if outgoing:
                await publisher.publish(outgoing, timeout_s=5.0)
            for msg in msgs:
                await msg.ack()
    await puller.close()


async def main_async(role: str) -> None:
    from inventory_svc.handlers import CONSUMERS as INVENTORY_CONSUMERS
    from order_svc.handlers import CONSUMERS as ORDER_CONSUMERS
    from payment_svc.handlers import CONSUMERS as PAYMENT_CONSUMERS

    roles: dict[str, tuple[list[ConsumerSpec], Decide]] = {
        "order": (ORDER_CONSUMERS, _order),
        "payment": (PAYMENT_CONSUMERS, _payment),
        "inventory": (INVENTORY_CONSUMERS, _inventory()),
    }
    specs, decide = roles[role]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    nc = await connect(nats_url_from_env(), max_reconnect_attempts=-1)
    # The services' stream settings (STREAM_REPLICAS on a cluster), so both run on the same streams.
    settings = Settings.from_env(f"floor-{role}")
    await ensure_streams(nc.jetstream(), settings.stream_settings)
    publisher = Publisher(nc)
    await publisher.start()
    partitioning = settings.partitioning
    instance, instances = int(os.environ.get("FLOOR_INSTANCE", "1")), int(os.environ.get("FLOOR_INSTANCES", "1"))
    mine = [p for p in partitioning.all() if p % instances == instance - 1]
    tasks = [
        asyncio.create_task(
            relay(
                nc,
                publisher,
                f"{role}_{i}{f'_p{p}' if partitioning.partitioned else ''}",
                spec,
                decide,
                stop,
                partitioning,
                p,
            )
        )
        for i, spec in enumerate(specs)
        for p in mine
    ]
    print('{"event": "service.started"}', flush=True)
    await asyncio.gather(*tasks)
    await nc.close()


if __name__ == "__main__":
    tune_gc()  # the services' interpreter settings: the floor differs from them only in the guarantees
    asyncio.run(main_async(sys.argv[1]))
