"""Every ``nats`` line of docs/events.md, sent byte for byte with nats-py, against the real processes.

The ``nats`` CLI is not installable on these machines; our users have it. So this test parses
each documented line the way a shell would and publishes the same subject, body and headers.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import nats
import pytest

from shared.ops import client
from shared.ops.harness import System
from shared.partitions import Partitioning
from tests.conftest import consumers_idle, poll, stream_messages, subject_count

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "events.md"
OPERATIONS = ROOT / "docs" / "operations.md"
KNOWN_VERBS = {"pub", "req", "sub", "stream", "micro", "kv"}


def nats_lines(path: Path) -> list[list[str]]:
    """Each ``nats …`` command inside the file's ```sh blocks, split as a shell would."""
    commands, in_sh = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_sh = line.strip() == "```sh"
            continue
        if in_sh and line.startswith("nats "):
            argv = shlex.split(line, comments=True)
            assert argv[1] in KNOWN_VERBS, line
            commands.append(argv)
    return commands


def parse_pub(argv: list[str]) -> tuple[str, bytes, dict[str, str]]:
    """``nats pub SUBJECT [-H Key:Value]… BODY`` -> (subject, body, headers)."""
    rest, headers = argv[2:], {}
    while "-H" in rest:
        i = rest.index("-H")
        key, value = rest[i + 1].split(":", 1)
        headers[key] = value
        del rest[i : i + 2]
    subject, body = rest
    return subject, body.encode(), headers


def test_readme_nats_lines_are_the_documented_ones() -> None:
    documented = {" ".join(argv) for argv in nats_lines(DOCS)}
    readme = nats_lines(ROOT / "README.md")
    assert readme, "the README shows how to place, cancel and inspect an order"
    for argv in readme:
        assert " ".join(argv) in documented, argv


def test_every_inbound_event_type_and_request_is_documented() -> None:
    lines = nats_lines(DOCS) + nats_lines(OPERATIONS)
    published = {parse_pub(argv)[0].rsplit(".", 1)[0] for argv in lines if argv[1] == "pub"}
    requested = {argv[2] for argv in lines if argv[1] == "req"}
    assert {
        "orders.requested",
        "orders.cancel_requested",
        "orders.created",
        "orders.cancelled",
        "orders.confirmed",
        "orders.rejected",
        "payments.completed",
        "payments.failed",
        "payments.refunded",
        "inventory.reserved",
        "inventory.failed",
        "inventory.released",
    } <= published
    assert requested == {
        "api.payments.deposit",
        "api.payments.account",
        "api.inventory.restock",
        "api.inventory.stock",
        "api.orders.get",
        "api.orders.list",
        "api.payments.list",
        "api.payments.accounts",
        "api.inventory.reservations",
        "api.inventory.skus",
        "api.orders.republish",
    }


@pytest.mark.parametrize("partitions", [1, 4], ids=["one_partition", "four_partitions_two_instances"])
async def test_documented_lines_run_as_documented(tmp_path: Path, partitions: int) -> None:
    # Partitioned, every documented line works unchanged, whichever instance a request reaches.
    system = System(
        tmp_path, instances=1 if partitions == 1 else 2, service_env={"PARTITIONS": str(partitions)}
    ).start()
    try:
        nc = await nats.connect(system.url)
        js = nc.jetstream()
        for argv in nats_lines(DOCS) + nats_lines(OPERATIONS):
            if argv[1] == "pub":
                subject, body, headers = parse_pub(argv)
                await js.publish(subject, body, headers=headers or None)
            elif argv[1] == "req":
                subject, body = argv[2], argv[3].encode()
                if subject == "api.orders.get":  # a person waits for the saga before asking
                    await client.wait_until_terminal(nc, json.loads(body)["order_id"])
                reply = json.loads((await nc.request(subject, body, timeout=5)).data)
                assert "error" not in reply, (argv, reply)
            elif argv[1:3] == ["kv", "get"]:  # the lease and the registered store of a service
                # The documented keys are a service's unpartitioned ones; partitioned, partition 0's.
                key = Partitioning(partitions).unit(argv[4].removesuffix(".p0"), 0)
                entry = await (await js.key_value(argv[3])).get(key)
                assert entry.value and json.loads(entry.value)["store"], argv

        expected = {
            "doc-order-1": ("CONFIRMED", None),
            "doc-order-2": ("CANCELLED", "insufficient_funds"),
            "doc-order-3": ("CANCELLED", "out_of_stock"),
        }
        for order_id, (status, reason) in expected.items():
            order = await client.wait_until_terminal(nc, order_id)
            assert (order["status"], order["reason"]) == (status, reason), order_id
        await poll(lambda: client.balance(nc, "doc-alice"), lambda b: b == 7_500)
        await poll(
            lambda: client.stock(nc, "doc-widget"), lambda s: s == {"sku": "doc-widget", "available": 8, "reserved": 0}
        )
        assert await subject_count(js, "ORDERS", "orders.created.doc-order-1") == 1
        assert await subject_count(js, "PAYMENTS", "payments.completed.doc-order-1") == 1

        # Only the line that is bad on purpose was dead-lettered.
        await poll(lambda: consumers_idle(js), lambda idle: idle)
        dead = await stream_messages(js, "DLQ")
        assert [(m.subject, m.headers["Dlq-Reason"], m.data) for m in dead] == [
            ("dlq.order_svc", "invalid_json", b"this is not json")
        ]
        await nc.close()
    finally:
        system.stop()
