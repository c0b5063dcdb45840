"""Cancels orders left PENDING longer than ORDER_TIMEOUT_S, in the same transaction as the outbox row."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sqlite3
import time

from order_svc import domain, repository
from order_svc.handlers import save_outcome
from shared import outbox, tracing
from shared.aio import sleep_unless_stopped
from shared.envelope import Event
from shared.jetstream import ACK_WAIT_S
from shared.logging import get_logger
from shared.partitions import Partitioning
from shared.service import ServiceContext
from shared.settings import Settings
from shared.steps import batch_steps

log = get_logger("order_svc.timeouts")

SWEEP_BATCH = 256

ELECTION_S = 5.0
"""About how long a stream has no leader after the node leading it is lost (docs/operations.md)."""


def warn_if_a_node_loss_can_time_out_orders(settings: Settings) -> None:
    """A message lost with a node comes back only after ACK_WAIT_S, once a new leader is
    elected: a timeout shorter than that cancels orders whose events were merely late."""
    if settings.order_timeout_s < ACK_WAIT_S + ELECTION_S:
        log.warning(
            "timeouts.shorter_than_a_failover",
            order_timeout_s=settings.order_timeout_s,
            ack_wait_s=ACK_WAIT_S,
            election_s=ELECTION_S,
            consequence="losing a NATS node can cancel orders with reason timeout",
        )


def sweep_interval_s(timeout_s: float) -> float:
    """Check often enough that an order is cancelled within about a quarter timeout of its deadline."""
    return min(max(timeout_s / 4, 0.05), 1.0)


def _cancel_batch(timeout_s: float, partitioning: Partitioning, tx: sqlite3.Connection) -> int:
    """Cancel up to SWEEP_BATCH overdue orders, in the same transaction as their outbox rows
    (partitioned, with the releases for payment_svc, a batch per partition: shared.steps)."""
    orders = repository.pending_older_than(tx, time.time() - timeout_s, SWEEP_BATCH)
    cancelled: list[Event] = []
    caused: list[tuple[Event, str | None]] = []
    for order in orders:
        events = order.cancel(domain.TIMEOUT)
        save_outcome(tx, order)
        span = _timeout_span(tx, order.order_id)
        cancelled += events
        caused += [
            (dataclasses.replace(e, traceparent=span), None)
            for e in domain.with_payment_inputs(order, events, partitioning)
        ]
    records = outbox.add(tx, batch_steps(caused), causation_id=None)
    for event, record in zip(cancelled, records, strict=False):  # the saga's events come first
        log.info("order.timed_out", order_id=event.order_id, event_type=event.type, event_id=record.event_id)
    return len(orders)


def _timeout_span(tx: sqlite3.Connection, order_id: str) -> str | None:
    """Tracing: the timeout as a span in the order's trace (ended if the cancel commits)."""
    if not tracing.enabled():  # and then the order's traceparent is not read
        return None
    parent = repository.traceparent_of(tx, order_id)
    return tracing.child_until_commit(tx, parent, "order timeout", {"saga.order_id": order_id})


async def cancel_timed_out(ctx: ServiceContext) -> int:
    """Cancel every PENDING order past its timeout; return how many were cancelled.

    A read first: almost every sweep finds nothing due, and a write transaction that changes
    nothing still commits (its fence counts the commit), a flush to disk each second for each
    partition, idle or not. The write transaction looks again for itself."""
    cutoff = time.time() - ctx.settings.order_timeout_s
    if not await ctx.store.read(functools.partial(repository.any_pending_older_than, cutoff=cutoff)):
        return 0
    cancelled = 0
    while True:
        count = await ctx.store.run(
            functools.partial(_cancel_batch, ctx.settings.order_timeout_s, ctx.settings.partitioning)
        )
        if count:
            ctx.relay.wake()
        cancelled += count
        if count < SWEEP_BATCH:
            return cancelled


async def run_timeouts(ctx: ServiceContext, stop: asyncio.Event) -> None:
    interval = sweep_interval_s(ctx.settings.order_timeout_s)
    while not stop.is_set():
        try:
            await cancel_timed_out(ctx)
        except Exception as exc:  # a locked store: try again next tick
            log.warning("timeouts.sweep_failed", error=repr(exc))
        await sleep_unless_stopped(stop, interval)
