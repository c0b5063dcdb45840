"""Process settings, read once from the environment in ``__main__`` and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

LogFormat = Literal["json", "console"]
SqliteSync = Literal["FULL", "NORMAL"]


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot run with."""


def _env_float(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _env_int(name: str, default: int, minimum: int) -> int:
    value = _env_float(name, default, minimum)
    if value != int(value):
        raise SettingsError(f"{name}={value!r} must be a whole number")
    return int(value)


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name) or default
    if raw.lower() not in {c.lower() for c in choices}:
        raise SettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return next(c for c in choices if c.lower() == raw.lower())


@dataclass(frozen=True)
class Settings:
    """Everything a service process is configured with."""

    service: str
    """The service's name: its durable consumers, DLQ subject and SQLite file are named after it."""

    nats_url: str = "nats://127.0.0.1:4222"
    """``NATS_URL``: the NATS server (or comma-separated servers) to connect to."""

    data_dir: Path = Path("./data")
    """``DATA_DIR``: where the service keeps its SQLite file, ``<service>.sqlite3``."""

    order_timeout_s: float = 30.0
    """``ORDER_TIMEOUT_S`` (order_svc): a PENDING order older than this is cancelled with "timeout"."""

    log_format: LogFormat = "json"
    """``LOG_FORMAT``: ``json`` (one object per line, for machines) or ``console`` (for people)."""

    log_level: str = "INFO"
    """``LOG_LEVEL``: DEBUG, INFO, WARNING or ERROR."""

    sqlite_synchronous: SqliteSync = "FULL"
    """``SQLITE_SYNCHRONOUS``: FULL survives power loss after an ack; NORMAL survives process crashes only."""

    sqlite_busy_timeout_ms: int = 5000
    """``SQLITE_BUSY_TIMEOUT_MS``: how long a write waits for a lock before the batch is retried later.
    A round does not read from NATS meanwhile (``reading_paused``): keep it well under the server's
    ``write_deadline`` (10 s by default), past which the server drops a connection it cannot write to."""

    fetch_batch: int = 256
    """``FETCH_BATCH``: messages fetched, and committed in one SQLite transaction, at a time."""

    max_deliveries: int = 10
    """``MAX_DELIVERIES``: a message whose handler still fails after this many deliveries is dead-lettered."""

    inbox_retention_s: float = 86_400.0
    """``INBOX_RETENTION_S``: how long a processed event_id is remembered (see docs/operations.md)."""

    outbox_retention_s: float = 86_400.0
    """``OUTBOX_RETENTION_S``: how long a published event is kept, for ``saga-audit --repair`` to re-send."""

    prune_interval_s: float = 60.0
    """``PRUNE_INTERVAL_S``: how often old inbox and outbox rows are deleted."""

    @property
    def db_path(self) -> Path:
        return self.data_dir / f"{self.service}.sqlite3"

    @classmethod
    def from_env(cls, service: str) -> Settings:
        """Read the settings of ``service`` from the environment; raise SettingsError on a bad value."""
        return cls(
            service=service,
            nats_url=os.environ.get("NATS_URL") or cls.nats_url,
            data_dir=Path(os.environ.get("DATA_DIR") or cls.data_dir),
            order_timeout_s=_env_float("ORDER_TIMEOUT_S", cls.order_timeout_s, minimum=0.1),
            log_format=_env_choice("LOG_FORMAT", cls.log_format, ("json", "console")),  # type: ignore[arg-type]
            log_level=_env_choice("LOG_LEVEL", cls.log_level, ("DEBUG", "INFO", "WARNING", "ERROR")),
            sqlite_synchronous=_env_choice(  # type: ignore[arg-type]
                "SQLITE_SYNCHRONOUS", cls.sqlite_synchronous, ("FULL", "NORMAL")
            ),
            sqlite_busy_timeout_ms=_env_int("SQLITE_BUSY_TIMEOUT_MS", cls.sqlite_busy_timeout_ms, minimum=0),
            fetch_batch=_env_int("FETCH_BATCH", cls.fetch_batch, minimum=1),
            max_deliveries=_env_int("MAX_DELIVERIES", cls.max_deliveries, minimum=1),
            inbox_retention_s=_env_float("INBOX_RETENTION_S", cls.inbox_retention_s, minimum=0),
            outbox_retention_s=_env_float("OUTBOX_RETENTION_S", cls.outbox_retention_s, minimum=0),
            prune_interval_s=_env_float("PRUNE_INTERVAL_S", cls.prune_interval_s, minimum=0.1),
        )
