"""structlog setup: every line carries service, event_type, order_id and event_id.

The consumer sets the message in hand with ``about_message``, so handlers and the domain log
plain facts (``log.info("payment.charged", amount_cents=...)``) and still say which event they
were about. Lines not about any event carry those keys as null, so a log query never has to
guess whether a key is missing or empty.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

EVENT_KEYS = ("event_type", "order_id", "event_id")

# One contextvar holding the three keys: set once per message, which is what the hot path
# pays for (structlog's bound_contextvars sets and resets one variable per key).
_MESSAGE: ContextVar[tuple[str, str, str] | None] = ContextVar("saga_message", default=None)


class about_message:
    """``with about_message(type, order_id, event_id):`` every line logged inside is about this
    message. A class, not ``@contextmanager``: it is entered for every message processed."""

    __slots__ = ("_token", "_values")

    def __init__(self, event_type: str, order_id: str, event_id: str) -> None:
        self._values = (event_type, order_id, event_id)

    def __enter__(self) -> None:
        self._token = _MESSAGE.set(self._values)

    def __exit__(self, *exc: object) -> None:
        _MESSAGE.reset(self._token)


class _Logger:
    """structlog's lazy logger that stops being lazy once structlog caches loggers.

    structlog's proxy assembles its logger on every method lookup, so ``log.debug(...)`` costs
    ~0.7 us even when debug lines are filtered out, and the store's thread logs a few times per
    message (docs/performance.md). Once structlog is configured to cache a logger on first use
    (``configure_logging`` does), the proxy's logger never changes again: each method is then
    kept here after its first lookup, and the next call costs a plain attribute (~0.07 us).
    Before that, every lookup goes through the proxy, so a later ``structlog.configure`` applies.
    """

    def __init__(self, name: str) -> None:
        self._proxy = structlog.get_logger(name)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._proxy, name)
        if structlog.is_configured() and structlog.get_config()["cache_logger_on_first_use"]:
            setattr(self, name, method)
        return method


def get_logger(name: str) -> Any:
    """A module's logger: use this rather than ``structlog.get_logger`` (see ``_Logger``)."""
    return _Logger(name)


def _add_message_keys(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    values = _MESSAGE.get() or (None, None, None)
    for key, value in zip(EVENT_KEYS, values, strict=True):
        event_dict.setdefault(key, value)
    return event_dict


def configure_logging(service: str, log_format: str = "json", level: str = "INFO") -> None:
    """Configure structlog for one service process, writing to stdout."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_message_keys,
            structlog.processors.dict_tracebacks if log_format == "json" else structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
