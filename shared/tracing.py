"""Traces: one trace per order, across the three services (docs/observability.md, "Traces").

Each message a service handles is one span, a child of the span that emitted the event: the
emitter's W3C ``traceparent`` travels in the message's headers, and it is stored with every
outbox row, so it survives the relay and a restart. order_svc's handling of ``orders.requested``
(published with no ``traceparent``) is the root. Work that no message starts joins its order's
trace through what was stored: a timeout's cancel is a child of the order's ``orders.requested``
span (kept on the order row), and a sub-step between partitions carries its cause's
``traceparent`` in its row of the batch (shared.steps).

Off by default, and then free: no span is made and no header is read. ``OTEL_TRACES_EXPORTER``
(``otlp`` or ``console``) turns it on (shared.settings); the SDK reads the rest of the standard
``OTEL_*`` variables itself (endpoint, headers, timeout, sampler, batch sizes).

Spans are made on the event loop, never in a transaction: a round retried message by message
would make its spans twice. Sub-steps are the exception, as they are only known inside the
transaction of the batch that carries them: theirs end only if it commits (``after_commit``).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.metrics import PROCESSED
from shared.store import after_commit

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACEPARENT = "traceparent"
"""The W3C Trace Context header (https://www.w3.org/TR/trace-context/), as NATS carries it."""

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None

HANDLING: ContextVar[str | None] = ContextVar("handling_traceparent", default=None)
"""The ``traceparent`` of the message being handled, for a handler that stores it with its state
(order_svc keeps it on the order row). Set on the store's thread, around each handler call."""

FLUSH_ON_EXIT_MS = 3000
"""How long a stopping service waits for its last spans to be exported: a collector that is away
must not hold up a shutdown (those spans are lost, the saga is not)."""


def configure(exporter: str, service_name: str, instance: str) -> None:
    """Turn tracing on for this process (``exporter``: ``otlp`` or ``console``); ``none`` leaves it off."""
    global _tracer, _provider
    if exporter == "none":
        return
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    span_exporter: SpanExporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    else:  # one line per span, on stderr: stdout is the service's JSON log
        span_exporter = ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
    _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name, SERVICE_INSTANCE_ID: instance}))
    _provider.add_span_processor(BatchSpanProcessor(span_exporter))
    _tracer = _provider.get_tracer("saga")


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is left (for at most ``FLUSH_ON_EXIT_MS``) and stop."""
    global _tracer, _provider
    if _provider is not None:
        _provider.force_flush(FLUSH_ON_EXIT_MS)
        _provider.shutdown()
    _tracer = _provider = None


class _Handling:
    """``HANDLING`` set for the duration of one handler call."""

    __slots__ = ("_token", "_traceparent")

    def __init__(self, traceparent: str) -> None:
        self._traceparent = traceparent

    def __enter__(self) -> None:
        self._token = HANDLING.set(self._traceparent)

    def __exit__(self, *exc: object) -> None:
        HANDLING.reset(self._token)


_UNTRACED = contextlib.nullcontext()


def handling(traceparent: str | None) -> contextlib.AbstractContextManager[None]:
    """Around a handler call: ``HANDLING`` holds ``traceparent`` (nothing is done untraced)."""
    return _UNTRACED if traceparent is None else _Handling(traceparent)


def traceparent_of(span: Span) -> str:
    """The ``traceparent`` that makes the next handling a child of ``span``."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _parent(traceparent: str | None) -> Context | None:
    return _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else None


def start_handling(headers: Mapping[str, str] | None, name: str, attributes: Mapping[str, str | int]) -> Span | None:
    """The span of one message's handling, a child of the ``traceparent`` it arrived with (none:
    the root of a new trace); None when tracing is off."""
    if _tracer is None:
        return None
    parent = _parent(headers.get(TRACEPARENT)) if headers else None
    return _tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes)


def start_child(traceparent: str | None, name: str, attributes: Mapping[str, str | int]) -> Span | None:
    """A span for work caused by what ``traceparent`` names (a timeout, a sub-step); None when off."""
    if _tracer is None:
        return None
    return _tracer.start_span(name, context=_parent(traceparent), kind=SpanKind.INTERNAL, attributes=attributes)


def child_until_commit(
    tx: sqlite3.Connection, traceparent: str | None, name: str, attributes: Mapping[str, str | int]
) -> str | None:
    """A span for work done inside ``tx`` that no message of its own starts (a sub-step of a
    batch, a timeout), a child of ``traceparent``: it ends only if ``tx`` commits, so work that is
    rolled back and done again makes it again. Its ``traceparent``, for what the work emits; None
    when off."""
    span = start_child(traceparent, name, attributes)
    if span is None:
        return None
    after_commit(tx, functools.partial(finish, span, PROCESSED))
    return traceparent_of(span)


def finish(span: Span, outcome: str, error: str = "") -> None:
    """End ``span`` with what was done with its message; a dead letter or a retry marks it failed."""
    span.set_attribute("saga.outcome", outcome)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
