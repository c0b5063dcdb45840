"""The event envelope every saga message carries, and the checks that tell good input from bad.

A message that fails any check here is bad input: it can never succeed, so the consumer
dead-letters it with the reason instead of retrying it.
"""

from __future__ import annotations

import functools
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import to_json

from shared.partitions import stored_subject
from shared.subjects import ORDER_ID_PATTERN, event_subject


class BadMessage(Exception):
    """A message that can never be processed; ``reason`` is a stable code, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Envelope(BaseModel):
    """The JSON body of every event (see docs/events.md)."""

    model_config = ConfigDict(strict=True, frozen=True)

    event_id: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1)
    order_id: str = Field(pattern=ORDER_ID_PATTERN.pattern)
    occurred_at: AwareDatetime | None = None
    causation_id: str | None = Field(default=None, min_length=1, max_length=128)
    data: dict[str, Any]

    @property
    def subject(self) -> str:
        return event_subject(self.type, self.order_id)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class EventData(BaseModel):
    """Base of every event's ``data`` model: strict types, so ``"5"`` is not a quantity."""

    model_config = ConfigDict(strict=True, frozen=True)


DataT = TypeVar("DataT", bound=EventData)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def parse_envelope(subject: str, body: bytes) -> Envelope:
    """Decode and check a message's body against its subject; raise BadMessage if it is bad input."""
    tokens = _subject_tokens(subject)
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        kinds = {e["type"] for e in exc.errors()}
        if kinds & {"json_invalid", "json_type", "model_type"}:
            raise BadMessage("invalid_json", _first_error(exc)) from None
        raise BadMessage("invalid_envelope", _first_error(exc)) from None
    _check_against_subject(envelope, subject, tokens)
    return envelope


def parse_data(model: type[DataT], envelope: Envelope) -> DataT:
    """Validate an event's ``data`` against the model its handler expects."""
    try:
        return model.model_validate(envelope.data)
    except ValidationError as exc:
        raise BadMessage("invalid_data", _first_error(exc)) from None


def parse_event(subject: str, body: bytes, model: type[DataT]) -> tuple[Envelope, DataT]:
    """``parse_envelope`` then ``parse_data`` in one validation pass from the bytes.

    Same checks and the same reasons: when the one pass fails (rare), the two-step checks run
    to say what is wrong. It saves building ``data`` as a dict and validating it again.
    """
    tokens = subject.split(".")
    try:
        envelope = typed_envelope(model).model_validate_json(body)
    except ValidationError as exc:
        parse_data(model, parse_envelope(subject, body))
        raise BadMessage("invalid_data", _first_error(exc)) from None  # if the two agree, unreachable
    if len(tokens) != 3 or envelope.order_id != tokens[2]:
        # The body's order_id passed ORDER_ID_PATTERN, so a subject token equal to it needs no
        # second regex; a different one is checked in the order parse_envelope checks.
        _subject_tokens(subject)
    _check_against_subject(envelope, subject, tokens)
    data: DataT = envelope.data  # type: ignore[assignment]  # typed_envelope made it a ``model``
    return envelope, data


@functools.cache
def typed_envelope(model: type[EventData]) -> type[Envelope]:
    """The Envelope whose ``data`` is ``model``."""
    typed: type[Envelope] = create_model(f"{model.__name__}Envelope", __base__=Envelope, data=(model, ...))
    return typed


def _subject_tokens(subject: str) -> list[str]:
    tokens = subject.split(".")
    if len(tokens) != 3 or not ORDER_ID_PATTERN.match(tokens[2]):
        raise BadMessage("invalid_subject", f"{subject!r} is not <domain>.<event>.<order_id>")
    return tokens


def _check_against_subject(envelope: Envelope, subject: str, tokens: list[str]) -> None:
    if envelope.type != f"{tokens[0]}.{tokens[1]}":
        raise BadMessage("type_mismatch", f"type {envelope.type!r} on subject {subject!r}")
    if envelope.order_id != tokens[2]:
        raise BadMessage("order_id_mismatch", f"order_id {envelope.order_id!r} on subject {subject!r}")


@dataclass(frozen=True)
class Event:
    """An event a domain decision causes; the outbox writes it as an Envelope's JSON."""

    type: str
    order_id: str
    data: dict[str, Any] = field(default_factory=dict)
    partition: int | None = None
    """A sub-step for this partition of the service its type names (docs/partitions.md): the
    emitting service's own, or payment_svc's from order_svc. Batched (shared.steps) and published
    on ``part.<partition>.<service>.steps.<id>``; None for a saga event on ``<type>.<order_id>``."""
    traceparent: str | None = None
    """Set only by the runtime, when tracing: the span it was emitted in, if not the span of the
    message being handled (a sub-step of a batch has a span of its own, shared.steps)."""

    @property
    def subject(self) -> str:
        subject = event_subject(self.type, self.order_id)
        return subject if self.partition is None else stored_subject(self.partition, subject)

    def to_json(self, causation_id: str | None) -> tuple[str, bytes]:
        """``(event_id, the envelope as JSON)``: the bytes ``Envelope.to_bytes`` would give (same
        fields, same order, datetimes as RFC 3339 with ``Z``), without building the model: this
        runs for every event emitted, and a model costs three times as much."""
        fields = self._fields(causation_id)
        return fields["event_id"], to_json(fields)

    def _fields(self, causation_id: str | None) -> dict[str, Any]:
        return {
            "event_id": new_event_id(),
            "type": self.type,
            "order_id": self.order_id,
            "occurred_at": datetime.now(UTC),
            "causation_id": causation_id,
            "data": self.data,
        }


_ID_RANDOM = random.Random()
"""Seeded from the OS once per process (and again in a forked child, which would otherwise repeat
its parent's ids): ids must be unique, not secret, and ``os.urandom`` is a system call per event."""
os.register_at_fork(after_in_child=_ID_RANDOM.seed)


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.

    Time-ordered on purpose. Every store keys its inbox and outbox by event_id; random ids
    (UUIDv4) land each new key on a random page of those indexes, and every page a transaction
    dirties is written to the WAL at commit: 256 messages dirtied about 256 pages per index.
    Ids of one millisecond share the rightmost pages.
    """
    random_bits = _ID_RANDOM.getrandbits(80)  # 74 are used
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76  # version 7
        | (random_bits >> 68) << 64  # 12 random bits
        | 0b10 << 62  # the RFC's variant
        | random_bits & ((1 << 62) - 1)
    )
    digits = f"{value:032x}"  # what str(uuid.UUID(int=value)) gives, at half the cost
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
