"""``saga-bench``: end-to-end throughput and latency of real processes, with their production settings.

    saga-bench --burst 20000                 # publish N orders as fast as possible
    saga-bench --rate 1000 --duration 30     # offer R orders/s for S seconds, open loop
    saga-bench --burst 20000 --floor         # also run bare relays (no store, no dedup, no
                                             # outbox) on the same load: the guarantees' cost
    saga-bench --burst 20000 --floor --topology both   # and on a 3-node R3 cluster, side by side

Latency is end to end: from publishing ``orders.requested`` to seeing that order's
``orders.confirmed`` or ``orders.cancelled``. The default mix is about 80% orders that confirm
and 20% that fail for funds or stock (``--all-success`` for none). Every order's outcome is
checked against what it should be: a fast wrong answer is not a result.

It prints throughput, latency percentiles, events/s, outcomes, CPU % and peak RSS per process,
and writes a JSON result and a PNG chart (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.aio import sleep_unless_stopped
from shared.connection import connect
from shared.jetstream import MSG_ID_HEADER, Publisher
from shared.ops import client
from shared.ops.harness import SERVICES, ServiceProcess, System, exit_on_sigterm
from shared.ops.otlp import OtlpReceiver
from shared.partitions import partition_of
from shared.runtime import tune_gc
from shared.subjects import PUBLIC_STREAMS, STEP_STREAMS

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FLOOR_ROLES = ("order", "payment", "inventory")


# --- processes and their resources ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_queue_ns(pid: int) -> dict[int, int] | None:
    """Per thread of ``pid``: nanoseconds so far spent ready to run but waiting for a core
    (``/proc/<pid>/task/<tid>/schedstat``); None where the kernel keeps no such count."""
    if not Path(f"/proc/{pid}/schedstat").exists():
        return None
    waits = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waits[int(task.name)] = int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended while we looked
    return waits


def waited_s(before: dict[int, int] | None, after: dict[int, int] | None) -> float | None:
    """Run-queue time between two ``run_queue_ns`` readings, over the threads alive at the
    second (one that ended in between is not counted; the services' threads live as long as they do)."""
    if before is None or after is None:
        return None
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Proc:
    name: str
    pid: int
    cpu_at_start: float = 0.0
    run_queue_at_start: dict[int, int] | None = None

    def start_counting(self) -> None:
        self.cpu_at_start = cpu_seconds(self.pid)
        self.run_queue_at_start = run_queue_ns(self.pid)

    def usage(self, elapsed_s: float) -> dict[str, float | None]:
        """CPU % and run-queue % since ``start_counting`` (100% = one core, or one thread
        always waiting for one), and peak RSS."""
        waited = waited_s(self.run_queue_at_start, run_queue_ns(self.pid))
        return {
            "cpu_percent": (cpu_seconds(self.pid) - self.cpu_at_start) / elapsed_s * 100,
            "run_queue_percent": None if waited is None else waited / elapsed_s * 100,
            "peak_rss_mb": peak_rss_mb(self.pid),
        }


# --- the load -----------------------------------------------------------------------------------


@dataclass
class Order:
    order_id: str
    expected: str
    published_at: float = 0.0
    done_at: float = 0.0
    outcome: str = ""


def make_orders(n: int, all_success: bool, rng: random.Random, prefix: str) -> list[Order]:
    orders = []
    for i in range(n):
        roll = rng.random()
        kind = "confirm" if all_success or roll < 0.8 else ("funds" if roll < 0.9 else "stock")
        expected = {"confirm": "CONFIRMED", "funds": "CANCELLED insufficient_funds", "stock": "CANCELLED out_of_stock"}[
            kind
        ]
        orders.append(Order(f"{prefix}-{i:07d}-{kind}", expected))
    return orders


Message = tuple[str, bytes, dict[str, str]]
"""What ``Publisher`` sends: subject, payload, headers."""


def order_message(order: Order, rng: random.Random, customer_among: int = 1, sku_among: int = 1) -> Message:
    """The order's ``orders.requested``, with the customer, sku and quantity its kind needs.

    ``customer_among`` > 1: the customer is drawn from those in the order's own partition among
    that many, so its payment is not re-keyed to another partition; ``sku_among`` the same for
    the sku and its reservation (``--no-rekeying``: what the re-keying costs is the difference)."""
    kind = order.order_id.rsplit("-", 1)[1]
    while True:
        customer = f"poor-{rng.randrange(10)}" if kind == "funds" else f"rich-{rng.randrange(100)}"
        if partition_of(customer, customer_among) == partition_of(order.order_id, customer_among):
            break
    while True:
        sku = f"scarce-{rng.randrange(10)}" if kind == "stock" else f"plenty-{rng.randrange(100)}"
        if partition_of(sku, sku_among) == partition_of(order.order_id, sku_among):
            break
    quantity = 1_000 if kind == "stock" else rng.randint(1, 3)
    subject, body, event_id = client.order_request(
        order.order_id, customer, [{"sku": sku, "quantity": quantity, "unit_price_cents": rng.randint(100, 5_000)}]
    )
    return subject, body, {MSG_ID_HEADER: event_id}


def _rekeying_described(no_rekeying: str | None) -> str:
    match no_rekeying:
        case None:
            return ""
        case "both":
            return ", no re-keying"
        case service:
            return f", no re-keying of {service}"


SEED_DEPOSITS = [(f"rich-{i}", 10**13) for i in range(100)] + [(f"poor-{i}", 1) for i in range(10)]
"""(customer, cents): enough for 1,000,000 orders, plus the customers who cannot pay."""
SEED_STOCK = [(f"plenty-{i}", 10**8) for i in range(100)] + [(f"scarce-{i}", 1) for i in range(10)]
"""(sku, quantity): enough for 1,000,000 orders, plus the skus that run out."""


async def seed(nc: Client) -> None:
    """Customers and stock for the orders ``make_orders`` makes."""
    calls = [client.deposit(nc, customer, cents) for customer, cents in SEED_DEPOSITS]
    calls += [client.restock(nc, sku, quantity) for sku, quantity in SEED_STOCK]
    await asyncio.gather(*calls)


class Tracker:
    """Watches orders.confirmed / orders.cancelled and timestamps each order's end."""

    def __init__(self, orders: dict[str, Order]) -> None:
        self.orders = orders
        self.done = 0
        self.finished = asyncio.Event()

    async def on_outcome(self, msg: Msg) -> None:
        order = self.orders.get(msg.subject.rsplit(".", 1)[1])
        if order is None or order.done_at:
            return
        order.done_at = time.monotonic()
        if msg.subject.startswith("orders.confirmed."):
            order.outcome = "CONFIRMED"
        else:
            order.outcome = f"CANCELLED {json.loads(msg.data)['data']['reason']}"
        self.done += 1
        if self.done == len(self.orders):
            self.finished.set()


OFFER_CHUNK = 500
"""Orders per pipelined publish in a burst: enough to keep the wire full, few enough to stay in the
server's flow."""


class Acknowledgements:
    """The publish acks of the offered orders, counted by callback (no task or future per send)."""

    def __init__(self) -> None:
        self.unanswered = 0
        self.failed: list[str] = []
        self._changed = asyncio.Event()

    def on_done(self, errors: list[str | None]) -> None:
        self.unanswered -= 1
        self.failed.extend(error for error in errors if error is not None)
        self._changed.set()

    async def fewer_than(self, limit: int) -> None:
        """Wait until fewer than ``limit`` sends are unanswered; raise if any order was refused."""
        while self.unanswered >= limit:
            self._changed.clear()
            await self._changed.wait()
        if self.failed:
            raise RuntimeError(f"{len(self.failed)} orders were not accepted by JetStream: {self.failed[0]}")


async def offer(nc: Client, orders: list[Order], messages: list[Message], rate: float | None) -> None:
    """Publish every order: as fast as acks allow (burst) or on an open-loop schedule (rate).

    ``messages`` are the orders' ``orders.requested``, made before the clock starts: the load
    generator shares the machine, so it spends as little of it as it can while measuring."""
    publisher = Publisher(nc)
    await publisher.start()
    acks = Acknowledgements()
    started = time.monotonic()
    next_order = 0
    while next_order < len(orders):
        if rate:
            # Open loop: order i is due at i / rate, whatever happened to the ones before; what is
            # due goes out now, and its acks are counted aside, never awaited by the schedule.
            delay = started + next_order / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            due = min(len(orders), int((time.monotonic() - started) * rate) + 1)
        else:
            await acks.fewer_than(4)  # a burst keeps four chunks in flight
            due = min(len(orders), next_order + OFFER_CHUNK)
        published_at = time.monotonic()
        for order in orders[next_order:due]:
            order.published_at = published_at
        acks.unanswered += 1
        await publisher.send(messages[next_order:due], 30.0, acks.on_done)
        next_order = due
    await acks.fewer_than(1)


async def progress(tracker: Tracker, total: int, stop: asyncio.Event) -> None:
    began = time.monotonic()
    while not stop.is_set():
        done = tracker.done
        width = 40
        filled = int(width * done / total) if total else width
        rate = done / max(time.monotonic() - began, 1e-9)
        sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done:>7}/{total} sagas  {rate:7.0f}/s ")
        sys.stderr.flush()
        await sleep_unless_stopped(stop, 0.5)
    sys.stderr.write("\n")


# --- one measured run -----------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    orders: int
    sagas_per_s: float
    latency_ms: dict[str, float]
    events_per_s: float
    outcomes: dict[str, int]
    wrong_outcomes: int
    processes: dict[str, dict[str, float | None]]
    load_generator: dict[str, float | None]
    elapsed_s: float
    timeline: list[dict[str, float]] = field(default_factory=list)
    spans_per_saga: float = 0.0
    """Traced: spans the services exported per saga, counted once they have stopped (and flushed)."""
    stored_bytes_per_saga: dict[str, float] = field(default_factory=dict)
    """What each saga stream (and step stream) grew by, per order: the server's work grows with the
    bytes it stores and delivers, not only the messages (docs/performance.md, "Partitions")."""
    redelivered: int = 0
    """Messages the consumers were sent again over the run (``num_redelivered``): a nak's retry,
    or an ack that did not come within ACK_WAIT_S. A clean run has none; every one is work done
    twice (the inbox drops the copy)."""


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


NICE_BUCKETS_S = (0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)
CHART_POINTS = 60
"""About how many buckets a run's timeline has, whatever its length: a 5 s burst in one-second
buckets was five points, which hid its ramp-up and drain."""


def bucket_s(elapsed_s: float) -> float:
    """The smallest round bucket that cuts ``elapsed_s`` into at most about CHART_POINTS."""
    return next((b for b in NICE_BUCKETS_S if elapsed_s / b <= CHART_POINTS), NICE_BUCKETS_S[-1])


def timeline(orders: list[Order], start: float, elapsed_s: float) -> list[dict[str, float]]:
    """Per time bucket since the start (``bucket_s``): sagas completed per second in it, and the
    end-to-end latency percentiles of those."""
    width = bucket_s(elapsed_s)
    buckets: dict[int, list[float]] = {}
    for o in orders:
        if o.done_at:
            buckets.setdefault(int((o.done_at - start) / width), []).append((o.done_at - o.published_at) * 1000)
    out = []
    for n in range(max(buckets, default=-1) + 1):  # empty buckets too: a stall shows as a drop to 0
        lat = sorted(buckets.get(n, []))
        point = {"t": round(n * width, 3), "bucket_s": width, "sagas_per_s": len(lat) / width}
        if lat:
            point |= {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": lat[-1]}
        out.append(point)
    return out


@dataclass(frozen=True)
class Shape:
    """How many partitions each service's state is split into, and how many instances of each run."""

    partitions: int = 1
    instances: int = 1
    tracing: bool = False
    """Every service exports a span per message handled, over OTLP/HTTP to a receiver in the bench
    that only counts them (its CPU is the load generator's, not the services')."""

    @property
    def suffix(self) -> str:
        scaled = "" if (self.partitions, self.instances) == (1, 1) else f"-p{self.partitions}x{self.instances}"
        return scaled + ("-traced" if self.tracing else "")

    @property
    def key(self) -> str:
        return f"p{self.partitions}x{self.instances}" + ("_traced" if self.tracing else "")


async def measure(
    args: argparse.Namespace, label: str, floor: bool, cluster_size: int = 0, shape: Shape = Shape()
) -> Result:
    """One run: the services (or the floor's relays) on one server, or on a ``cluster_size``-node
    cluster with R3 streams; in ``shape``'s partitions and instances."""
    # Start on a quiet disk: the previous run's files (its stream store, its SQLite files) may
    # still be written back by the kernel, which would cost this run CPU and I/O it did not cause.
    await asyncio.to_thread(os.sync)
    workdir = Path(tempfile.mkdtemp(prefix=f"saga-bench-{label}-"))
    nats_system = System(workdir, cluster_size=cluster_size, sync_interval=args.nats_sync)
    env = {"ORDER_TIMEOUT_S": str(args.order_timeout), "LOG_LEVEL": args.log_level, "PARTITIONS": str(shape.partitions)}
    if cluster_size:
        env["STREAM_REPLICAS"] = str(min(cluster_size, 3))
    receiver = OtlpReceiver(keep=False).start() if shape.tracing and not floor else None
    if receiver is not None:
        env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    services: list[ServiceProcess] = []
    nc: Client | None = None
    keep_workdir = True  # until the run has given a right answer: then its files are evidence
    result: Result | None = None
    try:
        await asyncio.to_thread(nats_system.start_nats)
        instances = range(1, shape.instances + 1)
        if floor:
            services = [
                ServiceProcess(
                    f"floor-{r}",
                    nats_system.url,
                    workdir,
                    {**env, "FLOOR_INSTANCE": str(i), "FLOOR_INSTANCES": str(shape.instances)},
                    module="shared.ops.floor",
                    args=(r,),
                    instance=i,
                )
                for i in instances
                for r in FLOOR_ROLES
            ]
        else:
            services = [
                ServiceProcess(name, nats_system.url, workdir, env, instance=i) for i in instances for name in SERVICES
            ]
        for svc in services:
            svc.start(wait=False)
        for svc in services:
            await asyncio.to_thread(svc.wait_started)
        if not floor:
            nats_system.service_env = env
            nats_system.services = {svc.label: svc for svc in services}
            await asyncio.to_thread(nats_system.wait_partitions_owned)
        servers = nats_system.cluster.nodes if nats_system.cluster else [nats_system.server]
        procs = [
            Proc(f"nats {node.name}" if cluster_size else "nats-server", node.proc.pid)
            for node in servers
            if node is not None and node.proc is not None
        ]
        procs += [Proc(s.label, s.proc.pid) for s in services if s.proc]
        nc = await connect(nats_system.url)
        if not floor:
            await seed(nc)
        rng = random.Random(args.seed)
        count = args.burst or int(args.rate * args.duration)
        orders = make_orders(count, args.all_success, rng, label)
        body_rng = random.Random(args.seed)
        customer_among = args.partitions if args.no_rekeying in ("both", "payments") else 1
        sku_among = args.partitions if args.no_rekeying in ("both", "inventory") else 1
        messages = [order_message(order, body_rng, customer_among, sku_among) for order in orders]
        by_id = {o.order_id: o for o in orders}
        tracker = Tracker(by_id)
        await nc.subscribe("orders.confirmed.*", cb=tracker.on_outcome)
        await nc.subscribe("orders.cancelled.*", cb=tracker.on_outcome)
        await nc.flush()
        js = nc.jetstream()
        stored_before = await _stored(js)
        load_generator = Proc("load generator", os.getpid())
        for p in [*procs, load_generator]:
            p.start_counting()
        print(
            f"{label}: {count} orders, {'burst' if args.burst else f'{args.rate:g}/s for {args.duration:g}s'}"
            f"{', all succeed' if args.all_success else ', default mix'}"
            f"{_rekeying_described(args.no_rekeying)}",
            file=sys.stderr,
        )
        stop_progress = asyncio.Event()
        bar = asyncio.create_task(progress(tracker, count, stop_progress))
        start = time.monotonic()
        await offer(nc, orders, messages, None if args.burst else args.rate)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tracker.finished.wait(), timeout=args.deadline)
        end = max((o.done_at for o in orders if o.done_at), default=time.monotonic())
        elapsed = max(end - start, 1e-9)
        stop_progress.set()
        await bar
        usage = {p.name: p.usage(elapsed) for p in procs}
        load_usage = load_generator.usage(elapsed)
        stored_after = await _stored(js)
        redelivered = await _redelivered(js)
        events = sum(m for m, _ in stored_after.values()) - sum(m for m, _ in stored_before.values())
        latencies = sorted((o.done_at - o.published_at) * 1000 for o in orders if o.done_at)
        outcomes = Counter(o.outcome or "not finished" for o in orders)
        wrong = sum(1 for o in orders if (floor is False and o.outcome != o.expected) or (floor and not o.done_at))
        keep_workdir = args.keep_workdir or wrong > 0
        result = Result(
            label=label,
            orders=count,
            sagas_per_s=tracker.done / elapsed,
            latency_ms={q: percentile(latencies, v) for q, v in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
            events_per_s=events / elapsed,
            outcomes=dict(outcomes),
            wrong_outcomes=wrong,
            processes=usage,
            load_generator=load_usage,
            elapsed_s=elapsed,
            timeline=timeline(orders, start, elapsed),
            stored_bytes_per_saga={
                name: (size - stored_before.get(name, (0, 0))[1]) / max(count, 1)
                for name, (_, size) in stored_after.items()
            },
            redelivered=redelivered,
        )
        return result
    finally:
        if nc is not None:
            await nc.close()
        for svc in services:
            await asyncio.to_thread(svc.stop)
        await asyncio.to_thread(nats_system.stop)
        if receiver is not None:
            if result is not None:
                result.spans_per_saga = receiver.count / max(result.orders, 1)
            receiver.stop()
        if keep_workdir:
            print(f"  {label}: the stream store, SQLite files and logs are in {workdir}", file=sys.stderr)
        else:  # a 100,000-order run leaves about half a gigabyte
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)


async def _stored(js: JetStreamContext) -> dict[str, tuple[int, int]]:
    """(messages, bytes) in each of the saga's streams, the sub-steps' included (they exist only
    partitioned)."""
    found: dict[str, tuple[int, int]] = {}
    for stream in (*PUBLIC_STREAMS, *STEP_STREAMS):
        with contextlib.suppress(NotFoundError):
            state = (await js.stream_info(stream.value)).state
            found[stream.value] = (state.messages, state.bytes)
    return found


async def _redelivered(js: JetStreamContext) -> int:
    """Messages redelivered to any consumer of the saga's streams (each run has a server of its own)."""
    count = 0
    for stream in (*PUBLIC_STREAMS, *STEP_STREAMS):
        with contextlib.suppress(NotFoundError):
            count += sum(info.num_redelivered or 0 for info in await js.consumers_info(stream.value))
    return count


# --- reporting --------------------------------------------------------------------------------------


def cpu_per_saga_ms(result: Result) -> tuple[float, float]:
    """CPU milliseconds per order: the services' (or the floor's relays') together, and the
    NATS server's (every node's, on a cluster)."""

    def ms(names: list[str]) -> float:
        percent = sum(float(result.processes[n]["cpu_percent"] or 0.0) for n in names)
        return percent / 100 * result.elapsed_s / max(result.orders, 1) * 1000

    nats_names = [n for n in result.processes if n.startswith("nats")]
    return ms([n for n in result.processes if n not in nats_names]), ms(nats_names)


def shape_ratios(base: Result, wide: Result) -> dict[str, float]:
    """A partitioned run over the 1 x 1 run beside it: CPU per saga (all, services', the server's), sagas/s."""
    (base_svc, base_nats), (wide_svc, wide_nats) = cpu_per_saga_ms(base), cpu_per_saga_ms(wide)
    return {
        "cpu_per_saga": (wide_svc + wide_nats) / (base_svc + base_nats),
        "services_cpu": wide_svc / base_svc,
        "nats_cpu": wide_nats / base_nats,
        "sagas_per_s": wide.sagas_per_s / base.sagas_per_s,
    }


def print_result(result: Result) -> None:
    lat = result.latency_ms
    print(f"\n== {result.label}: {result.orders} orders in {result.elapsed_s:.1f}s ==")
    print(f"  completed sagas/s   {result.sagas_per_s:10.0f}")
    print(f"  events/s            {result.events_per_s:10.0f}")
    print(
        f"  latency ms          p50 {lat['p50']:.1f}   p95 {lat['p95']:.1f}   p99 {lat['p99']:.1f}   "
        f"max {lat['max']:.1f}"
    )
    print("  outcomes            " + ", ".join(f"{k} {v}" for k, v in sorted(result.outcomes.items())))
    print(f"  redelivered         {result.redelivered:10d}")
    services_ms, nats_ms = cpu_per_saga_ms(result)
    print(f"  CPU per saga ms     services {services_ms:.3f}   nats {nats_ms:.3f}")
    if result.spans_per_saga:
        print(f"  spans per saga      {result.spans_per_saga:10.1f}   (exported over OTLP/HTTP)")
    if result.stored_bytes_per_saga:
        stored = result.stored_bytes_per_saga
        parts = ", ".join(f"{name} {size:.0f}" for name, size in stored.items() if size)
        print(f"  stored per saga B   {sum(stored.values()):.0f} ({parts})")
    print(f"  {'process':<20} {'CPU %':>7} {'run queue %':>12} {'peak RSS MB':>12}")
    for name, usage in [*result.processes.items(), ("(load generator)", result.load_generator)]:
        waiting = usage["run_queue_percent"]
        print(
            f"  {name:<20} {usage['cpu_percent']:7.0f} {'n/a' if waiting is None else f'{waiting:.0f}':>12} "
            f"{usage['peak_rss_mb']:12.1f}"
        )


def write_chart(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for result in results:
        t = [b["t"] for b in result.timeline]
        bottom.plot(t, [b["sagas_per_s"] for b in result.timeline], marker=".", label=f"{result.label} sagas/s")
        if not result.label.startswith("floor"):
            timed = [b for b in result.timeline if "p50" in b]
            for q, style in (("p50", "-"), ("p99", "--"), ("max", ":")):
                top.plot([b["t"] for b in timed], [b[q] for b in timed], style, marker=".", label=f"{result.label} {q}")
    top.set_ylabel("end-to-end latency (ms)")
    top.set_yscale("log")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    widths = sorted({b["bucket_s"] for r in results for b in r.timeline})
    bottom.set_ylabel("completed sagas per second")
    bottom.set_xlabel(f"seconds since the first order (buckets of {', '.join(f'{w:g}' for w in widths)} s)")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.suptitle("saga-bench: latency percentiles and throughput over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, summary: dict[str, Any], results: list[Result]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path, png_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.png"
    json_path.write_text(json.dumps(summary, indent=2))
    write_chart(results, png_path)
    return json_path, png_path


CLUSTER_SIZE = 3


async def run(args: argparse.Namespace) -> int:
    topologies = {"single": [0], "cluster": [CLUSTER_SIZE], "both": [0, CLUSTER_SIZE]}[args.topology]
    results: list[Result] = []
    by_topology: dict[int, dict[str, Result]] = {}
    scaled = Shape(args.partitions, args.instances)
    if args.tracing:  # tracing off and on, in the shape asked for
        shapes = [scaled, dataclasses.replace(scaled, tracing=True)]
    else:
        shapes = [Shape()] if scaled == Shape() else [Shape(), scaled]
    base, compared = shapes[0], shapes[-1]
    by_shape: dict[tuple[int, Shape], list[Result]] = {}
    for size in topologies:
        suffix = f"-r{min(size, 3)}" if size else ""
        runs: dict[str, Result] = {}
        # With --pairs, the two shapes alternate: this machine drifts within minutes, so each
        # pair's ratio is taken from two runs next to each other, and the median of the pairs.
        # Every other pair runs them the other way round (A B, B A, A B, ...), so neither shape
        # is always the one that runs second, after a drift or on the disk the other one left.
        for pair in range(args.pairs if len(shapes) == 2 else 1):
            for shape in shapes if pair % 2 == 0 else shapes[::-1]:
                name = shape.suffix
                again = f"-{pair + 1}" if args.pairs > 1 and len(shapes) == 2 else ""
                if args.floor:
                    floor = await measure(args, f"floor{suffix}{shape.suffix}{again}", True, size, shape)
                    runs[f"floor{name}"] = floor
                    results.append(floor)
                    print_result(floor)
                saga = await measure(args, f"saga{suffix}{shape.suffix}{again}", False, size, shape)
                runs[f"saga{name}"] = saga
                results.append(saga)
                print_result(saga)
                by_shape.setdefault((size, shape), []).append(saga)
        by_topology[size] = runs
    summary: dict[str, Any] = {"args": vars(args), "results": [asdict(r) for r in results]}
    ratios: dict[str, float] = {}
    if args.floor:
        for size, runs in by_topology.items():
            for shape in shapes:
                name = shape.suffix
                key = ("floor_ratio" if size == 0 else f"floor_ratio_cluster_{size}") + name.replace("-", "_")
                ratios[key] = runs[f"saga{name}"].sagas_per_s / runs[f"floor{name}"].sagas_per_s
                where = f"on a {size}-node cluster, R3" if size else "on one server"
                shaped = f", {shape.partitions} partitions x {shape.instances} instances" if name else ""
                shaped += ", traced" if shape.tracing else ""
                print(f"\n  saga / floor        {ratios[key]:10.3f}   (the cost of the guarantees, {where}{shaped})")
    if len(shapes) == 2:
        for size in topologies:
            key = f"{compared.key}_over_{base.key}" + (f"_cluster_{size}" if size else "")
            pairs = [
                shape_ratios(b, w) for b, w in zip(by_shape[(size, base)], by_shape[(size, compared)], strict=True)
            ]
            for what in ("cpu_per_saga", "services_cpu", "nats_cpu", "sagas_per_s"):
                ratios[f"{key}_{what}"] = statistics.median(p[what] for p in pairs)
            if len(pairs) > 1:
                summary[f"{key}_pairs"] = pairs
                listed = ", ".join(f"{p['cpu_per_saga']:.3f}" for p in pairs)
                print(f"\n  CPU per saga, {_described(compared)} / {_described(base)}, pair by pair: {listed}")
            print(
                f"\n  {_described(compared)} / {_described(base)}"
                f"{f' (cluster of {size})' if size else ''}{' (median of the pairs)' if len(pairs) > 1 else ''}:"
                f" CPU per saga {ratios[f'{key}_cpu_per_saga']:.3f}"
                f" (services {ratios[f'{key}_services_cpu']:.3f}, NATS {ratios[f'{key}_nats_cpu']:.3f}),"
                f" sagas/s {ratios[f'{key}_sagas_per_s']:.3f}"
            )
    if len(by_topology) == 2:
        single, cluster = by_topology[0]["saga"], by_topology[CLUSTER_SIZE]["saga"]
        ratios["cluster_over_single_sagas_per_s"] = cluster.sagas_per_s / single.sagas_per_s
        ratios["cluster_over_single_services_cpu"] = cpu_per_saga_ms(cluster)[0] / cpu_per_saga_ms(single)[0]
        ratios["cluster_over_single_nats_cpu"] = cpu_per_saga_ms(cluster)[1] / cpu_per_saga_ms(single)[1]
        print(
            f"\n  R3 cluster / one server: sagas/s {ratios['cluster_over_single_sagas_per_s']:.3f}, "
            f"services' CPU per saga {ratios['cluster_over_single_services_cpu']:.3f}, "
            f"NATS CPU per saga {ratios['cluster_over_single_nats_cpu']:.3f}"
        )
    summary.update(ratios)
    json_path, png_path = await asyncio.to_thread(write_outputs, Path(args.out), summary, results)
    print(f"\n  wrote {json_path} and {png_path}")
    failed = [r for r in results if r.wrong_outcomes]
    for r in failed:
        print(
            f"\nsaga-bench: FAILED: {r.wrong_outcomes} of {r.orders} orders in {r.label} did not reach "
            f"their expected outcome: {r.outcomes}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _described(shape: Shape) -> str:
    return f"{shape.partitions} partitions x {shape.instances} instances" + (", traced" if shape.tracing else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-bench", description=__doc__.splitlines()[0] if __doc__ else None)
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--burst", type=int, help="publish N orders as fast as possible")
    load.add_argument("--rate", type=float, help="orders per second, open loop (with --duration)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds, with --rate (default 30)")
    parser.add_argument("--all-success", action="store_true", help="every order confirms (default: ~80%%)")
    parser.add_argument(
        "--no-rekeying",
        nargs="?",
        const="both",
        choices=("both", "payments", "inventory"),
        help="with --partitions: every order's customer and sku in the order's own partition (in both shapes), "
        "so nothing is re-keyed; what re-keying costs is the difference from a run without it. "
        "'payments' keeps only the customer at home, 'inventory' only the sku",
    )
    parser.add_argument("--floor", action="store_true", help="also measure bare relays and print the ratio")
    parser.add_argument(
        "--topology",
        choices=("single", "cluster", "both"),
        default="single",
        help=f"one nats-server (default), a {CLUSTER_SIZE}-node cluster with R3 streams, or both side by side",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="PARTITIONS of the services; above 1 (or with --instances), runs 1 partition x 1 instance beside it",
    )
    parser.add_argument("--instances", type=int, default=1, help="instances of each service (and floor relay)")
    parser.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="with --partitions/--instances (or --tracing): run the two alternately this many times, "
        "and report each pair's ratio and their median",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="run the services untraced and traced (OTLP/HTTP to a receiver that counts the spans) "
        "side by side, in the --partitions/--instances shape; with --pairs, alternately",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nats-sync", default="always", help="the server's sync_interval (default: always)")
    parser.add_argument(
        "--order-timeout",
        type=float,
        default=300.0,
        help="ORDER_TIMEOUT_S: long, so a slow run is measured, not cancelled",
    )
    parser.add_argument("--log-level", default="INFO", help="the services' LOG_LEVEL (default INFO, as in production)")
    parser.add_argument("--deadline", type=float, default=600.0, help="give up waiting after this many seconds")
    parser.add_argument("--out", default="bench-results", help="where the JSON and PNG go")
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep each run's stream store, SQLite files and logs (always kept when a run fails)",
    )
    args = parser.parse_args(argv)
    if args.no_rekeying and args.partitions < 2:
        parser.error("--no-rekeying needs --partitions above 1")
    exit_on_sigterm()
    tune_gc()  # it holds every order for the whole run, which the default collector would walk again and again
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
