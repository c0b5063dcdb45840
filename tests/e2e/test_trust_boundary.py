"""The trust boundary (shared.ops.auth), tried as an outsider would: with the client's key, with
another service's key, with a key the server does not know, and with none."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nkeys
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

from shared.connection import Credentials, RefusedByServer, connect
from shared.contract import RELEASE_REQUESTED
from shared.envelope import Event
from shared.ops import client
from shared.ops.audit import collect
from shared.ops.auth import init, seed_path
from shared.ops.harness import ServiceProcess, System, consumers_idle
from shared.partitions import Partitioning
from shared.steps import batch_steps
from shared.subjects import Stream
from tests.conftest import admitted, poll, stream_messages, subject_count, unique
from tests.e2e.conftest import new_customer, new_sku, settled_balance, settled_stock

pytestmark = pytest.mark.e2e


PARTITIONING = Partitioning(2)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    # Partitioned, so the partitions' durables are among what an outsider tries to pull from.
    running = System(
        tmp_path_factory.mktemp("trust"), service_env={"PARTITIONS": str(PARTITIONING.count)}, auth=True
    ).start()
    yield running
    running.stop()


class Refusals:
    """What the server refused a connection, as nats-py reports it: only through ``error_cb``."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def wait_for(self, what: str, subject: str) -> None:
        needle = f'permissions violation for {what} to "{subject}"'.lower()
        await poll(lambda: _ready(self.seen), lambda seen: any(needle in s.lower() for s in seen), timeout=5)


async def _ready(seen: list[str]) -> list[str]:
    return list(seen)


@pytest.fixture
async def operator(secure: System) -> AsyncIterator[Client]:
    nc = await connect(secure.url, secure.credentials("operator"))
    yield nc
    await nc.close()


async def as_role(secure: System, role: str) -> tuple[Client, Refusals]:
    refusals = Refusals()
    nc = await connect(secure.url, secure.credentials(role), error_cb=refusals)
    return nc, refusals


async def confirmed_order(operator: Client, secure: System) -> tuple[str, str, str]:
    """A customer with 10,000 cents, a sku with 10, and an order of 2 at 1,000 confirmed:
    placed with the client's key, as an application would."""
    customer, sku = await new_customer(operator, 10_000), await new_sku(operator, 10)
    app, _ = await as_role(secure, "client")
    try:
        order_id = unique("o")
        await client.place_order(
            app.jetstream(), order_id, customer, [{"sku": sku, "quantity": 2, "unit_price_cents": 1000}]
        )
        assert (await client.wait_until_terminal(app, order_id))["status"] == "CONFIRMED"  # read with api.orders.get
    finally:
        await app.close()
    await settled_balance(operator, customer, 8_000)
    await settled_stock(operator, sku, 8)
    return order_id, customer, sku


def forged(event_type: str, order_id: str, data: dict[str, object]) -> bytes:
    return client.envelope_bytes(event_type, order_id, data)


async def test_the_client_key_cannot_forge_a_services_event_and_nothing_changes(
    operator: Client, secure: System
) -> None:
    order_id, customer, sku = await confirmed_order(operator, secure)
    pending = unique("o")  # an order no one has placed
    app, refusals = await as_role(secure, "client")
    try:
        forgeries = {
            # The refund of a confirmed order, the goods kept.
            f"orders.cancelled.{order_id}": forged("orders.cancelled", order_id, {"reason": "forged"}),
            # A payment that was never made, and a reservation no one checked.
            f"payments.completed.{pending}": forged(
                "payments.completed", pending, {"customer_id": customer, "amount_cents": 1}
            ),
            f"inventory.reserved.{pending}": forged("inventory.reserved", pending, {}),
        }
        for subject, body in forgeries.items():
            await app.publish(subject, body, headers={"Nats-Msg-Id": unique("forged")})
            await refusals.wait_for("publish", subject)
    finally:
        await app.close()
    js = operator.jetstream()
    for subject in forgeries:
        assert await subject_count(js, subject.split(".")[0].upper(), subject) == 0, subject
    assert (await client.get_order(operator, order_id))["status"] == "CONFIRMED"  # type: ignore[index]
    assert await client.get_order(operator, pending) is None
    assert await client.balance(operator, customer) == 8_000
    assert await client.stock(operator, sku) == {"sku": sku, "available": 8, "reserved": 0}


async def test_the_client_key_cannot_make_money_republish_or_list(operator: Client, secure: System) -> None:
    customer = await new_customer(operator, 500)
    app, refusals = await as_role(secure, "client")
    try:
        for subject, body in [
            ("api.payments.deposit", {"customer_id": customer, "amount_cents": 1_000_000}),
            ("api.inventory.restock", {"sku": unique("sku"), "quantity": 1_000}),
            ("api.orders.republish", {}),
            ("api.payments.list", {}),
            ("api.orders.list", {}),
        ]:
            with pytest.raises(NatsTimeout):
                await app.request(subject, json.dumps(body).encode(), timeout=1)
            await refusals.wait_for("publish", subject)
    finally:
        await app.close()
    assert await client.balance(operator, customer) == 500


async def test_the_client_key_cannot_read_the_bus_pull_a_durable_or_delete_a_stream(
    operator: Client, secure: System
) -> None:
    app, refusals = await as_role(secure, "client")
    try:
        await app.subscribe(">")
        await refusals.wait_for("subscription", ">")
        await app.subscribe("_INBOX.>")  # the operator's replies: balances, audits
        await refusals.wait_for("subscription", "_INBOX.>")
        durable = "payment_svc-p0-orders"
        pull = f"$JS.API.CONSUMER.MSG.NEXT.ORDERS.{durable}"
        await app.publish(pull, b'{"batch": 100}', reply=app.new_inbox())
        await refusals.wait_for("publish", pull)
        ack = f"$JS.ACK.ORDERS.{durable}.1.1.1.0.0"
        await app.publish(ack, b"+ACK")
        await refusals.wait_for("publish", ack)
        with pytest.raises(NatsTimeout):
            await app.jetstream().delete_stream("ORDERS")
        await refusals.wait_for("publish", "$JS.API.STREAM.DELETE.ORDERS")
    finally:
        await app.close()
    js = operator.jetstream()
    assert (await js.stream_info(Stream.ORDERS.value)).config.name == "ORDERS"
    # Nothing was taken from the saga's consumers: an order still runs through.
    await confirmed_order(operator, secure)


@pytest.mark.parametrize(
    ("role", "subject"),
    [
        ("payment_svc", "inventory.reserved.{id}"),
        ("payment_svc", "orders.confirmed.{id}"),
        ("inventory_svc", "payments.completed.{id}"),
        ("order_svc", "payments.refunded.{id}"),
        ("order_svc", "orders.requested.{id}"),  # a client's request, not order_svc's event
        ("inventory_svc", "dlq.payment_svc"),
    ],
)
async def test_a_service_key_may_say_only_its_own_events(
    operator: Client, secure: System, role: str, subject: str
) -> None:
    subject = subject.format(id=unique("o"))
    nc, refusals = await as_role(secure, role)
    try:
        await nc.publish(subject, b"{}")
        await refusals.wait_for("publish", subject)
    finally:
        await nc.close()
    assert await subject_count(operator.jetstream(), subject.split(".")[0].upper(), subject) == 0


async def test_a_service_key_cannot_pull_another_services_durable(secure: System) -> None:
    nc, refusals = await as_role(secure, "inventory_svc")
    try:
        pull = "$JS.API.CONSUMER.MSG.NEXT.ORDERS.payment_svc-p1-orders"
        await nc.publish(pull, b'{"batch": 1}', reply=nc.new_inbox())
        await refusals.wait_for("publish", pull)
        await nc.subscribe("_INBOX_payment_svc.>")
        await refusals.wait_for("subscription", "_INBOX_payment_svc.>")
    finally:
        await nc.close()


def unknown_seed(tmp_path: Path) -> Path:
    path = tmp_path / "stranger.nk"
    path.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    return path


async def test_a_wrong_or_missing_key_is_refused_with_a_clear_error(secure: System, tmp_path: Path) -> None:
    with pytest.raises(RefusedByServer, match="refused the credentials"):
        await connect(secure.url, Credentials(nkey_seed=unknown_seed(tmp_path)), connect_timeout=2)
    with pytest.raises(RefusedByServer, match="no credentials: the server refused"):
        await connect(secure.url, Credentials(), connect_timeout=2)


@pytest.mark.parametrize("seed", ["unknown", "not_a_seed"])
def test_a_service_that_cannot_authenticate_exits_non_zero_with_one_line(
    secure: System, tmp_path: Path, seed: str
) -> None:
    if seed == "unknown":
        path, expected = unknown_seed(tmp_path), "payment_svc: cannot connect: "
    else:
        path = tmp_path / "garbage.nk"
        path.write_text("not a seed\n")
        expected = "payment_svc: bad setting: NATS_NKEY_SEED="
    svc = ServiceProcess(
        "payment_svc", secure.url, tmp_path / "data", {"NATS_NKEY_SEED": str(path), "PARTITIONS": "2"}
    ).start(wait=False)
    assert svc.proc is not None
    assert svc.proc.wait(timeout=20) == 2
    lines = [line for line in svc.log_path.read_text().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert "Traceback" not in svc.log_path.read_text()


async def test_documented_roles_can_do_their_jobs_and_no_more_on_a_second_connection(secure: System) -> None:
    # The client reads its order, and only with its private inbox prefix.
    nc, refusals = await as_role(secure, "client")
    try:
        assert await client.get_order(nc, unique("o")) is None
    finally:
        await nc.close()
    assert not refusals.seen


async def test_a_client_application_gets_a_key_of_its_own_and_loses_it_when_revoked(
    operator: Client, secure: System, tmp_path: Path
) -> None:
    assert secure.server is not None and secure.server.proc is not None
    init(secure.auth_dir, PARTITIONING, add_clients=["shop"])
    secure.server.proc.send_signal(signal.SIGHUP)  # the server reloads its configuration
    shop = Credentials(nkey_seed=seed_path(secure.auth_dir, "client-shop"), inbox_prefix="_INBOX_client-shop")
    app = await poll(lambda: admitted(secure.url, shop), lambda nc: nc is not None)
    assert app is not None
    refusals = Refusals()
    try:
        customer, sku = await new_customer(operator, 1_000), await new_sku(operator, 1)
        order_id = unique("o")
        await client.place_order(
            app.jetstream(), order_id, customer, [{"sku": sku, "quantity": 1, "unit_price_cents": 300}]
        )
        assert (await client.wait_until_terminal(app, order_id))["status"] == "CONFIRMED"
        # Not the other applications' replies.
        spy = await connect(secure.url, shop, error_cb=refusals)
        await spy.subscribe("_INBOX_client.>")
        await refusals.wait_for("subscription", "_INBOX_client.>")
        await spy.close()
    finally:
        await app.close()
    kept = tmp_path / "kept-client-shop.nk"  # as a decommissioned host might still hold it
    kept.write_bytes(seed_path(secure.auth_dir, "client-shop").read_bytes())
    init(secure.auth_dir, PARTITIONING, revoke_clients=["shop"])
    secure.server.proc.send_signal(signal.SIGHUP)
    assert not seed_path(secure.auth_dir, "client-shop").exists()
    await poll(lambda: admitted(secure.url, Credentials(nkey_seed=kept), close=True), lambda nc: nc is None)


# --- Defence in depth: inside the boundary (the operator's key can say anything), a forged or
# stray event still changes nothing.


async def test_a_cancel_of_a_confirmed_order_releases_nothing_and_the_audit_reports_it(
    operator: Client, secure: System
) -> None:
    order_id, customer, _ = await confirmed_order(operator, secure)
    js = operator.jetstream()
    await poll(lambda: payment_of(operator, order_id), lambda p: p is not None and p["status"] == "CAPTURED")
    # Partitioned, payment_svc reads no orders.cancelled: it takes the release order_svc sends
    # the customer's partition, in a batch. A forgery of that is the cancel that reaches it.
    release = Event(
        RELEASE_REQUESTED, order_id, {"customer_id": customer, "reason": "forged"}, PARTITIONING.of(customer)
    )
    [batch] = batch_steps([(release, None)])
    _, forged_cancel = batch.to_json(None)
    await js.publish(batch.subject, forged_cancel, headers={"Nats-Msg-Id": unique("forged")})
    payment = await poll(
        lambda: payment_of(operator, order_id), lambda p: p is not None and p["refused_cancel"] == "forged"
    )
    assert payment is not None and payment["status"] == "CAPTURED"
    assert await subject_count(js, "PAYMENTS", f"payments.refunded.{order_id}") == 0
    assert await client.balance(operator, customer) == 8_000
    report = await run_audit_json(secure)
    assert any(d["kind"] == "cancel_after_capture" and d["key"] == order_id for d in report["discrepancies"])


async def payment_of(nc: Client, order_id: str) -> dict[str, Any] | None:
    """payment_svc's record of ``order_id``, as saga-audit reads it (api.payments.list)."""
    return (await collect(nc)).payments.get(order_id)


async def run_audit_json(secure: System) -> dict[str, Any]:
    done = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "saga-audit"), "--json", "--confirm-after", "0.5", "--settle", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **secure.role_env("operator")},
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


async def dead_letters_of(js: Any, order_id: str) -> list[tuple[str, str]]:
    """(reason, subject as published) of every dead letter about ``order_id``."""
    return [
        (m.headers["Dlq-Reason"], m.headers["Dlq-Original-Subject"])
        for m in await stream_messages(js, "DLQ")
        if m.headers and m.headers.get("Dlq-Original-Subject", "").endswith(f".{order_id}")
    ]


async def test_a_payment_of_another_amount_or_customer_reserves_nothing(operator: Client, secure: System) -> None:
    # Too poor for the order: payment_svc fails it, so only the payments below reach inventory.
    customer, sku = await new_customer(operator, 100), await new_sku(operator, 5)
    js = operator.jetstream()
    order_id = unique("o")  # order_svc's created event, as inventory learns it
    created = {
        "customer_id": customer,
        "items": [{"sku": sku, "quantity": 2, "unit_price_cents": 250}],
        "total_cents": 500,
    }
    await js.publish(
        f"orders.created.{order_id}", forged("orders.created", order_id, created), headers={"Nats-Msg-Id": unique("m")}
    )
    await poll(lambda: consumers_idle(js), lambda idle: idle)
    for paid in ({"customer_id": customer, "amount_cents": 1}, {"customer_id": "mallory", "amount_cents": 500}):
        await js.publish(
            f"payments.completed.{order_id}",
            forged("payments.completed", order_id, paid),
            headers={"Nats-Msg-Id": unique("m")},
        )
    dead = await poll(lambda: dead_letters_of(js, order_id), lambda d: len(d) == 2)
    assert dead == [("payment_mismatch", f"payments.completed.{order_id}")] * 2
    assert await client.stock(operator, sku) == {"sku": sku, "available": 5, "reserved": 0}
    assert await subject_count(js, "INVENTORY", f"inventory.reserved.{order_id}") == 0
    # The payment the order needs is taken: the check is a match, not a refusal of everything.
    right = {"customer_id": customer, "amount_cents": 500}
    await js.publish(
        f"payments.completed.{order_id}",
        forged("payments.completed", order_id, right),
        headers={"Nats-Msg-Id": unique("m")},
    )
    await poll(lambda: client.stock(operator, sku), lambda s: s == {"sku": sku, "available": 3, "reserved": 2})


async def test_a_reservation_that_is_not_the_orders_confirms_nothing(operator: Client, secure: System) -> None:
    order_id, _, sku = await confirmed_order(operator, secure)
    js = operator.jetstream()
    other: dict[str, object] = {"items": [{"sku": sku, "quantity": 1}]}  # the order was for 2
    await js.publish(
        f"inventory.reserved.{order_id}",
        forged("inventory.reserved", order_id, other),
        headers={"Nats-Msg-Id": unique("m")},
    )
    dead = await poll(lambda: dead_letters_of(js, order_id), lambda d: len(d) == 1)
    assert dead == [("reservation_mismatch", f"inventory.reserved.{order_id}")]
    assert await subject_count(js, "ORDERS", f"orders.confirmed.{order_id}") == 1


def tool(
    secure: System, name: str, *args: str, role: str = "operator", seed: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **secure.role_env(role)}
    if seed is not None:
        env["NATS_NKEY_SEED"] = str(seed)
    return subprocess.run(
        [str(Path(sys.executable).parent / name), *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_the_operator_tools_run_with_the_operator_key_and_say_why_they_cannot_with_another(
    secure: System, tmp_path: Path
) -> None:
    assert tool(secure, "saga-dlq", "list").returncode == 0
    # The client's key may not read the dead letters, let alone replay them.
    refused = tool(secure, "saga-dlq", "list", role="client")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "NATS refused: nats: permissions violation for publish to" in refused.stderr
    # A key the server does not know: one line, no traceback.
    stranger = tool(secure, "saga-audit", seed=unknown_seed(tmp_path))
    assert stranger.returncode == 2
    assert stranger.stderr.strip().startswith("saga-audit: cannot connect: ") and "\n" not in stranger.stderr.strip()
    assert "refused the credentials" in stranger.stderr
