"""Cancels orders left PENDING longer than ORDER_TIMEOUT_S, in the same transaction as the outbox row."""

from __future__ import annotations

import asyncio
import time

import structlog

from order_svc import domain, repository
from shared import outbox
from shared.aio import sleep_unless_stopped
from shared.service import ServiceContext

log = structlog.get_logger("order_svc.timeouts")

SWEEP_BATCH = 256


def sweep_interval_s(timeout_s: float) -> float:
    """Check often enough that an order is cancelled within about a quarter timeout of its deadline."""
    return min(max(timeout_s / 4, 0.05), 1.0)


async def cancel_timed_out(ctx: ServiceContext) -> int:
    """Cancel every PENDING order past its timeout; return how many were cancelled."""
    cancelled = 0
    while True:
        now = time.time()
        async with ctx.store.transaction() as tx:
            orders = await repository.pending_older_than(tx, now - ctx.settings.order_timeout_s, SWEEP_BATCH)
            for order in orders:
                events = order.cancel(domain.TIMEOUT)
                await repository.save_status(tx, order)
                envelopes = [e.to_envelope(causation_id=None) for e in events]
                await outbox.add(tx, envelopes)
                for env in envelopes:
                    log.info("order.timed_out", order_id=order.order_id, event_type=env.type, event_id=env.event_id)
        if orders:
            ctx.relay.wake()
        cancelled += len(orders)
        if len(orders) < SWEEP_BATCH:
            return cancelled


async def run_timeouts(ctx: ServiceContext, stop: asyncio.Event) -> None:
    interval = sweep_interval_s(ctx.settings.order_timeout_s)
    while not stop.is_set():
        try:
            await cancel_timed_out(ctx)
        except Exception as exc:  # a locked store: try again next tick
            log.warning("timeouts.sweep_failed", error=repr(exc))
        await sleep_unless_stopped(stop, interval)
