"""A small client of the saga's public interface, used by the demo and the tests.

It sends exactly what the documented ``nats pub`` / ``nats req`` lines send.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from shared.envelope import new_event_id
from shared.jetstream import MSG_ID_HEADER, publish_until_stored
from shared.subjects import (
    API_INVENTORY_RESTOCK,
    API_INVENTORY_STOCK,
    API_ORDERS_GET,
    API_PAYMENTS_ACCOUNT,
    API_PAYMENTS_DEPOSIT,
    EventType,
    event_subject,
)

TERMINAL = ("CONFIRMED", "CANCELLED")


class ApiErrorReply(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def envelope_bytes(event_type: str, order_id: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    return json.dumps(
        {"event_id": event_id or new_event_id(), "type": event_type, "order_id": order_id, "data": data}
    ).encode()


def order_request(order_id: str, customer_id: str, items: list[dict[str, Any]]) -> tuple[str, bytes, str]:
    """(subject, body, event_id) of an ``orders.requested`` event."""
    event_id = new_event_id()
    data = {"customer_id": customer_id, "items": items}
    return (
        event_subject(EventType.ORDERS_REQUESTED, order_id),
        envelope_bytes(EventType.ORDERS_REQUESTED, order_id, data, event_id),
        event_id,
    )


def cancel_request(order_id: str) -> tuple[str, bytes, str]:
    """(subject, body, event_id) of an ``orders.cancel_requested`` event."""
    event_id = new_event_id()
    return (
        event_subject(EventType.ORDERS_CANCEL_REQUESTED, order_id),
        envelope_bytes(EventType.ORDERS_CANCEL_REQUESTED, order_id, {}, event_id),
        event_id,
    )


async def publish_event(
    js: JetStreamContext,
    event_type: str,
    order_id: str,
    data: dict[str, Any],
    *,
    event_id: str | None = None,
    msg_id: str | None = None,
) -> str:
    """Publish a client event until the stream has it (through a leader election too); the
    Nats-Msg-Id defaults to the event_id. Returns the event_id."""
    event_id = event_id or new_event_id()
    body = envelope_bytes(event_type, order_id, data, event_id)
    headers = {MSG_ID_HEADER: msg_id or event_id}
    await publish_until_stored(js, event_subject(event_type, order_id), body, headers)
    return event_id


async def place_order(
    js: JetStreamContext, order_id: str, customer_id: str, items: list[dict[str, Any]], **kwargs: Any
) -> str:
    data = {"customer_id": customer_id, "items": items}
    return await publish_event(js, EventType.ORDERS_REQUESTED, order_id, data, **kwargs)


async def cancel_order(js: JetStreamContext, order_id: str, **kwargs: Any) -> str:
    return await publish_event(js, EventType.ORDERS_CANCEL_REQUESTED, order_id, {}, **kwargs)


async def request(nc: Client, subject: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    payload: dict[str, Any] = json.loads(reply.data)
    if "error" in payload:
        raise ApiErrorReply(payload["error"]["code"], payload["error"]["message"])
    return payload


async def _unless_not_found(nc: Client, subject: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The reply, or None where the service answers ``not_found``."""
    try:
        return await request(nc, subject, body)
    except ApiErrorReply as exc:
        if exc.code == "not_found":
            return None
        raise


async def get_order(nc: Client, order_id: str) -> dict[str, Any] | None:
    return await _unless_not_found(nc, API_ORDERS_GET, {"order_id": order_id})


async def change(
    nc: Client, subject: str, body: dict[str, Any], attempts: int = 4, timeout: float = 5.0
) -> dict[str, Any]:
    """A change (deposit, restock) under one idempotency key, sent again while it goes unanswered:
    a failover or a slow instance can leave the first try applied with its reply lost, and the
    service applies the key once (``request_id``, docs/events.md)."""
    keyed = {**body, "request_id": body.get("request_id") or f"req-{uuid.uuid4().hex}"}
    for attempt in range(1, attempts + 1):
        try:
            return await request(nc, subject, keyed, timeout=timeout)
        except (NatsTimeout, NoRespondersError):
            if attempt == attempts:
                raise
            await asyncio.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


async def deposit(nc: Client, customer_id: str, amount_cents: int, request_id: str | None = None) -> dict[str, Any]:
    body = {"customer_id": customer_id, "amount_cents": amount_cents, "request_id": request_id}
    return await change(nc, API_PAYMENTS_DEPOSIT, body)


async def balance(nc: Client, customer_id: str) -> int | None:
    account = await _unless_not_found(nc, API_PAYMENTS_ACCOUNT, {"customer_id": customer_id})
    return None if account is None else int(account["balance_cents"])


async def restock(nc: Client, sku: str, quantity: int, request_id: str | None = None) -> dict[str, Any]:
    return await change(nc, API_INVENTORY_RESTOCK, {"sku": sku, "quantity": quantity, "request_id": request_id})


async def stock(nc: Client, sku: str) -> dict[str, Any] | None:
    return await _unless_not_found(nc, API_INVENTORY_STOCK, {"sku": sku})


async def wait_until_terminal(nc: Client, order_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll the order until it is CONFIRMED or CANCELLED; raise TimeoutError with its last state."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            last = await get_order(nc, order_id)
        except (TimeoutError, ApiErrorReply, Exception):  # a service still starting
            last = None
        if last is not None and last["status"] in TERMINAL:
            return last
        await asyncio.sleep(0.05)
    raise TimeoutError(f"order {order_id} not terminal after {timeout}s: {last}")
