"""The saga's streams: their settings, and making them exist without trampling an operator's edits.

Any service may start first, so each one creates whatever stream is missing. After that a
stream's settings have one owner: the service whose events it holds (the DLQ is every
service's). The owner keeps what its correctness needs (subjects, the duplicate window, limits
retention) and applies its own settings for the limits an operator may tune (replicas,
``max_age``, ``max_bytes``, the discard policy), but only where the stream still has the value
the service last applied: a value someone changed since (``nats stream edit``) is kept, and
the difference is logged at every start. What was last applied is recorded in the stream's
metadata (``saga.applied``), so the decision needs no state outside the stream.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import APIError, BadRequestError, NotFoundError

from shared.aio import retrying
from shared.jetstream import DUPLICATE_WINDOW_S
from shared.logging import get_logger
from shared.partitions import transform_dest
from shared.subjects import PUBLIC_STREAMS, STEP_STREAMS, STREAM_SUBJECTS, Stream

log = get_logger("streams")

STREAM_IN_USE = 10058  # JetStream's err_code for "stream name already in use with a different configuration"
INSUFFICIENT_STORAGE = 10047  # the server reserves max_bytes up front, on every replica's node


class StreamSetupError(Exception):
    """A stream cannot be made as configured; retrying will not help."""


PARTITIONS_KEY = "saga.partitions"
"""Stream metadata: the partition count the stream's subject transform splits by (absent: 1)."""

APPLIED_KEY = "saga.applied"
"""Stream metadata: the tunable settings as the owning service last applied them (JSON)."""

TUNABLE = ("num_replicas", "max_age", "max_bytes", "discard")
"""The settings an operator may change on a live stream, and that a service applies only over its own."""

LEGACY_APPLIED: dict[str, Any] = {"num_replicas": 1, "max_age": 0.0, "max_bytes": -1, "discard": "old"}
"""What a stream made before ``saga.applied`` existed was created with: the server's defaults."""

START_DEADLINE_S = 60.0
"""How long start-up keeps retrying while the cluster cannot answer yet (no meta leader, a leader
election): measured 0.4-2.3 s for the first R3 stream of a fresh 3-node cluster."""


@dataclass(frozen=True)
class StreamSettings:
    """The tunable limits a service asks for (STREAM_REPLICAS, STREAM_MAX_AGE_S, ...)."""

    replicas: int = 1
    max_age_s: float = 86_400.0
    max_bytes: int = 4 * 2**30
    dlq_max_age_s: float = 30 * 86_400.0
    dlq_max_bytes: int = 512 * 2**20
    partitions: int = 1

    def transform(self, stream: Stream) -> SubjectTransform | None:
        """The transform that renames a public stream's events by partition (shared.partitions)."""
        if self.partitions <= 1 or stream not in PUBLIC_STREAMS:
            return None
        domain = STREAM_SUBJECTS[stream].removesuffix(".>")
        return SubjectTransform(src=f"{domain}.*.*", dest=transform_dest(domain, self.partitions))

    def tunables(self, stream: Stream) -> dict[str, Any]:
        """The tunable settings of ``stream``, in the server's units, keyed as StreamConfig names them."""
        dlq = stream is Stream.DLQ
        return {
            "num_replicas": self.replicas,
            "max_age": self.dlq_max_age_s if dlq else self.max_age_s,
            "max_bytes": self.dlq_max_bytes if dlq else self.max_bytes,
            # Full means refuse, never drop: an event no consumer has read yet must not vanish
            # to make room. Publishes then fail and wait in the outboxes (and clients see the
            # error) until max_age frees space.
            "discard": DiscardPolicy.NEW.value,
        }


def stream_config(stream: Stream, settings: StreamSettings) -> StreamConfig:
    """The whole configuration ``stream`` is created with."""
    tunables = settings.tunables(stream)
    return StreamConfig(
        name=stream.value,
        subjects=[STREAM_SUBJECTS[stream]],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=tunables["num_replicas"],
        max_age=tunables["max_age"],
        max_bytes=tunables["max_bytes"],
        discard=DiscardPolicy(tunables["discard"]),
        subject_transform=settings.transform(stream),
        metadata={APPLIED_KEY: json.dumps(tunables, sort_keys=True), **_partitions_metadata(stream, settings)},
    )


def _partitions_metadata(stream: Stream, settings: StreamSettings) -> dict[str, str]:
    return {PARTITIONS_KEY: str(settings.partitions)} if settings.transform(stream) is not None else {}


def stream_partitions(config: StreamConfig) -> int:
    """The partition count a live stream was made with."""
    raw = (config.metadata or {}).get(PARTITIONS_KEY, "1")
    return int(raw) if raw.isdigit() else 0


def check_partitions(config: StreamConfig, stream: Stream, settings: StreamSettings) -> None:
    """StreamSetupError unless the live stream splits by the partition count this process has."""
    if stream not in PUBLIC_STREAMS:
        return
    have = stream_partitions(config)
    if have != settings.partitions:
        raise StreamSetupError(
            f"stream {stream.value} is split into {have} partition(s) ({PARTITIONS_KEY}), but PARTITIONS="
            f"{settings.partitions}: every service and tool must use the stream's count. Changing it re-hashes"
            ' every key; see docs/operations.md, "Choosing the partition count"'
        )


def _tunable_value(config: StreamConfig, name: str) -> Any:
    value = getattr(config, name)
    if name == "discard":
        return DiscardPolicy(value or DiscardPolicy.OLD).value
    if name == "max_age":
        return float(value or 0.0)
    if name == "max_bytes":
        return -1 if value is None else int(value)
    return 1 if value is None else int(value)


@dataclass(frozen=True)
class Reconciled:
    """What an owner does to a live stream: the config to write (None: nothing), and what it left alone."""

    update: StreamConfig | None
    changed: dict[str, tuple[Any, Any]]
    """Tunable -> (the stream's value, the value written)."""
    kept: dict[str, tuple[Any, Any]]
    """Tunable -> (the stream's value, which is kept; the value this service would have set)."""
    repaired: list[str]
    """Settings the saga depends on that were wrong and are set back."""


def reconcile(current: StreamConfig, stream: Stream, settings: StreamSettings, owner: bool) -> Reconciled:
    """Pure: compare a live stream's config with this service's, decide what to write and what to keep."""
    desired = settings.tunables(stream)
    raw_applied = (current.metadata or {}).get(APPLIED_KEY)
    try:
        applied = {**LEGACY_APPLIED, **json.loads(raw_applied)} if raw_applied else dict(LEGACY_APPLIED)
    except ValueError:
        applied = {}  # unreadable: treat every value as the operator's
    changed: dict[str, tuple[Any, Any]] = {}
    kept: dict[str, tuple[Any, Any]] = {}
    new_applied: dict[str, Any] = {}
    for name in TUNABLE:
        have = _tunable_value(current, name)
        if have == desired[name]:
            new_applied[name] = have
        elif owner and name in applied and have == applied[name]:
            changed[name] = (have, desired[name])  # still what we set: our setting changed
            new_applied[name] = desired[name]
        else:
            kept[name] = (have, desired[name])  # someone chose this value: theirs to change
            if name in applied:
                new_applied[name] = applied[name]
    repaired: list[str] = []
    if owner:
        subjects = list(current.subjects or [])
        if STREAM_SUBJECTS[stream] not in subjects:
            subjects.append(STREAM_SUBJECTS[stream])
            repaired.append("subjects")
        if (current.duplicate_window or 0) < DUPLICATE_WINDOW_S:
            repaired.append("duplicate_window")
        if current.retention not in (None, RetentionPolicy.LIMITS):
            repaired.append("retention")
        transform = settings.transform(stream)
        have_transform = current.subject_transform
        if (transform.as_dict() if transform else None) != (have_transform.as_dict() if have_transform else None):
            repaired.append("subject_transform")
    if not owner or not (changed or repaired or raw_applied != json.dumps(new_applied, sort_keys=True)):
        return Reconciled(None, changed if owner else {}, kept, [])
    update = dataclasses.replace(current)
    for name, (_, value) in changed.items():
        setattr(update, name, DiscardPolicy(value) if name == "discard" else value)
    if repaired:
        update.subject_transform = settings.transform(stream)
        update.subjects = subjects
        update.duplicate_window = max(current.duplicate_window or 0, DUPLICATE_WINDOW_S)
        update.retention = RetentionPolicy.LIMITS
    update.metadata = {
        **(current.metadata or {}),
        APPLIED_KEY: json.dumps(new_applied, sort_keys=True),
        **_partitions_metadata(stream, settings),
    }
    return Reconciled(update, changed, kept, repaired)


async def ensure_streams(
    js: JetStreamContext, settings: StreamSettings | None = None, owned: frozenset[Stream] = frozenset(Stream)
) -> None:
    """Create every missing stream of the saga; on the ``owned`` ones, apply ``settings`` where
    no one else changed them (module docstring). Retries while the cluster cannot answer yet."""
    settings = settings or StreamSettings()
    for stream in Stream:
        if stream in STEP_STREAMS and settings.partitions <= 1:
            continue
        await retrying(
            functools.partial(_ensure_stream, js, stream, settings, stream in owned),
            deadline_s=START_DEADLINE_S,
            on_error=functools.partial(_retrying, stream),
            fatal=(StreamSetupError,),
        )


async def _ensure_stream(js: JetStreamContext, stream: Stream, settings: StreamSettings, owner: bool) -> None:
    try:
        info = await js.stream_info(stream.value)
    except NotFoundError:
        try:
            await js.add_stream(stream_config(stream, settings))
            log.info("stream.created", stream=stream.value, **settings.tunables(stream))
            return
        except BadRequestError as exc:
            if exc.err_code != STREAM_IN_USE:
                raise
            info = await js.stream_info(stream.value)  # another service created it meanwhile
        except APIError as exc:
            if exc.err_code == INSUFFICIENT_STORAGE:
                wanted = settings.tunables(stream)["max_bytes"]
                raise StreamSetupError(
                    f"stream {stream.value}: the server cannot reserve max_bytes={wanted} ({exc.description});"
                    " lower STREAM_MAX_BYTES / DLQ_MAX_BYTES, or give the server more max_file_store"
                ) from None
            raise
    check_partitions(info.config, stream, settings)
    outcome = reconcile(info.config, stream, settings, owner)
    for name, (have, ours) in outcome.kept.items():
        # The owner keeps an operator's value; another service merely sees a stream set up otherwise.
        (log.warning if owner else log.info)(
            "stream.setting_kept", stream=stream.value, setting=name, value=have, ours=ours, owner=owner
        )
    if outcome.update is not None:
        await js.update_stream(outcome.update)
        changed = {name: {"from": old, "to": new} for name, (old, new) in outcome.changed.items()}
        log.info("stream.updated", stream=stream.value, changed=changed, repaired=outcome.repaired)


def _retrying(stream: Stream, exc: Exception, attempt: int) -> None:
    log.warning("stream.ensure_retrying", stream=stream.value, error=repr(exc), attempt=attempt)
