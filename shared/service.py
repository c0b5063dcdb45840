"""The lifecycle every service shares: settings once, signals, connect, ensure, run, drain.

SIGTERM/SIGINT: stop fetching, finish the batch in hand, stop the API, flush the outbox and
the acks, close the store, give up the lease, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.service import ServiceConfig

from shared import metrics, registry, tracing
from shared.aio import forward, retrying, sleep_unless_stopped
from shared.api import Endpoint, RepublishRequest, json_endpoint, sum_of
from shared.balance import Membership, decide
from shared.connection import RefusedByServer, connect, denied
from shared.consumer import BatchLoop, Consumer, ConsumerSpec
from shared.jetstream import Publisher
from shared.lease import Holder, Lease, LeaseLost, ensure_buckets
from shared.lease import read as lease_read
from shared.logging import configure_logging, get_logger
from shared.outbox import Relay, requeue
from shared.partitions import UNPARTITIONED, Partitioning
from shared.retention import check_retention, run_pruning
from shared.routing import partition_subject, routed
from shared.runtime import tune_gc
from shared.settings import Settings, SettingsError
from shared.store import Store, WriterLock
from shared.streams import START_DEADLINE_S, StreamSetupError, ensure_streams
from shared.subjects import PUBLIC_STREAMS, Stream, event_subject

log = get_logger("service")

SHUTDOWN_FLUSH_S = 3
"""How long shutdown waits for the outbox to empty before leaving the rest for the next start."""
STARTUP_FLUSH_S = 10
MEMBERS_SETTLE_S = 0.5
"""How long a starting instance listens for the other members before taking partitions."""
"""How long start-up waits for the server to confirm the API's subscriptions."""


@dataclass(frozen=True)
class ServiceContext:
    """What a running service hands to its endpoints and background tasks."""

    settings: Settings
    store: Store
    relay: Relay
    partition: int = 0
    """The partition this context's store holds (0 when unpartitioned)."""


@dataclass(frozen=True)
class ServiceDefinition:
    """Everything that makes one service itself; the rest is this shared lifecycle."""

    name: str
    """Process and consumer name, e.g. ``order_svc``."""
    api_name: str
    """The NATS micro service name, e.g. ``orders``."""
    description: str
    stream: Stream
    """The stream of the events this service emits: it owns that stream's settings (shared.streams)."""
    schema: str
    consumers: Sequence[ConsumerSpec] | Callable[[Partitioning], Sequence[ConsumerSpec]]
    """Its durable consumers; a function of the partitioning when partitions change them (sub-steps)."""
    endpoints: Callable[[ServiceContext], Sequence[Endpoint]]
    """Its request endpoints. Partitioned, also called once with no context, to route its
    documented subjects (``public_endpoints``): a handler may use the context, not its making."""
    background: Callable[[ServiceContext, asyncio.Event], Sequence[Coroutine[Any, Any, None]]] = field(
        default=lambda ctx, stop: ()
    )
    steps: Stream | None = None
    """The stream of its sub-steps between its own partitions, if it has any (only made partitioned)."""
    feeds: tuple[Stream, ...] = ()
    """Partitioned, the other services' step streams it writes to (order_svc: payment_svc's)."""
    requeue_fed: Callable[[Partitioning, sqlite3.Connection, str, str], int] = field(
        default=lambda partitioning, tx, event_type, order_id: 0
    )
    """Partitioned, for a repair's re-send of its event ``event_type`` about ``order_id``: queue
    again, in ``tx``, what it sent along with that event to its ``feeds``; how many rows."""
    migrate: Callable[[sqlite3.Connection], None] | None = None
    """Brings a store of an earlier version of the service up to date (``Store.open``)."""
    check_settings: Callable[[Settings], None] = field(default=lambda settings: None)
    """Its own word on the settings, once per process at start (logging is set up by then):
    raise SettingsError to refuse them, or log a warning."""
    version: str = "0.1.0"

    def consumers_for(self, partitioning: Partitioning) -> Sequence[ConsumerSpec]:
        return self.consumers(partitioning) if callable(self.consumers) else self.consumers

    @property
    def owned_streams(self) -> frozenset[Stream]:
        """The streams whose settings this service applies (shared.streams)."""
        return frozenset({self.stream, Stream.DLQ, *([self.steps] if self.steps else [])})


def main(definition: ServiceDefinition) -> None:
    """Console entry point: read settings once, run until SIGTERM/SIGINT, exit 0."""
    try:
        settings = Settings.from_env(definition.name)
        check_retention(settings)
        configure_logging(definition.name, settings.log_format, settings.log_level)
        definition.check_settings(settings)
    except SettingsError as exc:
        print(f"{definition.name}: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    tracing.configure(settings.traces_exporter, settings.traces_service_name, f"{socket.gethostname()}:{os.getpid()}")
    tune_gc()
    try:
        code = asyncio.run(serve(definition, settings))
    except StreamSetupError as exc:
        print(f"{definition.name}: cannot start: {exc}", file=sys.stderr)
        code = 2
    except RefusedByServer as exc:
        print(f"{definition.name}: cannot connect: {exc}", file=sys.stderr)
        code = 2
    finally:
        tracing.shutdown()
    raise SystemExit(code)


EXIT_NOT_THE_REGISTERED_STORE = 3
"""Exit code of an instance whose DATA_DIR does not hold its service's registered store."""


async def serve(
    definition: ServiceDefinition,
    settings: Settings,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
) -> int:
    """Run ``definition`` until ``stop`` is set (or a signal arrives); set ``started`` once writing.

    The service's state is ``PARTITIONS`` partitions (shared.partitions), one file each. An
    instance writes a partition only with its registered store (shared.registry) and its lease
    (shared.lease); it takes and hands over partitions to spread them evenly over the live
    instances (shared.balance). An instance that owns none is a standby. Returns the process exit
    code: 0 after a requested stop, 1 if a worker died by itself, 3 if DATA_DIR holds none of the
    registered stores.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not possible off the main thread (e.g. a service run in-process by a test).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    log.info(
        "service.starting",
        nats_url=settings.nats_url,
        db=str(settings.db_path),
        partitions=settings.partitions,
        credentials=settings.credentials.describe(),
        traces=settings.traces_exporter,
    )
    if settings.metrics_addr is not None:
        try:
            host, port = metrics.serve(*settings.metrics_addr)
        except OSError as exc:
            print(f"{settings.service}: cannot serve metrics on METRICS_ADDR: {exc}", file=sys.stderr, flush=True)
            return 2
        log.info("metrics.serving", url=f"http://{_url_host(host)}:{port}/metrics")
    nc = await _connect(settings, stop)
    if nc is None:  # stopped before NATS was ever reachable
        return 0
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.stream_settings, owned=definition.owned_streams)
        units, refusals = await _claim_units(js, settings)
        if not units:
            for reason in refusals:
                log.critical("store.not_registered", reason=reason)
            print(f"{settings.service}: refusing to run: {refusals[0]}", file=sys.stderr, flush=True)
            return EXIT_NOT_THE_REGISTERED_STORE
        for reason in refusals:
            log.warning("partition.not_eligible", reason=reason)
        instance = Instance(definition, settings, nc, units, stop, started)
        return await instance.run()
    finally:
        # Not nc.drain(): it waits for pull subscriptions' queues, which fetch() never marks
        # done. Every message in hand is already settled, so flushing the acks is enough.
        try:
            await nc.flush(timeout=SHUTDOWN_FLUSH_S)
        except Exception as exc:
            log.warning("nats.flush_failed", error=repr(exc))
        await nc.close()
        log.info("service.stopped")


@dataclass(frozen=True)
class Unit:
    """One partition of the service, as this instance can own it: its names and its file."""

    partition: int
    key: str
    """Its lease and registry key: the service's name, or ``<service>.p<k>``."""
    db_path: Path
    store_id: str


async def _claim_units(js: JetStreamContext, settings: Settings) -> tuple[dict[int, Unit], list[str]]:
    """The partitions whose registered store this DATA_DIR holds (registering new ones), and why not the rest."""
    await retrying(
        functools.partial(ensure_buckets, js, settings.stream_replicas),
        deadline_s=START_DEADLINE_S,
        on_error=lambda exc, attempt: log.warning("store.claim_retrying", error=repr(exc), attempt=attempt),
    )
    units: dict[int, Unit] = {}
    refusals: list[str] = []
    for partition in settings.owned_partitions:
        key = settings.partitioning.unit(settings.service, partition)
        path = settings.unit_db_path(partition)
        try:
            store_id = await retrying(
                functools.partial(registry.claim, js, key, path, settings.service, settings.sqlite_busy_timeout_ms),
                deadline_s=START_DEADLINE_S,
                on_error=lambda exc, attempt: log.warning("store.claim_retrying", error=repr(exc), attempt=attempt),
                fatal=(registry.NotTheRegisteredStore,),
            )
        except registry.NotTheRegisteredStore as exc:
            refusals.append(str(exc))
            continue
        units[partition] = Unit(partition, key, path, store_id)
    return units, refusals


class Instance:
    """This process's share of the service: the partitions it owns, each in a term of its own."""

    def __init__(
        self,
        definition: ServiceDefinition,
        settings: Settings,
        nc: Client,
        units: dict[int, Unit],
        stop: asyncio.Event,
        started: asyncio.Event | None,
    ) -> None:
        self.definition = definition
        self.settings = settings
        self.nc = nc
        self.js = nc.jetstream()
        self.units = units
        self.stop = stop
        self.started = started
        self.holder = Holder.this_process(",".join(u.store_id for u in units.values()))
        self.membership = Membership(nc, settings.service, self.holder, frozenset(units), settings.lease_ttl_s)
        self.terms: dict[int, Term] = {}
        self.exit_code: int | None = None
        self._ended = asyncio.Event()

    async def run(self) -> int:
        partitioning = self.settings.partitioning
        await self.membership.start()
        beating = asyncio.create_task(self.membership.run(self.stop), name="heartbeat")
        router = None
        standby = None
        if partitioning.partitioned:
            router = await _announce_router(self.nc, self.definition, self.settings, self.holder)
        poll_s = min(1.0, self.settings.lease_ttl_s / 4)
        announced: dict[int, str] = {}
        # Hear the members already there (they answer a newcomer's first beat) before taking
        # anything, rather than taking every partition only to hand most of them over.
        await sleep_unless_stopped(self.stop, MEMBERS_SETTLE_S)
        try:
            while not self.stop.is_set():
                if not self.terms and standby is None and not partitioning.partitioned:
                    standby = await _announce(self.nc, self.definition, self.holder, "standby")
                await self._step(announced)
                if self.terms and standby is not None:
                    await standby.stop()
                    standby = None
                self._ended.clear()
                await _wait_any(self.stop, self._ended, timeout=poll_s)
        finally:
            await self.membership.leave()  # first: the others may take what this hands over at once
            for term in self.terms.values():
                term.end.set()
            await asyncio.gather(*(t.task for t in self.terms.values() if t.task), return_exceptions=True)
            self.stop.set()
            await asyncio.gather(beating, return_exceptions=True)
            await self.membership.close()
            for micro in (router, standby):
                if micro is not None:
                    await micro.stop()
        return self.exit_code or 0

    async def _step(self, announced: dict[int, str]) -> None:
        """One look at the leases and the members: take a free partition, or hand one over."""
        free: list[int] = []
        for partition in self.units:
            if partition in self.terms:
                continue
            try:
                held = await lease_read(self.js, self.units[partition].key)
            except Exception as exc:  # NATS away, the bucket's leader being elected
                log.warning("lease.read_failed", key=self.units[partition].key, error=repr(exc))
                return
            if held.holder is None or self.holder.is_dead_predecessor(held.holder):
                free.append(partition)
            elif announced.get(partition) != held.holder.instance:
                announced[partition] = held.holder.instance
                log.info(
                    "lease.standing_by", key=self.units[partition].key, holder=held.holder.__dict__, epoch=held.epoch
                )
        decision = decide(self.membership.me(), self.membership.live(), free)
        if decision.hand_over is not None:
            term = self.terms.get(decision.hand_over)
            if term is not None and not term.end.is_set():
                log.info("partition.handing_over", partition=decision.hand_over, owned=sorted(self.terms))
                term.handed_over = True
                term.end.set()
        elif decision.take:
            for partition in free:
                if (
                    await self._try_take(partition)
                    and not decide(
                        self.membership.me(), self.membership.live(), [p for p in free if p not in self.terms]
                    ).take
                ):
                    break

    async def _try_take(self, partition: int) -> bool:
        unit = self.units[partition]
        lease = Lease(
            self.js, unit.key, dataclasses.replace(self.holder, store=unit.store_id), self.settings.lease_ttl_s
        )
        try:
            await lease.try_acquire()
        except Exception as exc:
            log.warning("lease.acquire_failed", key=unit.key, error=repr(exc))
            return False
        if lease.epoch is None:
            return False
        log.info("lease.acquired", key=unit.key, epoch=lease.epoch, ttl_s=lease.ttl_s)
        term = Term(unit, lease)
        term.task = asyncio.create_task(self._run_term(term), name=f"partition-{partition}")
        self.terms[partition] = term
        self.membership.owned.add(partition)
        await self.membership.beat()
        return True

    async def _run_term(self, term: Term) -> None:
        try:
            outcome = await _write(self, term)
        except Exception as exc:
            log.critical("service.worker_died", task=f"partition-{term.unit.partition}", error=repr(exc))
            outcome = 1
        finally:
            self.terms.pop(term.unit.partition, None)
            self.membership.owned.discard(term.unit.partition)
            self._ended.set()
        if outcome == 1:  # a worker died, or the store was replaced: the whole process exits
            self.exit_code = 1
            self.stop.set()
            return
        if outcome is None:
            log.warning("service.standing_by_again", key=term.unit.key, epoch=term.lease.epoch)
        await self.membership.beat()


@dataclass
class Term:
    """One partition owned under one lease epoch."""

    unit: Unit
    lease: Lease
    end: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to end the term cleanly: a stop, or a hand-over to another instance."""
    handed_over: bool = False
    task: asyncio.Task[None] | None = None


async def _wait_any(stop: asyncio.Event, ended: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(ended.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _announce(
    nc: Client,
    definition: ServiceDefinition,
    holder: Holder,
    role: str,
    epoch: int | None = None,
    partition: str = "",
) -> Any:
    """This instance in ``nats micro ls``: a writer of a partition (with its endpoints) or a standby (none)."""
    where = f" of {partition}" if partition else ""
    detail = f"writer{where}, lease epoch {epoch}" if role == "writer" else "standby, waiting for the lease"
    return await add_service(
        nc,
        ServiceConfig(
            name=definition.api_name,
            version=definition.version,
            description=f"{definition.description} [{detail}]",
            metadata={
                "role": role,
                "epoch": str(epoch or ""),
                "instance": holder.instance,
                "store": holder.store,
                "partition": partition,
            },
        ),
    )


async def _announce_router(nc: Client, definition: ServiceDefinition, settings: Settings, holder: Holder) -> Any:
    """A partitioned service's public endpoints on this instance: each request goes to the owner of
    its key, or to every partition (shared.routing)."""
    micro = await add_service(
        nc,
        ServiceConfig(
            name=definition.api_name,
            version=definition.version,
            description=f"{definition.description} [instance {holder.instance}: routes requests to"
            f" the owners of its {settings.partitions} partitions]",
            metadata={"role": "router", "instance": holder.instance, "partitions": str(settings.partitions)},
        ),
    )
    for endpoint in public_endpoints(definition):
        await micro.add_endpoint(
            name=endpoint.name, subject=endpoint.subject, handler=routed(nc, endpoint, settings.partitioning).handler
        )
    await nc.flush(timeout=STARTUP_FLUSH_S)
    return micro


def unit_consumers(
    specs: Sequence[ConsumerSpec], partitioning: Partitioning, partition: int
) -> list[tuple[ConsumerSpec, bool]]:
    """The consumers a partition's writer runs, each with whether it is a strays consumer."""
    plan = [(spec, False) for spec in specs]
    if partitioning.partitioned and partition == 0:
        # Partition 0's owner also dead-letters what the streams' transforms left unrenamed.
        plan += [(spec, True) for spec in specs if spec.stream in PUBLIC_STREAMS]
    return plan


def public_endpoints(definition: ServiceDefinition) -> list[Endpoint]:
    """Every endpoint the service declares, for its name, subject and routing only: made without a
    context (a router owns no store), so their handlers are never called."""
    return [*definition.endpoints(None), _republish_endpoint(definition, None, None, UNPARTITIONED)]  # type: ignore[arg-type]


async def _write(instance: Instance, term: Term) -> int | None:
    """One term as a partition's writer: until ``term.end`` (returns 0), a worker's death
    (returns 1), or the lease's loss (returns None: the partition is free again)."""
    lease = term.lease
    ending = asyncio.Event()  # the end of this term: a stop, a hand-over, or the lease lost
    renewing = asyncio.create_task(lease.keep(ending), name="lease")
    lock = WriterLock(term.unit.db_path)
    async with forward(term.end, ending), forward(lease.lost, ending):
        try:
            if not await _lock_file(lock, lease, ending):
                return 0 if term.end.is_set() else None
            try:
                return await _write_locked(instance, term, ending)
            except LeaseLost as exc:  # a newer epoch wrote the file before we could open it
                log.warning("store.fenced_at_open", reason=str(exc))
                return None
            finally:
                lock.release()
        finally:
            ending.set()
            await asyncio.gather(renewing, return_exceptions=True)
            if term.end.is_set():
                await lease.release()  # the next owner takes over now, not after the lease expires


async def _lock_file(lock: WriterLock, lease: Lease, term: asyncio.Event) -> bool:
    """Take the file's writer lock, waiting while another process still holds it (a writer
    paused past its lease holds it until it resumes and steps down, or dies)."""
    announced = False
    while not lock.try_lock(f"{lease.holder.instance} pid {lease.holder.pid} epoch {lease.epoch}"):
        if not announced:
            log.warning("store.waiting_for_file_lock", path=str(lock.path), held_by=lock.holder(), epoch=lease.epoch)
            announced = True
        if await sleep_unless_stopped(term, 0.2):
            return False
    return True


async def _write_locked(instance: Instance, term: Term, ending: asyncio.Event) -> int | None:
    definition, settings, nc = instance.definition, instance.settings, instance.nc
    lease, unit = term.lease, term.unit
    partitioning = settings.partitioning
    store = await Store.open(
        unit.db_path,
        definition.schema,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        lease=lease,
        migrate=definition.migrate,
    )
    failed = False
    try:
        publisher = Publisher(nc)
        await publisher.start()
        relay = Relay(store, publisher)
        ctx = ServiceContext(settings, store, relay, unit.partition)
        specs = definition.consumers_for(partitioning)

        def consumer(spec: ConsumerSpec, strays: bool = False) -> Consumer:
            return Consumer(
                service=settings.service,
                spec=spec,
                nc=nc,
                batch_size=settings.fetch_batch,
                max_deliveries=settings.max_deliveries,
                partitioning=partitioning,
                partition=unit.partition,
                strays=strays,
            )

        consumers = [consumer(spec, strays) for spec, strays in unit_consumers(specs, partitioning, unit.partition)]
        batch_loop = BatchLoop(nc, consumers, store, relay)
        await batch_loop.start()
        where = partitioning.label(unit.partition) if partitioning.partitioned else ""
        micro = await _announce(nc, definition, lease.holder, role="writer", epoch=lease.epoch, partition=where)
        for endpoint in [*definition.endpoints(ctx), _republish_endpoint(definition, store, relay, partitioning)]:
            subject = partition_subject(endpoint.subject, partitioning, unit.partition)
            await micro.add_endpoint(name=endpoint.name, subject=subject, handler=endpoint.handler)
        # The endpoints' SUBs sit in the client's write buffer until its flusher runs, and the
        # server reads each connection on its own, so a request from another connection could
        # still meet "no responders" after we say started. A PING/PONG round trip means the
        # server has registered every SUB before it: "service.started" then means "answering".
        await nc.flush(timeout=STARTUP_FLUSH_S)

        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(relay_stop), name="relay")
        work = [asyncio.create_task(batch_loop.run(ending), name="consumers")]
        work += [asyncio.create_task(coro, name="background") for coro in definition.background(ctx, ending)]
        work.append(asyncio.create_task(run_pruning(store, settings, ending), name="pruning"))
        replaced = asyncio.create_task(
            registry.watch(nc.jetstream(), unit.key, unit.store_id, ending, lease.renew_every_s),
            name="registration",
        )
        log.info(
            "service.started",
            consumers=[c.name for c in batch_loop.consumers],
            epoch=lease.epoch,
            partition=unit.partition,
        )
        if instance.started is not None:
            instance.started.set()

        waiting = asyncio.create_task(ending.wait())
        with metrics.LIVE_GAUGES.reading(functools.partial(_term_gauges, settings, unit, relay, batch_loop)):
            await asyncio.wait([waiting, relay_task, replaced, *work], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        crashed = [t for t in (relay_task, *work) if t.done()]
        if replaced.done() and replaced.result():
            log.critical("store.no_longer_registered", reason=replaced.result())
            failed = True
        elif crashed and not ending.is_set():
            # A worker ended by itself: a bug. Exit non-zero so a supervisor restarts the
            # process, rather than running on with a consumer or the relay missing.
            for task in crashed:
                error = "cancelled" if task.cancelled() else repr(task.exception())
                log.critical("service.worker_died", task=task.get_name(), error=error)
            failed = True
        lost = lease.lost.is_set() and not term.end.is_set()
        log.info("service.stopping", lease_lost=lost, partition=unit.partition, handed_over=term.handed_over)
        ending.set()
        # Consumers finish the batch in hand (a writer that lost its lease commits none of it).
        await asyncio.gather(*work, replaced, return_exceptions=True)
        await micro.stop()
        if not lost:
            await _flush_outbox(relay)
        relay_stop.set()
        await asyncio.gather(relay_task, return_exceptions=True)
        if lost and not failed:
            return None
    finally:
        await store.close()
    return 1 if failed else 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _term_gauges(
    settings: Settings, unit: Unit, relay: Relay, batch_loop: BatchLoop
) -> list[tuple[str, dict[str, str], float]]:
    """A scrape's look at one partition this instance writes: its outbox and its consumers."""
    of_partition = {"service": settings.service, "partition": str(unit.partition)}
    samples: list[tuple[str, dict[str, str], float]] = [
        ("saga_partition_owned", of_partition, 1.0),
        ("saga_outbox_backlog", of_partition, float(await relay.pending_count())),
    ]
    for consumer in batch_loop.consumers:
        info = await consumer.info(timeout=metrics.SCRAPE_READ_TIMEOUT_S / 2)
        of_consumer = {"service": settings.service, "consumer": consumer.name}
        samples.append(("saga_consumer_pending", of_consumer, float(info.num_pending or 0)))
        samples.append(("saga_consumer_ack_pending", of_consumer, float(info.num_ack_pending or 0)))
    return samples


def _republish_endpoint(
    definition: ServiceDefinition, store: Store, relay: Relay, partitioning: Partitioning
) -> Endpoint:
    """``api.<name>.republish``: send again what this service emitted about an order (repair)."""

    async def republish(req: RepublishRequest) -> dict[str, Any]:
        queued = await requeue(store, event_subject(req.type, req.order_id))
        if queued and partitioning.partitioned:
            queued += await store.run(lambda tx: definition.requeue_fed(partitioning, tx, req.type, req.order_id))
        relay.wake()
        log.warning("outbox.requeued", order_id=req.order_id, event_type=req.type, rows=queued)
        return {"order_id": req.order_id, "type": req.type, "republished": queued}

    return json_endpoint(
        "republish", f"api.{definition.api_name}.republish", RepublishRequest, republish, sum_of("republished")
    )


async def _flush_outbox(relay: Relay) -> None:
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_FLUSH_S
    while asyncio.get_running_loop().time() < deadline:
        try:
            if await relay.publish_pending() == 0:
                await relay.landed(timeout_s=max(deadline - asyncio.get_running_loop().time(), 0.0))
                await relay.save_watermark()
                return
        except Exception as exc:
            log.warning("outbox.flush_failed", error=repr(exc), left=await relay.pending_count())
            return


async def _connect(settings: Settings, stop: asyncio.Event) -> Client | None:
    """Connect, retrying forever until NATS answers or ``stop`` is set."""

    async def on_error(exc: Exception) -> None:
        if denied(exc):
            # A publish or subscribe outside this service's permissions (shared.ops.auth): a
            # deployment error, never retried into success, so said as loudly as it is.
            log.error("nats.permission_denied", error=str(exc))
        else:
            log.warning("nats.error", error=repr(exc))

    async def on_disconnected() -> None:
        log.warning("nats.disconnected")

    async def on_reconnected() -> None:
        log.info("nats.reconnected")

    connecting = asyncio.create_task(
        connect(
            settings.nats_url,
            settings.credentials,
            name=settings.service,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1.0,
            connect_timeout=2.0,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
    )
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not connecting.done():
        connecting.cancel()
        return None
    return connecting.result()
