"""Process settings, read once from the environment in ``__main__`` and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared.connection import Credentials, CredentialsError, servers
from shared.jetstream import DUPLICATE_WINDOW_S
from shared.partitions import MAX_PARTITIONS, Partitioning
from shared.streams import StreamSettings

LogFormat = Literal["json", "console"]
TracesExporter = Literal["none", "otlp", "console"]
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


def _env_int(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    value = _env_float(name, default, minimum)
    if value != int(value):
        raise SettingsError(f"{name}={value!r} must be a whole number")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name}={int(value)} must be at most {maximum}")
    return int(value)


def _env_bytes(name: str, default: int) -> int:
    """A size in bytes, or -1 for no limit."""
    value = _env_int(name, default, minimum=-1)
    if value == 0:
        raise SettingsError(f"{name}=0: a stream that holds nothing; give a size in bytes, or -1 for no limit")
    return value


def _env_servers(name: str, default: str) -> str:
    raw = os.environ.get(name) or default
    try:
        servers(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: {exc}") from None
    return raw


def _env_partition_set(name: str) -> frozenset[int] | None:
    """``0-3,6``: partitions 0, 1, 2, 3 and 6; unset or empty: None (all)."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return None
    found: set[int] = set()
    try:
        for part in raw.split(","):
            low, _, high = part.strip().partition("-")
            found.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: give partitions as 0-3,6") from None
    return frozenset(found)


def _env_credentials(inbox_prefix: str) -> Credentials:
    try:
        return Credentials.from_env(inbox_prefix=inbox_prefix)
    except CredentialsError as exc:
        raise SettingsError(str(exc)) from None


def inbox_prefix_of(role: str) -> str:
    """The private inbox prefix of a role (a service, ``client`` or ``operator``): see shared.ops.auth."""
    return f"_INBOX_{role}"


def _env_address(name: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:9464`` for IPv6; port 0: any free one); unset or empty: None."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"{name}={raw!r}: give host:port, e.g. 127.0.0.1:9464 (port 0 picks a free one)")
    return host, int(port)


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name) or default
    if raw.lower() not in {c.lower() for c in choices}:
        raise SettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return next(c for c in choices if c.lower() == raw.lower())


def _env_traces_exporter() -> TracesExporter:
    """``OTEL_TRACES_EXPORTER`` as the OpenTelemetry spec reads it, for the exporters we ship:
    ``otlp`` only over HTTP with protobuf (the spec's default; the gRPC exporter is not installed)."""
    if (os.environ.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return "none"
    exporter: TracesExporter = _env_choice("OTEL_TRACES_EXPORTER", "none", ("none", "otlp", "console"))  # type: ignore[assignment]
    if exporter == "otlp":
        for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = (os.environ.get(name) or "").strip()
            if protocol and protocol != "http/protobuf":
                raise SettingsError(f"{name}={protocol!r}: only http/protobuf is supported")
    return exporter


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

    inbox_retention_s: float = 172_800.0
    """``INBOX_RETENTION_S``: how long a processed event_id is remembered: at least as long as a
    stream keeps a message (``STREAM_MAX_AGE_S``), plus the redelivery horizon (docs/operations.md)."""

    outbox_retention_s: float = 86_400.0
    """``OUTBOX_RETENTION_S``: how long a published event is kept, for ``saga-audit --repair`` to re-send."""

    prune_interval_s: float = 60.0
    """``PRUNE_INTERVAL_S``: how often old inbox and outbox rows are deleted."""

    stream_replicas: int = 1
    """``STREAM_REPLICAS``: copies of each stream in a JetStream cluster (3 on a 3-node cluster; at most 5)."""

    stream_max_age_s: float = 86_400.0
    """``STREAM_MAX_AGE_S``: how long ORDERS, PAYMENTS and INVENTORY keep a message. Also how long a
    service may be down before events meant for it expire unread."""

    stream_max_bytes: int = 4 * 2**30
    """``STREAM_MAX_BYTES``: the most each of those streams holds (-1: no limit). When full, a publish is
    refused (it waits in its outbox, and a client sees the error) rather than an old event dropped.
    The server reserves it up front on every node that holds a replica (docs/operations.md)."""

    dlq_max_age_s: float = 30 * 86_400.0
    """``DLQ_MAX_AGE_S``: how long a dead letter is kept for an operator to look at."""

    dlq_max_bytes: int = 512 * 2**20
    """``DLQ_MAX_BYTES``: the most the DLQ holds (-1: no limit); when full, dead-lettering waits (the
    message is nakked and comes back), nothing is dropped."""

    lease_ttl_s: float = 10.0
    """``LEASE_TTL_S``: a writer's lease lapses this long after its last renewal; a standby then
    takes over. Renewed every third of it; longer than a JetStream leader election (about 5 s)."""

    partitions: int = 1
    """``PARTITIONS``: how many partitions every service's state is split into (docs/partitions.md).
    Every service and tool of a deployment must use the same count, fixed up front: the streams
    record it, and an instance with another count refuses to start."""

    credentials: Credentials = field(default_factory=Credentials)
    """``NATS_NKEY_SEED`` (a seed file), or ``NATS_USER`` and ``NATS_PASSWORD``, and ``NATS_TLS_CA``,
    ``NATS_TLS_CERT``, ``NATS_TLS_KEY``: who the service is to NATS (docs/operations.md, "Trust
    boundary"). None set: an open server. ``NATS_INBOX_PREFIX`` too: ``_INBOX_<service>`` by default,
    the prefix ``saga-auth`` lets only this service's key subscribe to."""

    partition_set: frozenset[int] | None = None
    """``PARTITION_SET`` (e.g. ``0-3`` or ``0,2``): the only partitions this instance may own; unset,
    all. For one volume per set of partitions across hosts, as a StatefulSet gives each pod its own
    (docs/partitions.md, "Across hosts"): only these partitions' stores are made and claimed here."""

    metrics_addr: tuple[str, int] | None = None
    """``METRICS_ADDR`` (``host:port``): serve Prometheus metrics on ``http://host:port/metrics``;
    port 0 picks a free port and logs it (``metrics.serving``). Unset: no metrics server
    (docs/observability.md). ``0.0.0.0:9464`` is every interface: say so only on purpose."""

    traces_exporter: TracesExporter = "none"
    """``OTEL_TRACES_EXPORTER``: ``otlp`` sends a span per message handled over OTLP/HTTP (to
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, default ``http://localhost:4318``; the SDK reads the other
    ``OTEL_*`` settings itself), ``console`` prints them on stderr; ``none`` (the default), or
    ``OTEL_SDK_DISABLED=true``: no tracing, at no cost (docs/observability.md)."""

    traces_service_name: str = ""
    """``OTEL_SERVICE_NAME``: the name spans are reported under; the service's own by default."""

    @property
    def owned_partitions(self) -> list[int]:
        """The partitions this instance may own, in order."""
        return [p for p in self.partitioning.all() if self.partition_set is None or p in self.partition_set]

    @property
    def partitioning(self) -> Partitioning:
        return Partitioning(self.partitions)

    def unit_db_path(self, partition: int) -> Path:
        """The SQLite file of one partition: ``<service>.sqlite3`` unpartitioned, else ``<service>.p<k>.sqlite3``."""
        return self.data_dir / self.partitioning.file_name(self.service, partition)

    @property
    def stream_settings(self) -> StreamSettings:
        return StreamSettings(
            replicas=self.stream_replicas,
            max_age_s=self.stream_max_age_s,
            max_bytes=self.stream_max_bytes,
            dlq_max_age_s=self.dlq_max_age_s,
            dlq_max_bytes=self.dlq_max_bytes,
            partitions=self.partitions,
        )

    @property
    def db_path(self) -> Path:
        """The file of partition 0: the service's only file when unpartitioned."""
        return self.unit_db_path(0)

    @classmethod
    def from_env(cls, service: str) -> Settings:
        """Read the settings of ``service`` from the environment; raise SettingsError on a bad value."""
        settings = cls(
            service=service,
            nats_url=_env_servers("NATS_URL", cls.nats_url),
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
            stream_replicas=_env_int("STREAM_REPLICAS", cls.stream_replicas, minimum=1, maximum=5),
            # A stream's duplicate window cannot be longer than its max_age.
            stream_max_age_s=_env_float("STREAM_MAX_AGE_S", cls.stream_max_age_s, minimum=DUPLICATE_WINDOW_S),
            stream_max_bytes=_env_bytes("STREAM_MAX_BYTES", cls.stream_max_bytes),
            dlq_max_age_s=_env_float("DLQ_MAX_AGE_S", cls.dlq_max_age_s, minimum=DUPLICATE_WINDOW_S),
            dlq_max_bytes=_env_bytes("DLQ_MAX_BYTES", cls.dlq_max_bytes),
            lease_ttl_s=_env_float("LEASE_TTL_S", cls.lease_ttl_s, minimum=1.0),
            partitions=_env_int("PARTITIONS", cls.partitions, minimum=1, maximum=MAX_PARTITIONS),
            partition_set=_env_partition_set("PARTITION_SET"),
            credentials=_env_credentials(inbox_prefix_of(service)),
            metrics_addr=_env_address("METRICS_ADDR"),
            traces_exporter=_env_traces_exporter(),
            traces_service_name=(os.environ.get("OTEL_SERVICE_NAME") or "").strip() or service,
        )
        if settings.partition_set is not None and not settings.owned_partitions:
            raise SettingsError(f"PARTITION_SET={os.environ.get('PARTITION_SET')!r}: no partition below PARTITIONS")
        return settings
