"""``saga-store``: which store each service writes, who holds its lease, and replacing a lost store.

    saga-store show                                  # every service: registered store, lease holder
    saga-store id --data-dir DIR --service NAME      # the identity of the store in DIR
    saga-store replace NAME --data-dir DIR --replacing OLD_ID

``replace`` is for a store that is gone for good (its disk lost): it registers the store in
``DIR`` (made empty if there is none, or a restored backup) in place of ``OLD_ID``, and only if
``OLD_ID`` is still the registered one. Stop the service's instances first: a writer whose store
is replaced stops, and an instance with the old store is refused from then on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import nats

from shared import registry
from shared.connection import CredentialsError, RefusedByServer, connect, nats_url_from_env
from shared.lease import ensure_buckets, read
from shared.ops.harness import SERVICES
from shared.partitions import Partitioning


async def show(url: str, partitioning: Partitioning) -> int:
    nc = await connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        await ensure_buckets(js, replicas=1)  # a no-op where they exist: a fresh system shows empty rows
        print(f"{'store':<18} {'registered store':<34} {'lease':<8} {'holder'}")
        for key in (partitioning.unit(name, p) for name in SERVICES for p in partitioning.all()):
            current = await registry.registered(js, key)
            held = await read(js, key)
            store = current.store_id if current else "-"
            epoch = str(held.epoch) if held.holder else "free"
            who = f"{held.holder.instance} pid {held.holder.pid} on {held.holder.machine}" if held.holder else "-"
            print(f"{key:<18} {store:<34} {epoch:<8} {who}")
            if current:
                print(f"{'':<18} registered {current.registered_at} from {current.host}:{current.path}")
        return 0
    finally:
        await nc.close()


async def replace(url: str, service: str, data_dir: Path, replacing: str, partition: int, partitions: int) -> int:
    nc = await connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        key = Partitioning(partitions).unit(service, partition)
        db = data_dir / Partitioning(partitions).file_name(service, partition)
        new_id = await registry.replace(nc.jetstream(), key, db, service, replacing)
        print(f"saga-store: {key} now writes store {new_id} ({db}), in place of {replacing}")
        return 0
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-store", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats-url", default=nats_url_from_env(), help="server(s), comma-separated (NATS_URL)")
    parser.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("PARTITIONS") or 1),
        help="PARTITIONS of the deployment (default: $PARTITIONS, or 1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("show", help="every service's registered store and lease holder")
    identity = commands.add_parser("id", help="the identity of the store in a data dir")
    identity.add_argument("--service", required=True, choices=SERVICES)
    identity.add_argument("--data-dir", type=Path, required=True)
    identity.add_argument("--partition", type=int, default=0, help="which partition's store (partitioned)")
    swap = commands.add_parser("replace", help="register another store in place of a lost one")
    swap.add_argument("service", choices=SERVICES)
    swap.add_argument("--data-dir", type=Path, required=True, help="where the new store is (made empty if missing)")
    swap.add_argument("--replacing", required=True, help="the identity of the store it replaces (see show)")
    swap.add_argument("--partition", type=int, default=0, help="which partition's store (partitioned)")
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            code = asyncio.run(show(args.nats_url, Partitioning(args.partitions)))
        elif args.command == "id":
            db = args.data_dir / Partitioning(args.partitions).file_name(args.service, args.partition)
            if not db.exists():
                print(f"saga-store: no store at {db}", file=sys.stderr)
                raise SystemExit(1)
            found = registry.read_store_identity(db)
            print(found or f"{db}: no identity yet (a service gives it one when it first opens the file)")
            code = 0 if found else 1
        else:
            code = asyncio.run(
                replace(args.nats_url, args.service, args.data_dir, args.replacing, args.partition, args.partitions)
            )
    except registry.NotTheRegisteredStore as exc:
        print(f"saga-store: refused: {exc}", file=sys.stderr)
        code = 1
    except (RefusedByServer, CredentialsError) as exc:  # one line, not a traceback: docs/operations.md
        print(f"saga-store: cannot connect: {exc}", file=sys.stderr)
        code = 2
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        print(f"saga-store: {exc!r}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
