"""Every ``nats`` line of docs/events.md, sent byte for byte with nats-py, against the real processes.

The ``nats`` CLI is not installable on these machines; our users have it. So this test parses
each documented line the way a shell would and publishes the same subject, body and headers,
behind the trust boundary, with the key (and inbox prefix) the line names: a line that needs
more than its role may do fails here.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client

from shared.connection import Credentials, connect
from shared.ops import client
from shared.ops.auth import seed_path
from shared.ops.harness import System, consumers_idle
from shared.partitions import Partitioning
from tests.conftest import poll, stream_messages, subject_count

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "events.md"
OPERATIONS = ROOT / "docs" / "operations.md"
KNOWN_VERBS = {"pub", "req", "sub", "stream", "micro", "kv"}
KEY_DIR = "data/auth/"
"""Where ``./run demo`` (its ``--data-dir``, ``./data``) has saga-auth write the keys."""


@dataclass(frozen=True)
class Line:
    argv: list[str]
    """``nats`` and the command, the global options taken out: ``["nats", "pub", ...]``."""
    role: str
    """Whose key the line names: ``--nkey data/auth/<role>.nk``."""
    inbox_prefix: str | None

    def __getitem__(self, i: int) -> str:
        return self.argv[i]


def nats_lines(path: Path) -> list[Line]:
    """Each ``nats …`` command inside the file's ```sh blocks, split as a shell would."""
    commands, in_sh = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_sh = line.strip() == "```sh"
            continue
        if in_sh and line.startswith("nats "):
            argv = shlex.split(line, comments=True)
            options: dict[str, str] = {}
            while argv[1].startswith("--"):
                options[argv[1]] = argv[2]
                del argv[1:3]
            assert argv[1] in KNOWN_VERBS, line
            key = options.get("--nkey", "")
            assert key.startswith(KEY_DIR) and key.endswith(".nk"), f"names no key of {KEY_DIR}: {line}"
            commands.append(Line(argv, key.removeprefix(KEY_DIR).removesuffix(".nk"), options.get("--inbox-prefix")))
    return commands


def parse_pub(line: Line) -> tuple[str, bytes, dict[str, str]]:
    """``nats pub SUBJECT [-H Key:Value]… BODY`` -> (subject, body, headers)."""
    rest, headers = line.argv[2:], {}
    while "-H" in rest:
        i = rest.index("-H")
        key, value = rest[i + 1].split(":", 1)
        headers[key] = value
        del rest[i : i + 2]
    subject, body = rest
    return subject, body.encode(), headers


def test_readme_nats_lines_are_the_documented_ones() -> None:
    documented = {(" ".join(line.argv), line.role, line.inbox_prefix) for line in nats_lines(DOCS)}
    readme = nats_lines(ROOT / "README.md")
    assert readme, "the README shows how to place, cancel and inspect an order"
    for line in readme:
        assert (" ".join(line.argv), line.role, line.inbox_prefix) in documented, line


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
        tmp_path, instances=1 if partitions == 1 else 2, service_env={"PARTITIONS": str(partitions)}, auth=True
    ).start()
    connections: dict[tuple[str, str | None], Client] = {}
    refusals: list[str] = []

    async def refused(exc: Exception) -> None:
        refusals.append(str(exc))

    async def as_documented(line: Line) -> Client:
        """A connection with the line's key and inbox prefix, as ``nats --nkey ...`` makes one."""
        key = (line.role, line.inbox_prefix)
        if key not in connections:
            creds = Credentials(nkey_seed=seed_path(system.auth_dir, line.role), inbox_prefix=line.inbox_prefix)
            connections[key] = await connect(system.url, creds, error_cb=refused)

        return connections[key]

    try:
        nc = await connect(system.url, system.credentials("operator"))
        js = nc.jetstream()
        for line in nats_lines(DOCS) + nats_lines(OPERATIONS):
            conn = await as_documented(line)
            if line[1] == "pub":
                subject, body, headers = parse_pub(line)
                await conn.publish(subject, body, headers=headers or None)  # as ``nats pub``: no ack
                await conn.flush()
            elif line[1] == "req":
                subject, body = line[2], line[3].encode()
                if subject == "api.orders.get":  # a person waits for the saga before asking
                    await client.wait_until_terminal(nc, json.loads(body)["order_id"])
                reply = json.loads((await conn.request(subject, body, timeout=5)).data)
                assert "error" not in reply, (line, reply)
            elif line.argv[1:3] == ["kv", "get"]:  # the lease and the registered store of a service
                # The documented keys are a service's unpartitioned ones; partitioned, partition 0's.
                key = Partitioning(partitions).unit(line[4].removesuffix(".p0"), 0)
                entry = await (await conn.jetstream().key_value(line[3])).get(key)
                assert entry.value and json.loads(entry.value)["store"], line
        assert not refusals, refusals

        expected = {
            "doc-order-1": ("CONFIRMED", None),
            "doc-order-2": ("CANCELLED", "insufficient_funds"),
            "doc-order-3": ("CANCELLED", "out_of_stock"),
            "doc-trace-1": ("CANCELLED", "unknown_customer"),  # its traceparent changes nothing else
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
        for conn in connections.values():
            await conn.close()
    finally:
        system.stop()
