"""The lifecycle every service shares: settings once, signals, connect, ensure, run, drain.

SIGTERM/SIGINT: stop fetching, finish the batch in hand, stop the API, flush the outbox and
the acks, close the store, give up the lease, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.service import ServiceConfig

from shared import registry
from shared.aio import forward, retrying, sleep_unless_stopped
from shared.api import Endpoint, RepublishRequest, json_endpoint
from shared.connection import connect
from shared.consumer import BatchLoop, Consumer, ConsumerSpec
from shared.jetstream import Publisher
from shared.lease import Holder, Lease, LeaseLost, ensure_buckets
from shared.logging import configure_logging, get_logger
from shared.outbox import Relay, requeue
from shared.retention import check_retention, run_pruning
from shared.runtime import tune_gc
from shared.settings import Settings, SettingsError
from shared.store import Store, WriterLock
from shared.streams import START_DEADLINE_S, StreamSetupError, ensure_streams
from shared.subjects import Stream, event_subject

log = get_logger("service")

SHUTDOWN_FLUSH_S = 3
"""How long shutdown waits for the outbox to empty before leaving the rest for the next start."""
STARTUP_FLUSH_S = 10
"""How long start-up waits for the server to confirm the API's subscriptions."""


@dataclass(frozen=True)
class ServiceContext:
    """What a running service hands to its endpoints and background tasks."""

    settings: Settings
    store: Store
    relay: Relay


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
    consumers: Sequence[ConsumerSpec]
    endpoints: Callable[[ServiceContext], Sequence[Endpoint]]
    background: Callable[[ServiceContext, asyncio.Event], Sequence[Coroutine[Any, Any, None]]] = field(
        default=lambda ctx, stop: ()
    )
    version: str = "0.1.0"


def main(definition: ServiceDefinition) -> None:
    """Console entry point: read settings once, run until SIGTERM/SIGINT, exit 0."""
    try:
        settings = Settings.from_env(definition.name)
        check_retention(settings)
    except SettingsError as exc:
        print(f"{definition.name}: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(definition.name, settings.log_format, settings.log_level)
    tune_gc()
    try:
        code = asyncio.run(serve(definition, settings))
    except StreamSetupError as exc:
        print(f"{definition.name}: cannot start: {exc}", file=sys.stderr)
        code = 2
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

    An instance writes only with its service's registered store (shared.registry) and its lease
    (shared.lease); until it has the lease it is a standby that answers no request. A writer
    that loses its lease goes back to standing by. Returns the process exit code: 0 after a
    requested stop, 1 if a worker died by itself, 3 if DATA_DIR holds the wrong store.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not possible off the main thread (e.g. a service run in-process by a test).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    log.info("service.starting", nats_url=settings.nats_url, db=str(settings.db_path))
    nc = await _connect(settings, stop)
    if nc is None:  # stopped before NATS was ever reachable
        return 0
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.stream_settings, owned=frozenset({definition.stream, Stream.DLQ}))
        try:
            store_id = await retrying(
                functools.partial(_claim_store, js, settings),
                deadline_s=START_DEADLINE_S,
                on_error=lambda exc, attempt: log.warning("store.claim_retrying", error=repr(exc), attempt=attempt),
                fatal=(registry.NotTheRegisteredStore,),
            )
        except registry.NotTheRegisteredStore as exc:
            log.critical("store.not_registered", reason=str(exc))
            print(f"{settings.service}: refusing to run: {exc}", file=sys.stderr, flush=True)
            return EXIT_NOT_THE_REGISTERED_STORE
        holder = Holder.this_process(store_id)
        while not stop.is_set():
            lease = Lease(js, settings.service, holder, settings.lease_ttl_s)
            standby = await _announce(nc, definition, holder, role="standby")
            try:
                acquired = await lease.acquire(stop)
            finally:
                await standby.stop()
            if not acquired:
                break
            outcome = await _write(definition, settings, nc, lease, stop, started)
            if outcome is not None:
                return outcome
            log.warning("service.standing_by_again", epoch=lease.epoch)
        return 0
    finally:
        # Not nc.drain(): it waits for pull subscriptions' queues, which fetch() never marks
        # done. Every message in hand is already settled, so flushing the acks is enough.
        try:
            await nc.flush(timeout=SHUTDOWN_FLUSH_S)
        except Exception as exc:
            log.warning("nats.flush_failed", error=repr(exc))
        await nc.close()
        log.info("service.stopped")


async def _claim_store(js: JetStreamContext, settings: Settings) -> str:
    """The lease and registry buckets, and this instance's store as the registered one."""
    await ensure_buckets(js, settings.stream_replicas)
    return await registry.claim(
        js, settings.service, settings.db_path, settings.service, settings.sqlite_busy_timeout_ms
    )


async def _announce(
    nc: Client, definition: ServiceDefinition, holder: Holder, role: str, epoch: int | None = None
) -> Any:
    """This instance in ``nats micro ls``: a writer (with its endpoints) or a standby (none)."""
    detail = f"writer, lease epoch {epoch}" if role == "writer" else "standby, waiting for the lease"
    return await add_service(
        nc,
        ServiceConfig(
            name=definition.api_name,
            version=definition.version,
            description=f"{definition.description} [{detail}]",
            metadata={"role": role, "epoch": str(epoch or ""), "instance": holder.instance, "store": holder.store},
        ),
    )


async def _write(
    definition: ServiceDefinition,
    settings: Settings,
    nc: Client,
    lease: Lease,
    stop: asyncio.Event,
    started: asyncio.Event | None,
) -> int | None:
    """One term as the writer, under ``lease``: until ``stop`` (returns 0), a worker's death
    (returns 1), or the lease's loss (returns None: stand by again)."""
    term = asyncio.Event()  # the end of this term: a stop or the lease lost
    renewing = asyncio.create_task(lease.keep(term), name="lease")
    lock = WriterLock(settings.db_path)
    async with forward(stop, term), forward(lease.lost, term):
        try:
            if not await _lock_file(lock, lease, term):
                return 0 if stop.is_set() else None
            try:
                return await _write_locked(definition, settings, nc, lease, stop, term, started)
            except LeaseLost as exc:  # a newer epoch wrote the file before we could open it
                log.warning("store.fenced_at_open", reason=str(exc))
                return None
            finally:
                lock.release()
        finally:
            term.set()
            await asyncio.gather(renewing, return_exceptions=True)
            if stop.is_set():
                await lease.release()  # a standby takes over now, not after the lease expires


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


async def _write_locked(
    definition: ServiceDefinition,
    settings: Settings,
    nc: Client,
    lease: Lease,
    stop: asyncio.Event,
    term: asyncio.Event,
    started: asyncio.Event | None,
) -> int | None:
    store = await Store.open(
        settings.db_path,
        definition.schema,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        lease=lease,
    )
    failed = False
    try:
        publisher = Publisher(nc)
        await publisher.start()
        relay = Relay(store, publisher)
        ctx = ServiceContext(settings, store, relay)
        batch_loop = BatchLoop(
            nc,
            [
                Consumer(
                    service=settings.service,
                    spec=spec,
                    nc=nc,
                    batch_size=settings.fetch_batch,
                    max_deliveries=settings.max_deliveries,
                )
                for spec in definition.consumers
            ],
            store,
            relay,
        )
        await batch_loop.start()
        micro = await _announce(nc, definition, lease.holder, role="writer", epoch=lease.epoch)
        for endpoint in [*definition.endpoints(ctx), _republish_endpoint(definition, store, relay)]:
            await micro.add_endpoint(name=endpoint.name, subject=endpoint.subject, handler=endpoint.handler)
        # The endpoints' SUBs sit in the client's write buffer until its flusher runs, and the
        # server reads each connection on its own, so a request from another connection could
        # still meet "no responders" after we say started. A PING/PONG round trip means the
        # server has registered every SUB before it: "service.started" then means "answering".
        await nc.flush(timeout=STARTUP_FLUSH_S)

        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(relay_stop), name="relay")
        work = [asyncio.create_task(batch_loop.run(term), name="consumers")]
        work += [asyncio.create_task(coro, name="background") for coro in definition.background(ctx, term)]
        work.append(asyncio.create_task(run_pruning(store, settings, term), name="pruning"))
        replaced = asyncio.create_task(
            registry.watch(nc.jetstream(), settings.service, lease.holder.store, term, lease.renew_every_s),
            name="registration",
        )
        log.info("service.started", consumers=[c.name for c in batch_loop.consumers], epoch=lease.epoch)
        if started is not None:
            started.set()

        ending = asyncio.create_task(term.wait())
        await asyncio.wait([ending, relay_task, replaced, *work], return_when=asyncio.FIRST_COMPLETED)
        ending.cancel()
        crashed = [t for t in (relay_task, *work) if t.done()]
        if replaced.done() and replaced.result():
            log.critical("store.no_longer_registered", reason=replaced.result())
            stop.set()
            failed = True
        elif crashed and not term.is_set():
            # A worker ended by itself: a bug. Exit non-zero so a supervisor restarts the
            # process, rather than running on with a consumer or the relay missing.
            for task in crashed:
                error = "cancelled" if task.cancelled() else repr(task.exception())
                log.critical("service.worker_died", task=task.get_name(), error=error)
            stop.set()
            failed = True
        lost = lease.lost.is_set() and not stop.is_set()
        log.info("service.stopping", lease_lost=lost)
        term.set()
        # Consumers finish the batch in hand (a writer that lost its lease commits none of it).
        await asyncio.gather(*work, replaced, return_exceptions=True)
        await micro.stop()
        if not lost:
            await _flush_outbox(relay)
        relay_stop.set()
        await asyncio.gather(relay_task, return_exceptions=True)
        if lost:
            return None
    finally:
        await store.close()
    return 1 if failed else 0


def _republish_endpoint(definition: ServiceDefinition, store: Store, relay: Relay) -> Endpoint:
    """``api.<name>.republish``: send again what this service emitted about an order (repair)."""

    async def republish(req: RepublishRequest) -> dict[str, Any]:
        queued = await requeue(store, event_subject(req.type, req.order_id))
        relay.wake()
        log.warning("outbox.requeued", order_id=req.order_id, event_type=req.type, rows=queued)
        return {"order_id": req.order_id, "type": req.type, "republished": queued}

    return json_endpoint("republish", f"api.{definition.api_name}.republish", RepublishRequest, republish)


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
        log.warning("nats.error", error=repr(exc))

    async def on_disconnected() -> None:
        log.warning("nats.disconnected")

    async def on_reconnected() -> None:
        log.info("nats.reconnected")

    connecting = asyncio.create_task(
        connect(
            settings.nats_url,
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
