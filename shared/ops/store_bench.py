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

from inventory_svc import handlers as inventory_handlers
from inventory_svc import repository as inventory_repository
from inventory_svc.domain import Stock
from order_svc import handlers as order_handlers
from order_svc import repository as order_repository
from payment_svc import handlers as payment_handlers
from payment_svc import repository as payment_repository
from payment_svc.domain import Account
from shared.consumer import BatchLoop, ConsumerSpec, Decoded, Processed
from shared.logging import configure_logging
from shared.ops.bench import SEED_DEPOSITS, SEED_STOCK, make_orders, order_message
from shared.outbox import OutboxRecord, save_published_through
from shared.runtime import tune_gc
from shared.store import Store, configure

SERVICES: dict[str, tuple[list[ConsumerSpec], str]] = {
    "order_svc": (order_handlers.CONSUMERS, order_repository.SCHEMA),
    "payment_svc": (payment_handlers.CONSUMERS, payment_repository.SCHEMA),
    "inventory_svc": (inventory_handlers.CONSUMERS, inventory_repository.SCHEMA),
}
ROUND = {"order_svc": 400, "payment_svc": 180, "inventory_svc": 400}
"""Messages per round, as a 20,000-order burst gives them (docs/performance.md)."""
SAVE_EVERY = 3
"""Rounds per saved watermark: ~0.1 s of a burst."""

_UNUSED_MSG: Any = SimpleNamespace(metadata=SimpleNamespace(num_delivered=1))
"""What a round reads of a NATS message: only its delivery count, and only if a handler fails."""


@dataclass
class Result:
    cpu_us_per_saga: dict[str, float]
    messages_per_saga: dict[str, float]


def _open(path: Path, schema: str) -> sqlite3.Connection:
    async def create() -> None:
        await (await Store.open(path, schema)).close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    return conn


def _seed(conns: dict[str, sqlite3.Connection]) -> None:
    payments = conns["payment_svc"]
    payments.execute("BEGIN")
    for customer, cents in SEED_DEPOSITS:
        payment_repository.save_account(payments, Account(customer, cents))
    payments.execute("COMMIT")
    inventory = conns["inventory_svc"]
    inventory.execute("BEGIN")
    inventory_repository.save_stock(inventory, [Stock(sku, quantity, 0) for sku, quantity in SEED_STOCK])
    inventory.execute("COMMIT")


def run(orders: int, seed: int) -> Result:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="store-bench-") as workdir:
        conns = {name: _open(Path(workdir) / f"{name}.sqlite3", schema) for name, (_, schema) in SERVICES.items()}
        _seed(conns)
        consumers: dict[str, list[tuple[str, ConsumerSpec]]] = {}
        for name, (specs, _) in SERVICES.items():
            for spec in specs:
                for event_type in spec.routes:
                    consumers.setdefault(event_type, []).append((name, spec))
        inboxes: dict[str, deque[tuple[str, bytes]]] = {name: deque() for name in SERVICES}
        for order in make_orders(orders, False, rng, "sb"):
            subject, body, _ = order_message(order, rng)
            inboxes["order_svc"].append((subject, body))
        cpu = dict.fromkeys(SERVICES, 0.0)
        handled = dict.fromkeys(SERVICES, 0)
        unsaved: dict[str, list[OutboxRecord]] = {name: [] for name in SERVICES}
        rounds = dict.fromkeys(SERVICES, 0)
        loop = BatchLoop.__new__(BatchLoop)  # only its transaction code runs here
        while any(inboxes.values()):
            for name, inbox in inboxes.items():
                if not inbox:
                    continue
                taken = [inbox.popleft() for _ in range(min(ROUND[name], len(inbox)))]
                batch = []
                for i, (subject, body) in enumerate(taken):
                    spec = next(s for n, s in consumers[subject.rpartition(".")[0]] if n == name)
                    batch.append((i, Decoded(_UNUSED_MSG, *spec.decode(subject, body))))
                conn = conns[name]
                started = time.thread_time()
                conn.execute("BEGIN IMMEDIATE")
                loop._apply_batch(batch, conn)
                conn.commit()
                emitted = [r for _, item in batch if isinstance(item.outcome, Processed) for r in item.outcome.records]
                unsaved[name].extend(emitted)
                rounds[name] += 1
                if rounds[name] % SAVE_EVERY == 0 and unsaved[name]:
                    conn.execute("BEGIN IMMEDIATE")
                    save_published_through(conn, max(r.row_id for r in unsaved[name]))
                    conn.commit()
                    unsaved[name] = []
                cpu[name] += time.thread_time() - started
                handled[name] += len(batch)
                for record in emitted:
                    for consumer, _ in consumers.get(record.subject.rpartition(".")[0], []):
                        inboxes[consumer].append((record.subject, record.payload))
        for conn in conns.values():
            conn.close()
    return Result(
        {name: seconds / orders * 1e6 for name, seconds in cpu.items()},
        {name: count / orders for name, count in handled.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=6000, help="orders per run (default 6000)")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is printed (default 5)")
    args = parser.parse_args()
    configure_logging("store_bench", "json", "INFO")
    tune_gc()
    results = [run(args.orders, seed) for seed in range(args.runs)]
    print(f"store-thread CPU per saga, median of {args.runs} runs of {args.orders} orders:")
    for name in SERVICES:
        each = [r.cpu_us_per_saga[name] for r in results]
        runs = " / ".join(f"{v:.1f}" for v in each)
        per_saga = results[0].messages_per_saga[name]
        print(f"  {name:14s} {statistics.median(each):6.1f} us  ({runs}; {per_saga:.2f} messages a saga)")
    totals = [sum(r.cpu_us_per_saga.values()) for r in results]
    print(f"  {'all three':14s} {statistics.median(totals):6.1f} us  ({' / '.join(f'{v:.1f}' for v in totals)})")


if __name__ == "__main__":
    main()
