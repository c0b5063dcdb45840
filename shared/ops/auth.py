"""``saga-auth``: the trust boundary on the bus. Who may say what, as a nats-server configuration.

``saga-auth init DIR`` writes ``DIR/nats-server.conf`` (JetStream on, ``max_payload``, and
``include permissions.conf``), ``DIR/permissions.conf`` (one nkey user per role with its
publish and subscribe allow lists) and a seed file per role, mode 0600:
``order_svc.nk``, ``payment_svc.nk``, ``inventory_svc.nk``, ``client.nk``, ``operator.nk``.
Neither file fixes a port or a store directory, so ``nats-server -c DIR/nats-server.conf -p
4222 -sd /var/lib/nats`` applies both. A cluster's node configuration includes
``permissions.conf`` beside its own ``cluster {}`` block. Run again, it keeps the keys it finds
(the configuration is rewritten: a new partition count needs new consumer names) unless told
``--rotate``; the replaced keys stay admitted until ``--drop-previous`` (docs/operations.md,
"Trust boundary").

The roles, least privilege first:

- each **service** publishes only the events it emits, its sub-steps, its dead letters, its
  lease and registry entries, and the JetStream API calls for its own streams and its own
  durable consumers (named one by one: a durable's name is one subject token, so no wildcard
  could stop a service from pulling another's); it subscribes only to its private inbox
  (``_INBOX_<service>``), its endpoints, micro discovery and its instances' heartbeats.
- **client** places and cancels orders and reads one (``api.orders.get``): nothing else.
- **operator** administers: deposits, restocks, republish, audit and repair, the DLQ tools,
  bench and chaos. It may do anything on the bus, so its key belongs on an operator's machine,
  never on an application host.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nkeys

from shared.consumer import consumer_durable
from shared.lease import LEASE_BUCKET, REGISTRY_BUCKET, kv_stream, kv_subject
from shared.partitions import MAX_PARTITIONS, Partitioning
from shared.service import ServiceDefinition, unit_consumers
from shared.settings import inbox_prefix_of
from shared.subjects import (
    API_ORDERS_GET,
    STREAM_SUBJECTS,
    EventType,
    Stream,
    dlq_subject,
)

ROLES = ("order_svc", "payment_svc", "inventory_svc", "client", "operator")
APPLICATION_PREFIX = "client-"
"""``client-<name>``: a client application with a key (and inbox prefix) of its own."""
APPLICATION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")

CLIENT_EVENTS = (EventType.ORDERS_REQUESTED, EventType.ORDERS_CANCEL_REQUESTED)
"""What an application may say on the bus: the two requests of a customer."""

MAX_PAYLOAD = 1024 * 1024
"""Our largest message is a batch of sub-steps (shared.steps) or a dead letter that quotes one:
well under 1 MiB. The server's default (1 MiB) is kept explicit so it is a decision."""

JS_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False


def service_definitions() -> dict[str, ServiceDefinition]:
    # Imported here: the services import shared, not the other way round at module load.
    from inventory_svc.__main__ import INVENTORY_SERVICE
    from order_svc.__main__ import ORDER_SERVICE
    from payment_svc.__main__ import PAYMENT_SERVICE

    return {d.name: d for d in (ORDER_SERVICE, PAYMENT_SERVICE, INVENTORY_SERVICE)}


def emitted_events(definition: ServiceDefinition) -> list[str]:
    """The saga events a service publishes: its domain's, less a client's requests."""
    domain = STREAM_SUBJECTS[definition.stream].split(".")[0]
    return [t.value for t in EventType if t.value.split(".")[0] == domain and t not in CLIENT_EVENTS]


def service_permissions(definition: ServiceDefinition, partitioning: Partitioning) -> Permissions:
    """Exactly what ``definition``'s processes need on the bus with ``partitioning``."""
    name = definition.name
    inbox = inbox_prefix_of(name)
    durables: set[tuple[str, str]] = set()
    for partition in partitioning.all():
        for spec, strays in unit_consumers(definition.consumers_for(partitioning), partitioning, partition):
            durables.add((spec.stream.value, consumer_durable(name, spec.stream, partitioning, partition, strays)))
    units = [partitioning.unit(name, p) for p in partitioning.all()]
    saga_streams = [s.value for s in Stream]
    kv_streams = [kv_stream(LEASE_BUCKET), kv_stream(REGISTRY_BUCKET)]
    owned = [s.value for s in definition.owned_streams]
    api = f"api.{definition.api_name}"
    publish = [
        *(f"{event}.*" for event in emitted_events(definition)),
        dlq_subject(name),
        f"{JS_API}.INFO",
        # Any service may create a stream it finds missing (start order is free), and reads
        # every stream's and bucket's settings; it applies settings only to its own.
        *(f"{JS_API}.STREAM.{verb}.{s}" for s in [*saga_streams, *kv_streams] for verb in ("INFO", "CREATE")),
        *(f"{JS_API}.STREAM.UPDATE.{s}" for s in owned),
        *(f"{JS_API}.STREAM.MSG.GET.{s}" for s in kv_streams),
        *(f"{JS_API}.DIRECT.GET.{s}.>" for s in kv_streams),
        *(f"{JS_API}.DIRECT.GET.{s}" for s in kv_streams),
        *(kv_subject(bucket, unit) for bucket in (LEASE_BUCKET, REGISTRY_BUCKET) for unit in units),
        f"saga.members.{name}",
        # The router forwards a request to the owner of its key's partition: ``<subject>.p<k>``.
        f"{api}.*.*",
    ]
    if definition.steps:
        publish.append(STREAM_SUBJECTS[definition.steps])
    if partitioning.partitioned:
        publish += [STREAM_SUBJECTS[stream] for stream in definition.feeds]
    for stream, durable in sorted(durables):
        publish += [
            f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}",
            f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}.>",
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"{JS_API}.CONSUMER.INFO.{stream}.{durable}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
        ]
    subscribe = [
        f"{inbox}.>",
        f"{api}.*",
        f"{api}.*.*",
        "$SRV.*",
        f"$SRV.*.{definition.api_name}",
        f"$SRV.*.{definition.api_name}.*",
        f"saga.members.{name}",
    ]
    return Permissions(tuple(publish), tuple(subscribe), allow_responses=True)


def client_permissions(role: str) -> Permissions:
    """An application's: place and cancel orders, read one; its replies on its own inbox prefix."""
    return Permissions(
        publish=(*(f"{event.value}.*" for event in CLIENT_EVENTS), API_ORDERS_GET),
        subscribe=(f"{inbox_prefix_of(role)}.>",),
    )


def role_permissions(partitioning: Partitioning, applications: Iterable[str] = ()) -> dict[str, Permissions | None]:
    """Every role's permissions; None: no restriction (operator). ``applications``: the
    ``client-<name>`` roles, each a client of its own (``saga-auth init --client NAME``)."""
    found: dict[str, Permissions | None] = {
        name: service_permissions(d, partitioning) for name, d in service_definitions().items()
    }
    for role in ("client", *applications):
        found[role] = client_permissions(role)
    found["operator"] = None
    return found


def _quoted(subjects: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in subjects) + "]"


def permissions_conf(public_keys: dict[str, list[str]], partitioning: Partitioning) -> str:
    applications = [role for role in public_keys if role.startswith(APPLICATION_PREFIX)]
    lines = [
        "# Written by saga-auth init: the saga's roles and what each may publish and subscribe.",
        f"# For PARTITIONS={partitioning.count}. Rewrite it (saga-auth init) when that changes.",
        "authorization {",
        "  users: [",
    ]
    for role, perms in role_permissions(partitioning, applications).items():
        for n, key in enumerate(public_keys[role]):
            lines.append(f"    # {role}" + (" (its previous key, until saga-auth init --drop-previous)" if n else ""))
            if perms is None:
                lines.append(f'    {{ nkey: "{key}" }}')
                continue
            responses = "\n        allow_responses: true" if perms.allow_responses else ""
            lines.append(
                f'    {{ nkey: "{key}"\n'
                f"      permissions: {{\n"
                f"        publish: {{ allow: {_quoted(perms.publish)} }}\n"
                f"        subscribe: {{ allow: {_quoted(perms.subscribe)} }}{responses}\n"
                f"      }}\n"
                f"    }}"
            )
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def server_conf() -> str:
    return (
        "# Written by saga-auth init. No port and no store directory here: give them on the command\n"
        "# line (nats-server -c nats-server.conf -p 4222 -sd /var/lib/nats), or in a file that\n"
        "# includes this one's parts.\n"
        "jetstream: enabled\n"
        f"max_payload: {MAX_PAYLOAD}\n"
        "include permissions.conf\n"
    )


def seed_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.nk"


def previous_seed_path(directory: Path, role: str) -> Path:
    return directory / f"{role}.nk.previous"


def _public_key(path: Path) -> str:
    return str(nkeys.from_seed(path.read_bytes().strip()).public_key.decode())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def applications_in(directory: Path) -> list[str]:
    """The ``client-<name>`` roles whose keys ``directory`` holds."""
    return sorted(p.name.removesuffix(".nk") for p in directory.glob(f"{APPLICATION_PREFIX}*.nk"))


def init(
    directory: Path,
    partitioning: Partitioning,
    rotate: bool = False,
    drop_previous: bool = False,
    add_clients: Iterable[str] = (),
    revoke_clients: Iterable[str] = (),
) -> dict[str, str]:
    """Write the server configuration and the roles' seeds into ``directory``; return each role's
    public key. Existing seeds are kept, unless ``rotate``: then each becomes ``<role>.nk.previous``,
    still admitted beside the new one, so processes can be restarted onto their new keys one at a
    time; ``drop_previous`` stops admitting (and deletes) the previous keys. ``add_clients``: new
    client applications (``client-<name>.nk``), kept from then on; ``revoke_clients``: their keys
    deleted and no longer admitted."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in [*add_clients, *revoke_clients]:
        if not APPLICATION_NAME.match(name):
            raise ValueError(f"client name {name!r}: lower-case letters, digits, - and _ only")
    for name in revoke_clients:
        for path in (
            seed_path(directory, APPLICATION_PREFIX + name),
            previous_seed_path(directory, APPLICATION_PREFIX + name),
        ):
            path.unlink(missing_ok=True)
    applications = sorted({*applications_in(directory), *(APPLICATION_PREFIX + n for n in add_clients)})
    public_keys: dict[str, list[str]] = {}
    for role in (*ROLES, *applications):
        path, previous = seed_path(directory, role), previous_seed_path(directory, role)
        if drop_previous:
            previous.unlink(missing_ok=True)
        if rotate and path.exists():
            path.replace(previous)
        if not path.exists():
            _write_private(path, nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER) + b"\n")
        public_keys[role] = [_public_key(path), *([_public_key(previous)] if previous.exists() else [])]
    (directory / "permissions.conf").write_text(permissions_conf(public_keys, partitioning))
    (directory / "nats-server.conf").write_text(server_conf())
    return {role: keys[0] for role, keys in public_keys.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-auth", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    init_cmd = sub.add_parser("init", help="write DIR/nats-server.conf, DIR/permissions.conf and a seed per role")
    init_cmd.add_argument("directory", type=Path)
    init_cmd.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("PARTITIONS") or 1),
        help="the deployment's PARTITIONS: each partition's consumers are named in the permissions",
    )
    once = init_cmd.add_mutually_exclusive_group()
    once.add_argument(
        "--rotate",
        action="store_true",
        help="a new key for every role; the previous ones stay admitted until --drop-previous (docs/operations.md)",
    )
    once.add_argument("--drop-previous", action="store_true", help="stop admitting the keys --rotate replaced")
    init_cmd.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="a client application with its own key, client-NAME.nk, and inbox prefix _INBOX_client-NAME",
    )
    init_cmd.add_argument(
        "--revoke-client", action="append", default=[], metavar="NAME", help="delete client-NAME's key"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.partitions <= MAX_PARTITIONS:
        parser.error(f"--partitions must be 1..{MAX_PARTITIONS}")
    try:
        keys = init(
            args.directory,
            Partitioning(args.partitions),
            rotate=args.rotate,
            drop_previous=args.drop_previous,
            add_clients=args.client,
            revoke_clients=args.revoke_client,
        )
    except ValueError as exc:
        parser.error(str(exc))
    for role, key in keys.items():
        print(f"{role:20} {key}  {seed_path(args.directory, role)}")
    print(f"server: nats-server -c {args.directory / 'nats-server.conf'} -p 4222 -sd <store dir>", file=sys.stderr)


if __name__ == "__main__":
    main()
