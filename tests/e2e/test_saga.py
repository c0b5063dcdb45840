"""Every flow of the saga, through NATS only, against the real processes the README starts."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

from shared.ops import client
from shared.ops.harness import System, consumers_idle
from tests.conftest import last_event, poll, stream_messages, subject_count, unique
from tests.e2e.conftest import new_customer, new_sku, settled_balance, settled_stock


def item(sku: str, quantity: int, unit_price_cents: int) -> dict[str, object]:
    return {"sku": sku, "quantity": quantity, "unit_price_cents": unit_price_cents}


async def test_order_confirmed_customer_charged_and_stock_taken_on_the_happy_path(nc: Client) -> None:
    customer, sku, order_id = await new_customer(nc, 10_000), await new_sku(nc, 5), unique("o")
    await client.place_order(nc.jetstream(), order_id, customer, [item(sku, 2, 1250)])
    order = await client.wait_until_terminal(nc, order_id)
    assert order == {
        "order_id": order_id,
        "status": "CONFIRMED",
        "reason": None,
        "customer_id": customer,
        "items": [item(sku, 2, 1250)],
        "total_cents": 2500,
    }
    await settled_balance(nc, customer, 7_500)
    await settled_stock(nc, sku, 3)


async def test_order_cancelled_and_nothing_charged_when_funds_are_insufficient(nc: Client) -> None:
    customer, sku, order_id = await new_customer(nc, 2_499), await new_sku(nc, 5), unique("o")
    await client.place_order(nc.jetstream(), order_id, customer, [item(sku, 2, 1250)])
    order = await client.wait_until_terminal(nc, order_id)
    assert (order["status"], order["reason"]) == ("CANCELLED", "insufficient_funds")
    await settled_balance(nc, customer, 2_499)
    await settled_stock(nc, sku, 5)
    assert await subject_count(nc.jetstream(), "INVENTORY", f"inventory.*.{order_id}") == 0


async def test_order_cancelled_for_an_unknown_customer(nc: Client) -> None:
    sku, order_id, stranger = await new_sku(nc, 5), unique("o"), unique("nobody")
    await client.place_order(nc.jetstream(), order_id, stranger, [item(sku, 1, 100)])
    order = await client.wait_until_terminal(nc, order_id)
    assert (order["status"], order["reason"]) == ("CANCELLED", "unknown_customer")
    assert await client.balance(nc, stranger) is None
    await settled_stock(nc, sku, 5)


async def test_order_cancelled_and_customer_refunded_when_stock_runs_out(nc: Client) -> None:
    customer, plenty, scarce, order_id = (
        await new_customer(nc, 10_000),
        await new_sku(nc, 10),
        await new_sku(nc, 1),
        unique("o"),
    )
    js = nc.jetstream()
    await client.place_order(js, order_id, customer, [item(plenty, 3, 100), item(scarce, 2, 1000)])
    order = await client.wait_until_terminal(nc, order_id)
    assert (order["status"], order["reason"]) == ("CANCELLED", "out_of_stock")
    await settled_balance(nc, customer, 10_000)  # charged 2300, then refunded
    await settled_stock(nc, plenty, 10)  # all or nothing: the available sku was not taken either
    await settled_stock(nc, scarce, 1)
    failed = await last_event(js, "INVENTORY", f"inventory.failed.{order_id}")
    assert failed["data"] == {"reason": "out_of_stock", "sku": scarce}
    refunded = await last_event(js, "PAYMENTS", f"payments.refunded.{order_id}")
    assert refunded["data"] == {"amount_cents": 2300, "reason": "out_of_stock"}


async def test_order_cancelled_and_refunded_for_an_unknown_sku(nc: Client) -> None:
    customer, order_id, ghost = await new_customer(nc, 1_000), unique("o"), unique("ghost")
    await client.place_order(nc.jetstream(), order_id, customer, [item(ghost, 1, 500)])
    order = await client.wait_until_terminal(nc, order_id)
    assert (order["status"], order["reason"]) == ("CANCELLED", "unknown_sku")
    await settled_balance(nc, customer, 1_000)
    assert await client.stock(nc, ghost) is None


async def test_same_event_published_three_times_with_different_msg_ids_charges_once(nc: Client) -> None:
    customer, sku, order_id = await new_customer(nc, 10_000), await new_sku(nc, 10), unique("o")
    js = nc.jetstream()
    event_id = unique("evt")
    for copy in range(3):
        await client.place_order(
            js, order_id, customer, [item(sku, 2, 700)], event_id=event_id, msg_id=f"{event_id}-{copy}"
        )
    assert await subject_count(js, "ORDERS", f"orders.requested.{order_id}") == 3
    order = await client.wait_until_terminal(nc, order_id)
    assert order["status"] == "CONFIRMED"
    await settled_balance(nc, customer, 8_600)
    await settled_stock(nc, sku, 8)
    for subject in (
        f"orders.created.{order_id}",
        f"payments.completed.{order_id}",
        f"inventory.reserved.{order_id}",
        f"orders.confirmed.{order_id}",
    ):
        assert await subject_count(js, subject.split(".")[0].upper(), subject) == 1, subject
    assert await subject_count(js, "ORDERS", f"orders.rejected.{order_id}") == 0


async def test_malformed_messages_are_dead_lettered_and_valid_orders_behind_them_confirm(nc: Client) -> None:
    customer, sku = await new_customer(nc, 10_000), await new_sku(nc, 10)
    js = nc.jetstream()
    junk = [unique("junk") for _ in range(3)]
    garbage = {
        f"orders.requested.{junk[0]}": b"\x00\xffnot json",
        f"orders.requested.{junk[1]}": b'{"event_id": "e", "type": "orders.requested"}',
        f"orders.cancel_requested.{junk[2]}": json.dumps(
            {"event_id": unique("e"), "type": "orders.requested", "order_id": junk[2], "data": {}}
        ).encode(),
    }
    for subject, raw in garbage.items():
        await js.publish(subject, raw)
    orders = [unique("o") for _ in range(3)]
    for order_id in orders:
        await client.place_order(js, order_id, customer, [item(sku, 1, 1000)])
    for order_id in orders:
        assert (await client.wait_until_terminal(nc, order_id))["status"] == "CONFIRMED"
    await settled_balance(nc, customer, 7_000)
    await settled_stock(nc, sku, 7)

    def ours(msgs: list) -> list:  # type: ignore[type-arg]
        return [m for m in msgs if m.headers and m.headers.get("Dlq-Original-Subject") in garbage]

    dead = await poll(lambda: stream_messages(js, "DLQ", "dlq.order_svc"), lambda m: len(ours(m)) == 3)
    by_subject = {m.headers["Dlq-Original-Subject"]: m for m in ours(dead)}
    for subject, raw in garbage.items():
        assert by_subject[subject].data == raw
    reasons = sorted(m.headers["Dlq-Reason"] for m in by_subject.values())
    assert reasons == ["invalid_envelope", "invalid_json", "type_mismatch"]


async def test_duplicate_order_id_is_rejected_and_the_first_order_is_unchanged(nc: Client) -> None:
    customer, sku, order_id = await new_customer(nc, 10_000), await new_sku(nc, 10), unique("o")
    js = nc.jetstream()
    await client.place_order(js, order_id, customer, [item(sku, 1, 300)])
    first = await client.wait_until_terminal(nc, order_id)
    await client.place_order(js, order_id, customer, [item(sku, 5, 9999)])
    rejected = await poll(lambda: subject_count(js, "ORDERS", f"orders.rejected.{order_id}"), lambda n: n == 1)
    assert rejected == 1
    body = await last_event(js, "ORDERS", f"orders.rejected.{order_id}")
    assert body["data"] == {"reason": "duplicate_order_id"}
    assert await client.get_order(nc, order_id) == first
    assert first["status"] == "CONFIRMED" and first["total_cents"] == 300
    await settled_balance(nc, customer, 9_700)
    await settled_stock(nc, sku, 9)


async def test_cancel_request_for_a_confirmed_order_changes_nothing(nc: Client) -> None:
    customer, sku, order_id = await new_customer(nc, 1_000), await new_sku(nc, 2), unique("o")
    js = nc.jetstream()
    await client.place_order(js, order_id, customer, [item(sku, 1, 400)])
    assert (await client.wait_until_terminal(nc, order_id))["status"] == "CONFIRMED"
    await client.cancel_order(js, order_id)
    await poll(lambda: consumers_idle(js), lambda idle: idle)
    assert (await client.get_order(nc, order_id))["status"] == "CONFIRMED"  # type: ignore[index]
    assert await subject_count(js, "ORDERS", f"orders.cancelled.{order_id}") == 0
    await settled_balance(nc, customer, 600)
    await settled_stock(nc, sku, 1)


async def test_queries_answer_errors_as_json(nc: Client, system: System) -> None:
    reply = await nc.request("api.orders.get", json.dumps({"order_id": unique("missing")}).encode(), timeout=5)
    assert json.loads(reply.data)["error"]["code"] == "not_found"
    reply = await nc.request("api.payments.deposit", b'{"customer_id": "x", "amount_cents": "5"}', timeout=5)
    assert json.loads(reply.data)["error"]["code"] == "bad_request"
    reply = await nc.request("api.inventory.restock", b"not json", timeout=5)
    assert json.loads(reply.data)["error"]["code"] == "bad_request"


async def test_a_deposit_or_restock_sent_again_under_its_request_id_applies_once(nc: Client) -> None:
    customer, sku = unique("cust"), unique("sku")
    key, stock_key = unique("req"), unique("req")
    for _ in range(3):  # a client retrying after timeouts, whichever instance answers
        assert await client.deposit(nc, customer, 700, request_id=key) == {
            "customer_id": customer,
            "balance_cents": 700,
        }
        assert await client.restock(nc, sku, 4, request_id=stock_key) == {"sku": sku, "available": 4, "reserved": 0}
    with pytest.raises(client.ApiErrorReply) as reused:
        await client.deposit(nc, customer, 900, request_id=key)
    assert reused.value.code == "request_id_reused"
    with pytest.raises(client.ApiErrorReply) as reused:
        await client.restock(nc, sku, 1, request_id=stock_key)
    assert reused.value.code == "request_id_reused"
    # A new key is a new change; no key at all, as before, applies every time.
    await client.deposit(nc, customer, 300, request_id=unique("req"))
    await client.request(nc, "api.payments.deposit", {"customer_id": customer, "amount_cents": 1})
    await client.request(nc, "api.payments.deposit", {"customer_id": customer, "amount_cents": 1})
    assert await client.balance(nc, customer) == 1_002
    assert await client.stock(nc, sku) == {"sku": sku, "available": 4, "reserved": 0}
