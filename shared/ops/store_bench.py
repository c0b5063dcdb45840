"""``python -m shared.ops.store_bench``: what the guarantees cost on a store's thread, without the noise.

A saga's extra cost over the floor is almost all on each service's store thread: the rounds'
transactions (inbox, handler, outbox, commit) and the relay's watermark. End to end, this
machine's drift hides a change of a few percent (docs/performance.md, "Comparing two versions");
this runs just that work, in one process, and times it with the thread's own CPU clock.

The three services' real consumers and handlers apply rounds of a burst's size to real SQLite
files (WAL, ``synchronous=FULL``); the events each round emits are routed in memory to the
services that consume them, as the streams would, and the watermark is saved every third round.
Orders and the seeded accounts and stock are saga-bench's. NATS is not involved: decoding runs
but is not timed, and nothing is published or acked.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from inventory_svc import repository as inventory_repository
from inventory_svc.__main__ import INVENTORY_SERVICE
from inventory_svc.domain import Stock
from order_svc.__main__ import ORDER_SERVICE
from payment_svc import repository as payment_repository
from payment_svc.__main__ import PAYMENT_SERVICE
from payment_svc.domain import Account
from shared.consumer import BatchLoop, ConsumerSpec, Decoded, Processed
from shared.logging import configure_logging
from shared.ops.bench import SEED_DEPOSITS, SEED_STOCK, make_orders, order_message
from shared.outbox import OutboxRecord, save_published_through
from shared.partitions import UNPARTITIONED, Partitioning, split_stored
from shared.runtime import tune_gc
from shared.service import ServiceDefinition
from shared.store import Store, configure

SERVICES: dict[str, ServiceDefinition] = {d.name: d for d in (ORDER_SERVICE, PAYMENT_SERVICE, INVENTORY_SERVICE)}
ROUND = {"order_svc": 400, "payment_svc": 180, "inventory_svc": 400}
"""Messages per round, as a 20,000-order burst gives them (docs/performance.md). Partitioned,
each partition's round holds its share of that: the burst's load divides between them."""


SAVE_EVERY = 3
"""Rounds per saved watermark: ~0.1 s of a burst."""

_UNUSED_MSG: Any = SimpleNamespace(metadata=SimpleNamespace(num_delivered=1))
"""What a round reads of a NATS message: only its delivery count, and only if a handler fails."""


@dataclass
class Result:
    cpu_us_per_saga: dict[str, float]
    messages_per_saga: dict[str, float]
    commits: dict[str, int]
    """Each service's rounds' commits (the watermark's are not counted)."""


def _open(path: Path, schema: str) -> sqlite3.Connection:
    async def create() -> None:
        await (await Store.open(path, schema)).close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    return conn


def _seed(conns: dict[tuple[str, int], sqlite3.Connection], partitioning: Partitioning) -> None:
    for customer, cents in SEED_DEPOSITS:
        payments = conns["payment_svc", partitioning.of(customer)]
        payments.execute("BEGIN")
        payment_repository.save_account(payments, Account(customer, cents))
        payments.execute("COMMIT")
    for sku, quantity in SEED_STOCK:
        inventory = conns["inventory_svc", partitioning.of(sku)]
        inventory.execute("BEGIN")
        inventory_repository.save_stock(inventory, [Stock(sku, quantity, 0)])
        inventory.execute("COMMIT")


def run(orders: int, seed: int, partitioning: Partitioning = UNPARTITIONED) -> Result:
    rng = random.Random(seed)
    services = {name: definition.consumers_for(partitioning) for name, definition in SERVICES.items()}
    units = [(name, k) for name in services for k in partitioning.all()]
    with tempfile.TemporaryDirectory(prefix="store-bench-") as workdir:
        conns = {
            (name, k): _open(Path(workdir) / partitioning.file_name(name, k), SERVICES[name].schema)
            for name, k in units
        }
        _seed(conns, partitioning)
        consumers: dict[str, list[tuple[str, ConsumerSpec]]] = {}
        for name, specs in services.items():
            for spec in specs:
                for event_type in spec.routes:
                    consumers.setdefault(event_type, []).append((name, spec))
        inboxes: dict[tuple[str, int], deque[tuple[str, bytes]]] = {unit: deque() for unit in units}

        def deliver(subject: str, body: bytes) -> None:
            # As the streams would: a public event to its order's partition in each consumer, a
            # batch of sub-steps (part.<k>.<service>.steps.<id>) to its partition of its service.
            partition, published = split_stored(subject)
            event_type, _, order_id = published.rpartition(".")
            for consumer, _ in consumers.get(event_type, []):
                inboxes[consumer, partitioning.of(order_id) if partition is None else partition].append(
                    (published, body)
                )

        for order in make_orders(orders, False, rng, "sb"):
            subject, body, _ = order_message(order, rng)
            deliver(subject, body)
        cpu = dict.fromkeys(services, 0.0)
        handled = dict.fromkeys(services, 0)
        unsaved: dict[tuple[str, int], list[OutboxRecord]] = {unit: [] for unit in units}
        rounds = dict.fromkeys(units, 0)
        loop = BatchLoop.__new__(BatchLoop)  # only its transaction code runs here
        while any(inboxes.values()):
            for (name, k), inbox in inboxes.items():
                if not inbox:
                    continue
                size = max(1, ROUND[name] // partitioning.count)
                taken = [inbox.popleft() for _ in range(min(size, len(inbox)))]
                batch = []
                for i, (subject, body) in enumerate(taken):
                    spec = next(s for n, s in consumers[subject.rpartition(".")[0]] if n == name)
                    batch.append((i, Decoded(_UNUSED_MSG, *spec.decode(subject, body))))
                conn = conns[name, k]
                started = time.thread_time()
                conn.execute("BEGIN IMMEDIATE")
                loop._apply_batch(batch, conn)
                conn.commit()
                emitted = [r for _, item in batch if isinstance(item.outcome, Processed) for r in item.outcome.records]
                unsaved[name, k].extend(emitted)
                rounds[name, k] += 1
                if rounds[name, k] % SAVE_EVERY == 0 and unsaved[name, k]:
                    conn.execute("BEGIN IMMEDIATE")
                    save_published_through(conn, max(r.row_id for r in unsaved[name, k]))
                    conn.commit()
                    unsaved[name, k] = []
                cpu[name] += time.thread_time() - started
                handled[name] += len(batch)
                for record in emitted:
                    deliver(record.subject, record.payload)
        for conn in conns.values():
            conn.close()
    return Result(
        {name: seconds / orders * 1e6 for name, seconds in cpu.items()},
        {name: count / orders for name, count in handled.items()},
        {name: sum(n for (service, _), n in rounds.items() if service == name) for name in services},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=6000, help="orders per run (default 6000)")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is printed (default 5)")
    parser.add_argument(
        "--partitions", type=int, default=1, help="PARTITIONS of every service; each partition's rounds are its share"
    )
    args = parser.parse_args()
    configure_logging("store_bench", "json", "INFO")
    tune_gc()
    partitioning = Partitioning(args.partitions)
    results = [run(args.orders, seed, partitioning) for seed in range(args.runs)]
    shape = f", {partitioning.count} partitions" if partitioning.partitioned else ""
    print(f"store-thread CPU per saga, median of {args.runs} runs of {args.orders} orders{shape}:")
    for name in SERVICES:
        each = [r.cpu_us_per_saga[name] for r in results]
        runs = " / ".join(f"{v:.1f}" for v in each)
        per_saga = results[0].messages_per_saga[name]
        commits = results[0].commits[name]
        print(
            f"  {name:14s} {statistics.median(each):6.1f} us  ({runs}; {per_saga:.2f} messages a saga,"
            f" {commits} commits)"
        )
    totals = [sum(r.cpu_us_per_saga.values()) for r in results]
    print(f"  {'all three':14s} {statistics.median(totals):6.1f} us  ({' / '.join(f'{v:.1f}' for v in totals)})")


if __name__ == "__main__":
    main()
