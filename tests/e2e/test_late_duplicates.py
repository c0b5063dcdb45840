"""The second line: once the inboxes have forgotten an order's events, replaying every one of
them still changes nothing, because each handler is a state machine keyed by order_id."""

from __future__ import annotations

import sqlite3

from nats.aio.client import Client

from shared.ops import client
from shared.ops.harness import SERVICES, System, consumers_idle
from shared.partitions import split_stored
from tests.conftest import poll, stream_messages, subject_count, unique
from tests.e2e.conftest import new_customer, new_sku, settled_balance, settled_stock


async def test_replaying_a_finished_sagas_events_after_the_inboxes_forgot_them_changes_nothing(
    nc: Client, system: System
) -> None:
    js = nc.jetstream()
    customer, sku = await new_customer(nc, 10_000), await new_sku(nc, 10)
    confirmed, cancelled = unique("o"), unique("o")
    await client.place_order(js, confirmed, customer, [{"sku": sku, "quantity": 2, "unit_price_cents": 1000}])
    await client.place_order(js, cancelled, customer, [{"sku": sku, "quantity": 20, "unit_price_cents": 1}])
    assert (await client.wait_until_terminal(nc, confirmed))["status"] == "CONFIRMED"
    assert (await client.wait_until_terminal(nc, cancelled))["reason"] == "out_of_stock"
    await settled_balance(nc, customer, 8_000)
    await settled_stock(nc, sku, 8)
    await poll(lambda: consumers_idle(js), lambda idle: idle)

    # Retention has passed for these orders: their inbox entries are gone.
    for name in SERVICES:
        for path in system.services[name].db_paths:  # every partition's file
            with sqlite3.connect(path, timeout=10) as db:
                db.execute("DELETE FROM inbox WHERE order_id IN (?, ?)", (confirmed, cancelled))

    history = [
        (split_stored(m.subject)[1], m.data)  # as published, which the stream renames by partition again
        for order_id in (confirmed, cancelled)
        for stream in ("ORDERS", "PAYMENTS", "INVENTORY")
        for m in await stream_messages(js, stream)
        if m.subject.endswith(f".{order_id}")
    ]
    assert len(history) >= 10
    counts_before = {subject: await subject_count(js, subject.split(".")[0].upper(), subject) for subject, _ in history}
    dead_letters_before = await subject_count(js, "DLQ", "dlq.>")  # other tests' share the system
    for subject, data in history:
        await js.publish(subject, data, headers={"Nats-Msg-Id": unique("replay")})
    await poll(lambda: consumers_idle(js), lambda idle: idle)

    assert (await client.get_order(nc, confirmed))["status"] == "CONFIRMED"  # type: ignore[index]
    assert (await client.get_order(nc, cancelled))["reason"] == "out_of_stock"  # type: ignore[index]
    await settled_balance(nc, customer, 8_000)
    await settled_stock(nc, sku, 8)
    # Nothing new was emitted: every subject holds just the original and its replay.
    for subject, before in counts_before.items():
        assert await subject_count(js, subject.split(".")[0].upper(), subject) == 2 * before, subject
    assert await subject_count(js, "DLQ", "dlq.>") == dead_letters_before
