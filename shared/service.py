"""The lifecycle every service shares: settings once, signals, connect, ensure, run, drain.

SIGTERM/SIGINT: stop fetching, finish the batch in hand, stop the API, flush the outbox and
the acks, close the store, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.service import ServiceConfig

from shared.api import Endpoint, RepublishRequest, json_endpoint
from shared.connection import connect
from shared.consumer import BatchLoop, Consumer, ConsumerSpec
from shared.jetstream import Publisher
from shared.logging import configure_logging, get_logger
from shared.outbox import Relay, requeue
from shared.retention import check_retention, run_pruning
from shared.runtime import tune_gc
from shared.settings import Settings, SettingsError
from shared.store import Store
from shared.streams import StreamSetupError, ensure_streams
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


async def serve(
    definition: ServiceDefinition,
    settings: Settings,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
) -> int:
    """Run ``definition`` until ``stop`` is set (or a signal arrives); set ``started`` once serving.

    Returns the process exit code: 0 after a requested stop, 1 if a worker died by itself.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not possible off the main thread (e.g. a service run in-process by a test).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    store = await Store.open(
        settings.db_path,
        definition.schema,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
    )
    log.info("service.starting", nats_url=settings.nats_url, db=str(settings.db_path))
    failed = False
    nc = await _connect(settings, stop)
    if nc is None:  # stopped before NATS was ever reachable
        await store.close()
        return 0
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.stream_settings, owned=frozenset({definition.stream, Stream.DLQ}))
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
        micro = await add_service(
            nc,
            ServiceConfig(name=definition.api_name, version=definition.version, description=definition.description),
        )
        for endpoint in [*definition.endpoints(ctx), _republish_endpoint(definition, store, relay)]:
            await micro.add_endpoint(name=endpoint.name, subject=endpoint.subject, handler=endpoint.handler)
        # The endpoints' SUBs sit in the client's write buffer until its flusher runs, and the
        # server reads each connection on its own, so a request from another connection could
        # still meet "no responders" after we say started. A PING/PONG round trip means the
        # server has registered every SUB before it: "service.started" then means "answering".
        await nc.flush(timeout=STARTUP_FLUSH_S)

        relay_stop = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(relay_stop), name="relay")
        work = [asyncio.create_task(batch_loop.run(stop), name="consumers")]
        work += [asyncio.create_task(coro, name="background") for coro in definition.background(ctx, stop)]
        work.append(asyncio.create_task(run_pruning(store, settings, stop), name="pruning"))
        log.info("service.started", consumers=[c.name for c in batch_loop.consumers])
        if started is not None:
            started.set()

        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([stopping, relay_task, *work], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        crashed = [t for t in (relay_task, *work) if t.done()]
        if crashed and not stop.is_set():
            # A worker ended by itself: a bug. Exit non-zero so a supervisor restarts the
            # process, rather than running on with a consumer or the relay missing.
            for task in crashed:
                error = "cancelled" if task.cancelled() else repr(task.exception())
                log.critical("service.worker_died", task=task.get_name(), error=error)
            stop.set()
            failed = True
        log.info("service.stopping")
        # Consumers finish the batch in hand; nothing new is fetched.
        await asyncio.gather(*work, return_exceptions=True)
        await micro.stop()
        await _flush_outbox(relay)
        relay_stop.set()
        await asyncio.gather(relay_task, return_exceptions=True)
    finally:
        # Not nc.drain(): it waits for pull subscriptions' queues, which fetch() never marks
        # done. Every message in hand is already settled, so flushing the acks is enough.
        try:
            await nc.flush(timeout=SHUTDOWN_FLUSH_S)
        except Exception as exc:
            log.warning("nats.flush_failed", error=repr(exc))
        await nc.close()
        await store.close()
    log.info("service.stopped")
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
