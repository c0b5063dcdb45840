"""``saga-chaos``: drive a mixed load while killing processes, then prove every invariant.

Starts a real nats-server and the three services as real processes, seeds accounts and stock,
and for ``--duration`` seconds offers orders of every kind (confirm, insufficient funds, out of
stock, unknown customer, cancelled by request, and those that time out while a service is
down), re-publishes about 10% of all saga events under a fresh Nats-Msg-Id and publishes about
2% malformed messages, while it

- SIGKILLs each service at random moments (``--kills`` times each; its writer, with several
  ``--instances``) and restarts it,
- SIGKILLs nats-server once and restarts it on the same store (with ``--cluster``, the node
  leading ORDERS, restarted a few seconds later),
- stops one service for longer than the order timeout and brings it back,
- with several instances, SIGSTOPs a writer past its lease and SIGCONTs it (``--pauses``).

Then it waits for the system to settle, checks the invariants, prints what it injected and
what it verified, and exits non-zero if any invariant fails. ``--seed`` makes a run repeatable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import random
import signal
import sqlite3
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.connection import connect
from shared.jetstream import MSG_ID_HEADER, publish_until_stored
from shared.lease import read
from shared.ops import client
from shared.ops.audit import audit, collect
from shared.ops.harness import SERVICES, ServiceProcess, System, consumers_idle, exit_on_sigterm, store_files
from shared.partitions import PART_PREFIX, Partitioning, split_stored
from shared.settings import Settings
from shared.subjects import Stream

DUP_HEADER = "Chaos-Dup"
MALFORMED_HEADER = "Chaos-Malformed"

MALFORMED_TYPES = (
    "orders.requested",
    "orders.cancel_requested",
    "orders.created",
    "payments.completed",
    "inventory.reserved",
)
"""The event types a malformed message is injected on."""


def consumers_of(partitioning: Partitioning) -> dict[str, tuple[str, ...]]:
    """Which services read each of MALFORMED_TYPES with ``partitioning``: a malformed message of
    the type is dead-lettered by each (partitioned, payment_svc reads no ORDERS)."""
    from shared.ops.auth import service_definitions  # the services import shared, not the reverse

    definitions = service_definitions()
    return {
        event_type: tuple(
            name
            for name, definition in definitions.items()
            if any(event_type in spec.routes for spec in definition.consumers_for(partitioning))
        )
        for event_type in MALFORMED_TYPES
    }


@dataclass
class Malformed:
    subject: str
    body: bytes
    reason: str
    stream_seq: int
    services: tuple[str, ...]


@dataclass
class Ledger:
    """What the harness itself did: the ground truth the services are checked against."""

    deposits: Counter[str] = field(default_factory=Counter)
    restocks: Counter[str] = field(default_factory=Counter)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    malformed: list[Malformed] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    publish_retries: int = 0
    consumers_of: dict[str, tuple[str, ...]] = field(default_factory=lambda: consumers_of(Partitioning()))
    """Who must dead-letter a malformed message of each type (``consumers_of``)."""


# --- the load ---------------------------------------------------------------------------------


def _item(sku: str, quantity: int, price: int) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price_cents": price}


async def _publish(js: JetStreamContext, ledger: Ledger, subject: str, body: bytes, headers: dict[str, str]) -> int:
    """Publish until acknowledged (NATS may be down right now); return the stream sequence.

    Retries keep the same Nats-Msg-Id, so a publish that did land is not stored twice.
    """

    def count(_: Exception) -> None:
        ledger.publish_retries += 1

    while True:
        try:
            return (await publish_until_stored(js, subject, body, headers, on_retry=count)).seq
        except Exception:  # past its deadline (a server down for long): go on trying
            count(RuntimeError())


async def place(js: JetStreamContext, ledger: Ledger, rng: random.Random, kind: str, n: int) -> None:
    order_id = f"chaos-{n:06d}-{kind}"
    if kind == "funds":
        customer, items = f"poor-{rng.randrange(5)}", [_item(f"plenty-{rng.randrange(5)}", 1, 5_000)]
    elif kind == "stock":
        customer, items = f"rich-{rng.randrange(10)}", [_item(f"scarce-{rng.randrange(3)}", 1_000, 1)]
    elif kind == "stranger":
        customer, items = f"nobody-{n}", [_item(f"plenty-{rng.randrange(5)}", 1, 100)]
    else:  # confirm, cancel
        customer = f"rich-{rng.randrange(10)}"
        items = [_item(f"plenty-{rng.randrange(5)}", rng.randint(1, 3), rng.randint(1, 500))]
        if rng.random() < 0.3:
            items.append(_item(f"plenty-{rng.randrange(5)}", 1, rng.randint(0, 200)))
    subject, body, event_id = client.order_request(order_id, customer, items)
    ledger.orders[order_id] = {"kind": kind, "customer_id": customer, "items": items}
    ledger.injected[f"orders: {kind}"] += 1
    await _publish(js, ledger, subject, body, {MSG_ID_HEADER: event_id})
    if kind == "cancel":
        subject, body, event_id = client.cancel_request(order_id)
        ledger.injected["cancel requests"] += 1
        await _publish(js, ledger, subject, body, {MSG_ID_HEADER: event_id})


def malformed_message(rng: random.Random, n: int) -> tuple[str, bytes, str]:
    """(subject, body, expected reason) of one kind of bad input, chosen at random."""
    order_id = f"junk-{n:05d}"
    event_type = rng.choice(MALFORMED_TYPES)
    good = {"event_id": f"junk-evt-{n}", "type": event_type, "order_id": order_id, "data": {}}
    kind = rng.randrange(5)
    if kind == 0:
        return f"{event_type}.{order_id}", b'{"event_id": "truncated', "invalid_json"
    if kind == 1:
        return f"{event_type}.{order_id}", json.dumps({**good, "event_id": ""}).encode(), "invalid_envelope"
    if kind == 2:
        return f"{event_type}.{order_id}.extra", json.dumps(good).encode(), "invalid_subject"
    if kind == 3:
        other = "orders.cancelled" if event_type != "orders.cancelled" else "orders.created"
        return f"{event_type}.{order_id}", json.dumps({**good, "type": other}).encode(), "type_mismatch"
    # Wrong for every consumed type: no model takes a string for items or a number for customer_id.
    bad_data = {"customer_id": 7, "items": "none", "amount_cents": -1, "total_cents": "x", "reason": ""}
    if event_type == "orders.cancel_requested":  # its data is {}: break the envelope instead
        return f"{event_type}.{order_id}", json.dumps({**good, "order_id": "other"}).encode(), "order_id_mismatch"
    return f"{event_type}.{order_id}", json.dumps({**good, "data": bad_data}).encode(), "invalid_data"


async def drive_load(
    js: JetStreamContext, garbage_js: JetStreamContext, ledger: Ledger, rng: random.Random, duration: float, rate: float
) -> None:
    """Orders through ``js``; malformed messages through ``garbage_js``: behind the boundary a
    client's key cannot publish a wrong-shaped subject at all, so the operator's does, to prove
    that what gets in anyway is dead-lettered."""
    kinds = ["confirm"] * 55 + ["funds"] * 12 + ["stock"] * 12 + ["cancel"] * 12 + ["stranger"] * 7
    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < duration:
        if rng.random() < 0.02 * 3:  # ~2% of all events: each order makes about three
            subject, body, reason = malformed_message(rng, len(ledger.malformed))
            seq = await _publish(
                garbage_js, ledger, subject, body, {MALFORMED_HEADER: reason, MSG_ID_HEADER: uuid.uuid4().hex}
            )
            event_type = ".".join(subject.split(".")[:2])
            ledger.malformed.append(Malformed(subject, body, reason, seq, ledger.consumers_of[event_type]))
            ledger.injected["malformed messages"] += 1
        await place(js, ledger, rng, rng.choice(kinds), n)
        n += 1
        # Open loop: the next order is due at n / rate, however long this one took.
        await asyncio.sleep(max(0.0, n / rate - elapsed))


class Duplicator:
    """Re-publishes about 10% of every saga event under a fresh Nats-Msg-Id."""

    def __init__(self, nc: Client, ledger: Ledger, rng: random.Random, probability: float = 0.10) -> None:
        self._nc, self._ledger, self._rng, self._p = nc, ledger, rng, probability
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for subjects in ("orders.>", "payments.>", "inventory.>"):
            await self._nc.subscribe(subjects, cb=self._on_event)

    async def _on_event(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if DUP_HEADER in headers or MALFORMED_HEADER in headers or self._rng.random() >= self._p:
            return
        task = asyncio.create_task(self._republish(msg.subject, msg.data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _republish(self, subject: str, body: bytes) -> None:
        headers = {MSG_ID_HEADER: f"dup-{uuid.uuid4().hex}", DUP_HEADER: "1"}
        try:
            await self._nc.jetstream().publish(subject, body, headers=headers, timeout=2)
        except Exception:
            return  # NATS away: this copy is simply not made
        self._ledger.injected["events republished (new Nats-Msg-Id)"] += 1


# --- the faults -------------------------------------------------------------------------------


@dataclass(order=True)
class Fault:
    at: float
    action: str = field(compare=False)
    target: str = field(compare=False)


def plan_faults(rng: random.Random, duration: float, kills: int, order_timeout: float, pauses: int = 0) -> list[Fault]:
    faults = [Fault(rng.uniform(0.05, 0.85) * duration, "kill", name) for name in SERVICES for _ in range(kills)]
    faults.append(Fault(rng.uniform(0.25, 0.5) * duration, "kill-nats", "nats-server"))
    faults += [Fault(rng.uniform(0.1, 0.7) * duration, "pause", rng.choice(SERVICES)) for _ in range(pauses)]
    # Stopping payment or inventory past the timeout is what makes orders time out (a stopped
    # order_svc only delays them), so one of those two takes the long stop.
    faults.append(Fault(rng.uniform(0.1, 0.3) * duration, "long-stop", rng.choice(("payment_svc", "inventory_svc"))))
    return sorted(faults)


@dataclass(frozen=True)
class Pause:
    """A writer SIGSTOPped past its lease: it must commit nothing after it was resumed."""

    service: str
    pid: int
    resumed_at: float
    """Wall-clock time of the SIGCONT (the same clock the store's writer_epochs use)."""


async def writer_of(
    system: System, js: JetStreamContext, name: str, rng: random.Random | None = None
) -> ServiceProcess:
    """The instance of ``name`` that holds its lease now, partitioned that of a partition picked at
    random (the first instance if none does, or if the lease cannot be read: a node of the
    cluster may be down for this very run)."""
    instances = system.instances_of(name)
    partitioning = Partitioning(system.partitions)
    partition = rng.randrange(partitioning.count) if rng else 0
    try:
        held = await read(js, partitioning.unit(name, partition))
    except Exception as exc:
        print(f"saga-chaos: cannot read the lease of {name} ({exc!r}); faulting its first instance", flush=True)
        return instances[0]
    pid = held.holder.pid if held.holder else None
    return next((svc for svc in instances if svc.proc is not None and svc.proc.pid == pid), instances[0])


async def inject_faults(
    system: System,
    faults: list[Fault],
    ledger: Ledger,
    order_timeout: float,
    rng: random.Random,
    js: JetStreamContext,
    lease_ttl_s: float,
    pauses: list[Pause],
) -> None:
    started = time.monotonic()
    stopped_until: dict[str, float] = {}
    background: list[asyncio.Task[None]] = []
    for fault in faults:
        await asyncio.sleep(max(0.0, fault.at - (time.monotonic() - started)))
        if fault.action == "kill-nats":
            background.append(asyncio.create_task(_kill_nats(system, js, ledger, rng)))
            continue
        resume_at = stopped_until.get(fault.target, 0.0)
        if time.monotonic() < resume_at:  # it is in its long stop: strike right after
            await asyncio.sleep(resume_at - time.monotonic() + 0.5)
        instances = system.instances_of(fault.target)
        if fault.action == "long-stop":
            for svc in instances:
                await asyncio.to_thread(svc.stop)
            pause = order_timeout * 2.5
            stopped_until[fault.target] = time.monotonic() + pause
            ledger.injected[f"long stops ({fault.target}, {pause:.0f}s)"] += 1
            for svc in instances:
                asyncio.get_running_loop().call_later(pause, functools.partial(svc.start, wait=False))
        elif fault.action == "pause":
            svc = await writer_of(system, js, fault.target, rng)
            if svc.proc is None or svc.proc.poll() is not None:
                continue
            background.append(asyncio.create_task(_pause(svc, lease_ttl_s, ledger, pauses)))
        else:
            svc = await writer_of(system, js, fault.target, rng) if len(instances) > 1 else instances[0]
            svc.kill()
            ledger.injected[f"SIGKILLs: {fault.target}" + (" (its writer)" if len(instances) > 1 else "")] += 1
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            svc.start(wait=False)
    await asyncio.gather(*background)


async def _kill_nats(system: System, js: JetStreamContext, ledger: Ledger, rng: random.Random) -> None:
    """SIGKILL the one server, or in a cluster the node leading ORDERS; restart it on its store."""
    if system.cluster is not None:
        info = await js.stream_info(Stream.ORDERS.value)
        leader = info.cluster.leader if info.cluster else None
        node = system.cluster.node(leader) if leader else system.cluster.nodes[0]
        node.kill()
        ledger.injected["nats nodes SIGKILLed (the ORDERS leader)"] += 1
        await asyncio.sleep(rng.uniform(2.0, 6.0))
        await asyncio.to_thread(node.start)
        return
    assert system.server is not None
    system.server.kill()
    ledger.injected["nats-server SIGKILLs"] += 1
    await asyncio.sleep(rng.uniform(0.5, 2.0))
    await asyncio.to_thread(system.server.start)


async def _pause(svc: ServiceProcess, lease_ttl_s: float, ledger: Ledger, pauses: list[Pause]) -> None:
    """SIGSTOP a writer for longer than its lease, then SIGCONT it."""
    assert svc.proc is not None
    pid = svc.proc.pid
    svc.proc.send_signal(signal.SIGSTOP)
    ledger.injected[f"writers SIGSTOPped past their lease ({lease_ttl_s + 2:.0f}s)"] += 1
    try:
        await asyncio.sleep(lease_ttl_s + 2.0)
    finally:
        resumed_at = time.time()
        with contextlib.suppress(ProcessLookupError):
            svc.proc.send_signal(signal.SIGCONT)
    pauses.append(Pause(svc.name, pid, resumed_at))


def writer_epochs(db: Path) -> list[tuple[int, int, float, int, float | None]]:
    """(epoch, pid, acquired_at, commits, last_commit_at) of every lease epoch that wrote ``db``."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT epoch, pid, acquired_at, commits, last_commit_at FROM writer_epochs ORDER BY epoch"
        ).fetchall()


def stale_commits(db: Path, pauses: list[Pause]) -> tuple[int, list[str]]:
    """How many epochs wrote ``db``, and the commits made under a lease that had passed: one epoch
    committing after the next one took the file, or a paused writer committing after it resumed.
    Read from the store's writer_epochs."""
    epochs = writer_epochs(db)
    found = [
        f"{db.name}: epoch {old[0]} committed at {old[4]:.3f}, after epoch {new[0]} took the file at {new[2]:.3f}"
        for old, new in itertools.pairwise(epochs)
        if old[4] is not None and old[4] > new[2]
    ]
    for pause in pauses:
        if not db.name.startswith((f"{pause.service}.sqlite3", f"{pause.service}.p")):
            continue
        for epoch, pid, acquired_at, _, last_commit_at in epochs:
            if pid == pause.pid and acquired_at < pause.resumed_at and (last_commit_at or 0) > pause.resumed_at:
                found.append(f"{db.name}: epoch {epoch} (pid {pid}) committed after its SIGCONT")
    return len(epochs), found


# --- settling and checking --------------------------------------------------------------------


async def settle(nc: Client, ledger: Ledger, deadline_s: float) -> float:
    """Wait until every order is decided and every consumer idle; return how long it took."""
    began = time.monotonic()
    js = nc.jetstream()
    while time.monotonic() - began < deadline_s:
        try:
            snap = await collect(nc)
            undecided = [o for o in ledger.orders if snap.orders.get(o, {}).get("status") not in client.TERMINAL]
            if not undecided and await consumers_idle(js):
                return time.monotonic() - began
        except Exception:  # a service still restarting
            pass
        await asyncio.sleep(1.0)
    return time.monotonic() - began


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


async def distinct_event_ids(js: JetStreamContext, stream: str) -> dict[str, set[str]]:
    """Per subject as published, the distinct event_ids in the stream (copies share an event_id)."""
    found: dict[str, set[str]] = defaultdict(set)
    # Partitioned, the events are stored renamed (part.<k>.<subject>); what is left is malformed.
    for stored in (f"{stream.lower()}.>", f"{PART_PREFIX}.*.{stream.lower()}.>"):
        info = await js.stream_info(stream, subjects_filter=stored)
        count = sum((info.state.subjects or {}).values())
        if not count:
            continue
        sub = await js.subscribe(stored, stream=stream, ordered_consumer=True)
        try:
            for _ in range(count):
                msg = await sub.next_msg(timeout=10)
                try:
                    found[split_stored(msg.subject)[1]].add(json.loads(msg.data)["event_id"])
                except (ValueError, KeyError, TypeError):
                    continue  # malformed on purpose
        finally:
            await sub.unsubscribe()
    return found


async def verify(nc: Client, ledger: Ledger, workdir: Path, pauses: list[Pause], partitions: int = 1) -> list[Check]:
    js = nc.jetstream()
    snap = await collect(nc)
    checks: list[Check] = []

    undecided = [o for o in ledger.orders if snap.orders.get(o, {}).get("status") not in client.TERMINAL]
    checks.append(
        Check(
            "every accepted order is CONFIRMED or CANCELLED",
            not undecided,
            f"{len(ledger.orders)} orders, {len(undecided)} not decided {undecided[:3]}",
        )
    )

    confirmed = {o: snap.orders[o] for o in ledger.orders if snap.orders.get(o, {}).get("status") == "CONFIRMED"}
    spent: Counter[str] = Counter()
    sold: Counter[str] = Counter()
    for order_id, order in confirmed.items():
        spent[order["customer_id"]] += order["total_cents"]
        for item in ledger.orders[order_id]["items"]:
            sold[item["sku"]] += item["quantity"]
    wrong_balance = [
        (c, snap.accounts.get(c, {}).get("balance_cents"), ledger.deposits[c] - spent[c])
        for c in ledger.deposits
        if snap.accounts.get(c, {}).get("balance_cents") != ledger.deposits[c] - spent[c]
    ]
    checks.append(
        Check(
            "balance = deposits - confirmed totals, per customer",
            not wrong_balance,
            f"{len(ledger.deposits)} customers, {len(wrong_balance)} wrong {wrong_balance[:3]}",
        )
    )
    negative = [c for c, a in snap.accounts.items() if a["balance_cents"] < 0]
    checks.append(Check("no balance below zero", not negative, f"{len(negative)} negative"))
    refused = [
        f"{log.stem}: {line[:160]}"
        for log in sorted((workdir / "logs").glob("*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if "nats.permission_denied" in line
    ]
    checks.append(Check("no service was refused a permission", not refused, f"{len(refused)} refusals {refused[:2]}"))

    payments = await distinct_event_ids(js, Stream.PAYMENTS.value)
    twice = sorted(
        s for s, ids in payments.items() if s.startswith(("payments.completed.", "payments.refunded.")) and len(ids) > 1
    )
    charged = sum(1 for s in payments if s.startswith("payments.completed."))
    refunded = sum(1 for s in payments if s.startswith("payments.refunded."))
    checks.append(
        Check(
            "no order charged twice or refunded twice",
            not twice,
            f"{charged} charges, {refunded} refunds, {len(twice)} doubled {twice[:3]}",
        )
    )

    wrong_stock = [
        (s, snap.skus.get(s))
        for s in ledger.restocks
        if (snap.skus.get(s, {}).get("available"), snap.skus.get(s, {}).get("reserved"))
        != (ledger.restocks[s] - sold[s], 0)
    ]
    checks.append(
        Check(
            "available = restocks - confirmed quantities, reserved = 0, per sku",
            not wrong_stock,
            f"{len(ledger.restocks)} skus, {len(wrong_stock)} wrong {wrong_stock[:2]}",
        )
    )

    never = [
        o
        for o, rec in ledger.orders.items()
        if rec["kind"] in ("funds", "stock", "stranger") and snap.orders.get(o, {}).get("status") == "CONFIRMED"
    ]
    checks.append(Check("no order without funds or stock was confirmed", not never, f"{len(never)} confirmed"))

    dead: dict[tuple[str, str, int], str] = {}
    info = await js.stream_info(Stream.DLQ.value)
    if info.state.messages:
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(Stream.DLQ.value, seq)
            h = msg.headers or {}
            dead[
                (h.get("Dlq-Service", ""), h.get("Dlq-Original-Stream", ""), int(h.get("Dlq-Original-Sequence", 0)))
            ] = h.get("Dlq-Reason", "")
    expected = {
        (
            svc,
            Stream.ORDERS.value
            if m.subject.startswith("orders.")
            else Stream.PAYMENTS.value
            if m.subject.startswith("payments.")
            else Stream.INVENTORY.value,
            m.stream_seq,
        ): m.reason
        for m in ledger.malformed
        for svc in m.services
    }
    missing = [k for k, reason in expected.items() if dead.get(k) != reason]
    checks.append(
        Check(
            "every malformed message is in the DLQ with its reason",
            not missing,
            f"{len(expected)} expected dead letters, {len(missing)} missing or wrong {missing[:3]}",
        )
    )
    strays = [k for k in dead if k not in expected]
    checks.append(Check("no valid event is in the DLQ", not strays, f"{len(dead)} dead letters, {len(strays)} stray"))

    stores = {name: store_files(workdir, name) for name in SERVICES}
    per_store = [stale_commits(db, pauses) for files in stores.values() for db in files]
    stale = [line for _, found in per_store for line in found]
    epochs = sum(count for count, _ in per_store)
    checks.append(
        Check(
            "no commit under a stale lease (every store's writer epochs in order)",
            not stale,
            f"{sum(map(len, stores.values()))} stores, {epochs} writer epochs, {len(pauses)} paused writers,"
            f" {len(stale)} stale {stale[:2]}",
        )
    )
    # An epoch is the revision of one write that took one partition's lease: were it in two files,
    # or held by two processes, two owners would have committed under one epoch.
    shared_epochs = []
    for name, files in stores.items():
        owners: dict[int, set[tuple[str, int]]] = defaultdict(set)
        for db in files:
            for epoch, pid, *_ in writer_epochs(db):
                owners[epoch].add((db.name, pid))
        shared_epochs += [f"{name} epoch {e}: {sorted(o)}" for e, o in owners.items() if len(o) > 1]
    checks.append(
        Check(
            "no partition committed under two owners in one lease epoch",
            not shared_epochs,
            f"{len(shared_epochs)} epochs with two owners {shared_epochs[:2]}",
        )
    )
    partitioning = Partitioning(partitions)
    across = sum(1 for rec in ledger.orders.values() if len({partitioning.of(i["sku"]) for i in rec["items"]}) > 1)
    if partitions > 1:
        checks.append(
            Check(
                "orders across several inventory partitions were among them",
                across > 0,
                f"{across} orders with skus in more than one of {partitions} partitions",
            )
        )

    reconciliation = audit(snap)
    checks.append(
        Check(
            "saga-audit reconciliation is clean",
            not reconciliation,
            f"{len(reconciliation)} discrepancies {[(d.kind, d.key) for d in reconciliation[:3]]}",
        )
    )
    return checks


# --- the run ----------------------------------------------------------------------------------


async def seed(nc: Client, ledger: Ledger) -> None:
    for i in range(10):
        await client.deposit(nc, f"rich-{i}", 10_000_000)
        ledger.deposits[f"rich-{i}"] += 10_000_000
    for i in range(5):
        await client.deposit(nc, f"poor-{i}", 100)
        ledger.deposits[f"poor-{i}"] += 100
    for i in range(5):
        await client.restock(nc, f"plenty-{i}", 1_000_000)
        ledger.restocks[f"plenty-{i}"] += 1_000_000
    for i in range(3):
        await client.restock(nc, f"scarce-{i}", 1)
        ledger.restocks[f"scarce-{i}"] += 1


def print_table(ledger: Ledger, checks: list[Check], outcomes: Counter[str], timings: dict[str, float]) -> None:
    print("\n== injected ==")
    for name, count in sorted(ledger.injected.items()):
        print(f"  {name:<52} {count:>7}")
    print(f"  {'publishes retried while NATS was away':<52} {ledger.publish_retries:>7}")
    print("\n== outcomes ==")
    for name, count in sorted(outcomes.items()):
        print(f"  {name:<52} {count:>7}")
    print("\n== timings ==")
    for name, seconds in timings.items():
        print(f"  {name:<52} {seconds:>6.1f}s")
    print("\n== verified ==")
    for check in checks:
        print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name:<66} {check.detail}")
    failed = sum(not c.ok for c in checks)
    print(f"\n{len(checks) - failed} passed, {failed} failed")


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="saga-chaos-"))
    env = {"ORDER_TIMEOUT_S": str(args.order_timeout), "PARTITIONS": str(args.partitions)}
    if args.lease_ttl is not None:
        env["LEASE_TTL_S"] = str(args.lease_ttl)
    lease_ttl_s = args.lease_ttl if args.lease_ttl is not None else Settings.lease_ttl_s
    system = System(
        workdir,
        service_env=env,
        cluster_size=args.cluster,
        instances=args.instances,
        sync_interval=args.nats_sync,
        auth=args.auth,
    )
    topology = f"{args.cluster}-node cluster" if args.cluster else "one nats-server"
    print(
        f"saga-chaos: seed {args.seed}, {args.duration:g}s at {args.rate:g} orders/s, "
        f"order timeout {args.order_timeout:g}s, nats sync {args.nats_sync or 'default'}, {topology}, "
        f"{args.instances} instance(s) per service, {args.partitions} partition(s), "
        f"{'behind saga-auth' if args.auth else 'an open server'}, workdir {workdir}"
    )
    pauses: list[Pause] = []
    ledger = Ledger(consumers_of=consumers_of(Partitioning(args.partitions)))

    async def quiet(exc: Exception) -> None:  # the NATS outage is on purpose
        pass

    nc: Client | None = None
    app: Client | None = None
    try:
        await asyncio.to_thread(system.start)
        reconnecting = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}
        # The checks, faults, duplicates and garbage need the operator; orders come from an
        # application's key, as they would in production (shared.ops.auth).
        nc = await connect(system.url, system.credentials("operator"), error_cb=quiet, **reconnecting)
        app = await connect(system.url, system.credentials("client"), error_cb=quiet, **reconnecting)
        await seed(nc, ledger)
        await Duplicator(nc, ledger, random.Random(rng.random())).start()
        pause_count = args.pauses if args.pauses is not None else (1 if args.instances > 1 else 0)
        faults = plan_faults(rng, args.duration, args.kills, args.order_timeout, pause_count)
        began = time.monotonic()
        await asyncio.gather(
            drive_load(app.jetstream(), nc.jetstream(), ledger, random.Random(rng.random()), args.duration, args.rate),
            inject_faults(
                system,
                faults,
                ledger,
                args.order_timeout,
                random.Random(rng.random()),
                nc.jetstream(),
                lease_ttl_s,
                pauses,
            ),
        )
        load_s = time.monotonic() - began
        for svc in system.services.values():  # anything still down comes back now
            if svc.proc is None or svc.proc.poll() is not None:
                svc.start(wait=False)
        settle_s = await settle(nc, ledger, deadline_s=args.settle_timeout)
        checks = await verify(nc, ledger, workdir, pauses, args.partitions)
        snap = await collect(nc)
        outcomes = Counter(
            f"{snap.orders[o]['status']} {snap.orders[o]['reason'] or ''}".strip()
            for o in ledger.orders
            if o in snap.orders
        )
        print_table(ledger, checks, outcomes, {"load and faults": load_s, "settling": settle_s})
        return 0 if all(c.ok for c in checks) else 1
    finally:
        for conn in (app, nc):
            if conn is not None:
                await conn.close()
        await asyncio.to_thread(system.stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-chaos", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load and faults (default 180)")
    parser.add_argument("--rate", type=float, default=20.0, help="orders offered per second (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per service (default 3)")
    parser.add_argument("--order-timeout", type=float, default=4.0, help="ORDER_TIMEOUT_S of order_svc (default 4)")
    parser.add_argument(
        "--nats-sync",
        default="always",
        help="the embedded server's JetStream sync_interval: 'always' (default) or a duration "
        "like '2m' (the server's own default); see docs/operations.md",
    )
    parser.add_argument("--settle-timeout", type=float, default=150.0)
    parser.add_argument(
        "--cluster", type=int, default=0, help="nodes of a JetStream cluster (3), R3 streams; 0: one server (default)"
    )
    parser.add_argument(
        "--instances", type=int, default=1, help="instances of each service on its one DATA_DIR (default 1)"
    )
    parser.add_argument(
        "--pauses",
        type=int,
        help="writers SIGSTOPped past their lease, then SIGCONTed (default 1 with --instances 2 or more)",
    )
    parser.add_argument(
        "--partitions", type=int, default=1, help="PARTITIONS of every service (default 1: unpartitioned)"
    )
    parser.add_argument("--lease-ttl", type=float, help="LEASE_TTL_S of the services (default theirs, 10 s)")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="behind saga-auth: each service with its own key, orders placed with the client's",
    )
    parser.add_argument(
        "--workdir", help="an empty or new folder for the store, SQLite files and logs (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.workdir and Path(args.workdir).exists() and any(Path(args.workdir).iterdir()):
        # The invariants compare a fresh ledger with the services' records: a store left by
        # another run (deposits, orders, dead letters) would make them fail, or pass wrongly.
        parser.error(f"--workdir {args.workdir} is not empty; a run needs a fresh system")
    exit_on_sigterm()
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
