"""Prometheus metrics of a service instance, served on ``METRICS_ADDR`` (docs/observability.md).

Counters and histograms are counted whether or not anything serves them: an increment of a
cached child costs well under a microsecond, far less than keeping two code paths. Gauges that
need a look at the store or the server (the outbox backlog, a consumer's pending count) are read
only when Prometheus scrapes, by running the reads on the service's event loop: an instance that
nobody scrapes does no work for them.

No label carries an order_id or a customer_id: a label value is a time series, and one per order
would grow without bound. Labels take their values from the code's own names (event types,
outcomes, dead-letter reasons, statuses); the one value that comes from a message, an order's
cancellation reason, is capped (``MAX_REASONS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.logging import get_logger

log = get_logger("metrics")

PROCESSED, DUPLICATE, DEAD_LETTERED, RETRIED = "processed", "duplicate", "dead_lettered", "retried"
"""The outcomes of ``saga_events_handled_total``: what the ack policy did with a message."""

EVENTS_HANDLED = Counter(
    "saga_events_handled",
    "Messages settled by a service's consumers, by event type and what was done with them.",
    ["service", "event_type", "outcome"],
)
DEAD_LETTERS = Counter(
    "saga_dead_letters",
    "Messages dead-lettered to dlq.<service>, by reason (docs/events.md, 'Dead letters').",
    ["service", "reason"],
)
ROUND_DURATION = Histogram(
    "saga_round_duration_seconds",
    "One group-commit round: decode, one SQLite transaction, publish, settle.",
    ["service"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ROUND_MESSAGES = Histogram(
    "saga_round_messages",
    "Messages in one group-commit round.",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
ORDERS = Counter(
    "saga_orders",
    "Orders that reached CONFIRMED or CANCELLED (order_svc), by status and cancellation reason.",
    ["status", "reason"],
)
ORDER_DURATION = Histogram(
    "saga_order_duration_seconds",
    "From order_svc's handling of orders.requested to the order's CONFIRMED or CANCELLED.",
    ["status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)

MAX_REASONS = 64
"""Distinct cancellation reasons counted by name; any further one counts as ``other``. Reasons are
the services' own codes, but they arrive in events, and a label must not grow without bound."""
_reasons: set[str] = set()
_reasons_lock = threading.Lock()


@functools.cache
def _handled(service: str, event_type: str, outcome: str) -> Counter:
    return EVENTS_HANDLED.labels(service, event_type, outcome)


@functools.cache
def _dead_letters(service: str, reason: str) -> Counter:
    return DEAD_LETTERS.labels(service, reason)


def handled(service: str, event_type: str, outcome: str, reason: str | None = None) -> None:
    """Count one settled message; ``reason`` with a dead letter."""
    _handled(service, event_type, outcome).inc()
    if reason is not None:
        _dead_letters(service, reason).inc()


def round_done(service: str, seconds: float, messages: int) -> None:
    ROUND_DURATION.labels(service).observe(seconds)
    ROUND_MESSAGES.labels(service).observe(messages)


def order_finished(status: str, reason: str | None, seconds: float) -> None:
    """Count an order that reached ``status``: call it after the transition commits."""
    label = reason or ""
    with _reasons_lock:
        if label not in _reasons:
            if len(_reasons) >= MAX_REASONS:
                label = "other"
            else:
                _reasons.add(label)
    ORDERS.labels(status, label).inc()
    ORDER_DURATION.labels(status).observe(max(seconds, 0.0))


# --- gauges read at scrape time -------------------------------------------------------------


GaugeRead = Callable[[], Awaitable[list[tuple[str, dict[str, str], float]]]]
"""Reads ``(metric name, labels, value)`` samples, on the service's event loop."""


@dataclass(frozen=True)
class GaugeFamily:
    name: str
    documentation: str
    labels: tuple[str, ...]


GAUGES = {
    family.name: family
    for family in (
        GaugeFamily("saga_outbox_backlog", "Outbox rows committed but not yet published.", ("service", "partition")),
        GaugeFamily(
            "saga_consumer_pending",
            "Messages in a durable consumer's stream not yet delivered to it.",
            ("service", "consumer"),
        ),
        GaugeFamily(
            "saga_consumer_ack_pending",
            "Messages delivered to a durable consumer and not yet acknowledged.",
            ("service", "consumer"),
        ),
        GaugeFamily(
            "saga_partition_owned",
            "1 for each partition this instance writes now (its lease held).",
            ("service", "partition"),
        ),
    )
}

SCRAPE_READ_TIMEOUT_S = 2.0
"""How long a scrape waits for the event loop's reads; a busy or stuck loop gives no gauges then
(Prometheus sees the gap) rather than a scrape that hangs."""


class LiveGauges(Collector):
    """The gauges whose values live in stores and on the server, read when scraped.

    Each partition this instance writes registers a reader for its term and removes it when the
    term ends, so a partition handed over stops being reported here and starts on its new owner.
    """

    def __init__(self) -> None:
        self._readers: dict[object, GaugeRead] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def reading(self, read: GaugeRead) -> Iterator[None]:
        """Report ``read``'s samples while inside; call it on the service's event loop."""
        token = object()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._readers[token] = read
        try:
            yield
        finally:
            with self._lock:
                self._readers.pop(token, None)

    def describe(self) -> list[Metric]:
        return []  # the families are built per scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            loop, readers = self._loop, list(self._readers.values())
        samples: list[tuple[str, dict[str, str], float]] = []
        if loop is not None and readers:
            future = asyncio.run_coroutine_threadsafe(_read_all(readers), loop)
            try:
                samples = future.result(timeout=SCRAPE_READ_TIMEOUT_S)
            except Exception as exc:
                future.cancel()
                log.warning("metrics.gauges_unread", error=repr(exc))
        families = {name: GaugeMetricFamily(name, g.documentation, labels=g.labels) for name, g in GAUGES.items()}
        for name, labels, value in samples:
            family = GAUGES[name]
            families[name].add_metric([labels[label] for label in family.labels], value)
        yield from families.values()


async def _read_all(readers: list[GaugeRead]) -> list[tuple[str, dict[str, str], float]]:
    samples: list[tuple[str, dict[str, str], float]] = []
    for result in await asyncio.gather(*(read() for read in readers), return_exceptions=True):
        if isinstance(result, BaseException):
            log.warning("metrics.gauge_read_failed", error=repr(result))
        else:
            samples.extend(result)
    return samples


LIVE_GAUGES = LiveGauges()
REGISTRY.register(LIVE_GAUGES)


def serve(host: str, port: int) -> tuple[str, int]:
    """Serve ``/metrics`` on ``host:port`` (port 0: a free one) from a daemon thread; return the address."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host)
    bound_host, bound_port = server.server_address[:2]
    return str(bound_host), int(bound_port)
