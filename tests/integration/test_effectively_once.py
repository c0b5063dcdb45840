"""Dedup, the outbox relay, dead-lettering and ack/nak behaviour of the shared consumer, using
order_svc's real handlers on a real nats-server and SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from order_svc.__main__ import ORDER_SERVICE
from order_svc.handlers import on_orders_requested
from shared.consumer import ConsumerSpec, Route
from shared.contract import OrderRequested
from shared.envelope import Envelope, Event
from shared.ops.client import place_order
from shared.partitions import UNPARTITIONED
from shared.settings import Settings
from shared.subjects import EventType, Stream
from tests.conftest import poll, stream_messages, subject_count, unique
from tests.integration.conftest import consumer_state, deliveries, drained, query, running

ITEMS = [{"sku": "widget", "quantity": 2, "unit_price_cents": 150}]


async def test_same_event_with_three_msg_ids_creates_one_order_and_one_event(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    order_id = unique("o")
    async with running(ORDER_SERVICE, make_settings("order_svc")) as settings:
        event_id = await place_order(js, order_id, "alice", ITEMS)
        for copy in range(2):
            await place_order(js, order_id, "alice", ITEMS, event_id=event_id, msg_id=f"{event_id}-copy{copy}")
        assert await subject_count(js, "ORDERS", f"orders.requested.{order_id}") == 3
        await drained(js)
        await poll(lambda: subject_count(js, "ORDERS", f"orders.created.{order_id}"), lambda n: n >= 1)
        assert await subject_count(js, "ORDERS", f"orders.created.{order_id}") == 1
        assert await subject_count(js, "ORDERS", f"orders.rejected.{order_id}") == 0
        assert query(settings.db_path, "SELECT count(*) FROM inbox WHERE event_id = ?", event_id) == [(1,)]
        assert query(settings.db_path, "SELECT count(*) FROM orders WHERE order_id = ?", order_id) == [(1,)]


async def test_relay_publishes_with_event_id_as_msg_id_and_a_republish_is_dropped(
    nc: Client, js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    order_id = unique("o")
    created_subject = f"orders.created.{order_id}"
    async with running(ORDER_SERVICE, make_settings("order_svc")) as settings:
        request_id = await place_order(js, order_id, "alice", ITEMS)
        await poll(lambda: subject_count(js, "ORDERS", created_subject), lambda n: n == 1)
        msg = await js.get_last_msg("ORDERS", created_subject)
        assert msg.data is not None
        body = json.loads(msg.data)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == body["event_id"]
        assert body["causation_id"] == request_id
        assert body["data"] == {"customer_id": "alice", "items": ITEMS, "total_cents": 300}
        [(row_id, outbox_event_id)] = query(
            settings.db_path, "SELECT id, event_id FROM outbox WHERE subject = ?", created_subject
        )
        assert outbox_event_id == body["event_id"]
        # The watermark passes the row shortly after its ack (it is saved every MARK_INTERVAL_S).
        await poll(lambda: _watermark(settings), lambda through: through >= row_id)

    # A crash after publishing but before the watermark was saved: the next start sends the row
    # again, under the same Nats-Msg-Id, and the stream keeps one copy.
    with sqlite3.connect(settings.db_path) as db:
        db.execute("UPDATE outbox_relay SET published_through = ?", (row_id - 1,))
    sent = await nc.subscribe(created_subject)
    async with running(ORDER_SERVICE, settings):
        again = await sent.next_msg(timeout=15)
        assert again.headers is not None and again.headers["Nats-Msg-Id"] == outbox_event_id
        await poll(lambda: _watermark(settings), lambda through: through >= row_id)
    assert await subject_count(js, "ORDERS", created_subject) == 1


async def _watermark(settings: Settings) -> int:
    [(through,)] = query(settings.db_path, "SELECT published_through FROM outbox_relay")
    return int(through)


async def test_malformed_message_is_dead_lettered_byte_for_byte_and_the_next_one_is_processed(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    bad_order, good_order = unique("bad"), unique("good")
    raw = b'{"event_id": "x", "type": "orders.requested", "order_id": '
    async with running(ORDER_SERVICE, make_settings("order_svc")) as settings:
        ack = await js.publish(f"orders.requested.{bad_order}", raw, headers={"Nats-Msg-Id": "bad-1"})
        await place_order(js, good_order, "alice", ITEMS)
        await poll(lambda: subject_count(js, "ORDERS", f"orders.created.{good_order}"), lambda n: n == 1)
        await drained(js)
        [dead] = await stream_messages(js, "DLQ", "dlq.order_svc")
        assert dead.data == raw
        assert dead.headers is not None
        assert dead.headers["Dlq-Reason"] == "invalid_json"
        assert dead.headers["Dlq-Original-Subject"] == f"orders.requested.{bad_order}"
        assert dead.headers["Dlq-Original-Stream"] == "ORDERS"
        assert dead.headers["Dlq-Original-Sequence"] == str(ack.seq)
        assert dead.headers["Dlq-Original-Msg-Id"] == "bad-1"
        assert dead.headers["Dlq-Detail"]
        assert query(settings.db_path, "SELECT count(*) FROM orders WHERE order_id = ?", bad_order) == [(0,)]
        # Terminated, not retried: nothing pending and it was delivered once.
        assert (await consumer_state(js, "ORDERS", "order_svc-orders"))[2] == 0


async def test_bad_subjects_and_mismatched_types_are_dead_lettered_with_their_reason(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    order_id = unique("o")

    def envelope(event_type: str, oid: str = order_id) -> bytes:
        return json.dumps({"event_id": unique("e"), "type": event_type, "order_id": oid, "data": {}}).encode()

    async with running(ORDER_SERVICE, make_settings("order_svc")):
        await js.publish("orders.requested", envelope("orders.requested"))
        await js.publish(f"orders.requested.{order_id}.extra", envelope("orders.requested"))
        await js.publish("orders.cancel_requested.bad$id", envelope("orders.cancel_requested", "bad$id"))
        await js.publish(f"orders.cancel_requested.{order_id}", envelope("orders.requested"))
        await js.publish(f"orders.cancel_requested.{order_id}", envelope("orders.cancel_requested", "other"))
        await js.publish(f"orders.requested.{order_id}", envelope("orders.requested"))  # data lacks fields
        dead = await poll(lambda: stream_messages(js, "DLQ"), lambda msgs: len(msgs) >= 6)
        reasons = [m.headers["Dlq-Reason"] for m in dead]
        assert reasons == [
            "invalid_subject",
            "invalid_subject",
            "invalid_subject",
            "type_mismatch",
            "order_id_mismatch",
            "invalid_data",
        ]
        await drained(js)


async def test_store_lock_is_retried_with_delay_and_never_dead_lettered(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    order_id = unique("o")
    settings = make_settings("order_svc", sqlite_busy_timeout_ms=50)
    async with running(ORDER_SERVICE, settings):
        # Another writer holds the lock. Taken off the event loop: the service may be mid-
        # transaction, and it needs this loop to finish before the lock can be had.
        blocker = sqlite3.connect(settings.db_path, isolation_level=None, check_same_thread=False)
        await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")
        try:
            await place_order(js, order_id, "alice", ITEMS)
            # The one message in flight was delivered, nakked and redelivered several times.
            await poll(lambda: deliveries(js, "ORDERS", "order_svc-orders"), lambda n: n >= 3)
            assert query(settings.db_path, "SELECT count(*) FROM orders") == [(0,)]
            assert await subject_count(js, "DLQ", "dlq.order_svc") == 0
        finally:
            await asyncio.to_thread(blocker.execute, "ROLLBACK")
            blocker.close()
        await poll(lambda: subject_count(js, "ORDERS", f"orders.created.{order_id}"), lambda n: n == 1)
        await drained(js)
        assert await subject_count(js, "DLQ", "dlq.order_svc") == 0


async def test_failing_handler_is_dead_lettered_after_max_deliveries_without_touching_its_batch(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    """One poison message in a group-committed batch: its neighbours commit once, it alone retries."""

    def buggy(tx: sqlite3.Connection, env: Envelope, data: OrderRequested) -> list[Event]:
        events = on_orders_requested(UNPARTITIONED, tx, env, data)  # writes, then fails: must be rolled back
        if env.order_id.startswith("poison"):
            raise RuntimeError("a bug in the handler")
        return events

    import dataclasses

    definition = dataclasses.replace(
        ORDER_SERVICE,
        consumers=[ConsumerSpec(Stream.ORDERS, {EventType.ORDERS_REQUESTED: Route(OrderRequested, buggy)})],
        background=lambda ctx, stop: (),
    )
    poison, good = unique("poison"), [unique("good") for _ in range(3)]
    settings = make_settings("order_svc", max_deliveries=3)
    # Published before the service starts, so the first fetch takes them in one batch.
    await js.add_stream(name="ORDERS", subjects=["orders.>"], duplicate_window=120)
    await place_order(js, good[0], "alice", ITEMS)
    await place_order(js, poison, "alice", ITEMS)
    for order_id in good[1:]:
        await place_order(js, order_id, "alice", ITEMS)
    async with running(definition, settings):
        await drained(js)
        [dead] = await stream_messages(js, "DLQ", "dlq.order_svc")
        assert dead.headers["Dlq-Reason"] == "max_deliveries"
        assert dead.headers["Dlq-Deliveries"] == "3"
        assert "a bug in the handler" in dead.headers["Dlq-Detail"]
        assert dead.headers["Dlq-Original-Subject"] == f"orders.requested.{poison}"
    for order_id in good:
        assert await subject_count(js, "ORDERS", f"orders.created.{order_id}") == 1
    assert await subject_count(js, "ORDERS", f"orders.created.{poison}") == 0
    assert query(settings.db_path, "SELECT order_id FROM orders ORDER BY order_id") == sorted((o,) for o in good)
    assert query(settings.db_path, "SELECT count(*) FROM inbox") == [(3,)]


async def test_event_id_reused_for_another_order_is_dead_lettered_not_dropped(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    first, second = unique("o"), unique("o")
    async with running(ORDER_SERVICE, make_settings("order_svc")):
        event_id = await place_order(js, first, "alice", ITEMS)
        await place_order(js, second, "alice", ITEMS, event_id=event_id, msg_id=unique("m"))
        [dead] = await poll(lambda: stream_messages(js, "DLQ", "dlq.order_svc"), lambda m: len(m) == 1)
        assert dead.headers["Dlq-Reason"] == "event_id_reused"
        assert dead.headers["Dlq-Original-Subject"] == f"orders.requested.{second}"
        assert await subject_count(js, "ORDERS", f"orders.created.{first}") == 1
        assert await subject_count(js, "ORDERS", f"orders.created.{second}") == 0


async def test_service_exits_nonzero_when_a_worker_dies_instead_of_running_half_alive(
    js: JetStreamContext, make_settings: Callable[..., Settings]
) -> None:
    import dataclasses

    async def broken_background() -> None:
        raise RuntimeError("a bug in a background task")

    definition = dataclasses.replace(ORDER_SERVICE, background=lambda ctx, stop: [broken_background()])
    settings = make_settings("order_svc")
    from shared.service import serve

    assert await asyncio.wait_for(serve(definition, settings), timeout=20) == 1
