"""Small asyncio helpers for loops that must stop promptly on shutdown."""

from __future__ import annotations

import asyncio
import contextlib


def reconnect_backoff_s(attempt: int) -> float:
    """How long to wait after the ``attempt``-th failure in a row to reach NATS: 0.4 s doubling to 5 s."""
    return min(0.2 * 2.0**attempt, 5.0)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set, whichever is first; True if stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Return when any of ``events`` is set, or after ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
