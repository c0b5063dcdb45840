"""Small asyncio helpers for loops that must stop promptly on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def reconnect_backoff_s(attempt: int) -> float:
    """How long to wait after the ``attempt``-th failure in a row to reach NATS: 0.4 s doubling to 5 s."""
    return min(0.2 * 2.0**attempt, 5.0)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set, whichever is first; True if stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Return when ``event`` is set, or after ``timeout`` seconds.

    For hot loops: one future and one timer, where waiting on several events costs a task each
    and their cancellation. Pair it with ``forward(stop, event)`` so that a stop ends the wait.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


@contextlib.asynccontextmanager
async def forward(source: asyncio.Event, target: asyncio.Event) -> AsyncIterator[None]:
    """While inside, setting ``source`` also sets ``target``."""
    watcher = asyncio.create_task(source.wait())
    watcher.add_done_callback(lambda _: target.set())
    try:
        yield
    finally:
        watcher.cancel()


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    deadline_s: float,
    on_error: Callable[[Exception, int], None],
    fatal: tuple[type[Exception], ...] = (),
) -> T:
    """``attempt()`` until it succeeds, pausing 0.25 s more each time (at most 2 s); ``on_error``
    hears each failure. Past ``deadline_s``, or for a ``fatal`` error, the error is raised.

    For start-up against a cluster that cannot answer yet: no meta leader, a stream or bucket
    just made whose leader is still being elected.
    """
    deadline = time.monotonic() + deadline_s
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except fatal:
            raise
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            on_error(exc, tries)
            await asyncio.sleep(min(0.25 * tries, 2.0))
