"""The pull loop: fetch -> decode -> (inbox -> handler -> outbox) per message -> commit -> settle.

Group commit: a fetched batch shares one SQLite transaction, and each message runs in its own
savepoint, so one message that fails rolls back only itself. The ack policy lives in
``settle`` and nowhere else:

- processed or duplicate  -> ack, after the commit;
- bad input               -> published to ``dlq.<service>`` byte for byte, then ``term``;
- transient failure       -> ``nak(delay)`` with a growing delay, never dead-lettered;
- handler failure (a bug) -> ``nak(delay)``; after MAX_DELIVERIES, dead-lettered ``max_deliveries``;
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo
from opentelemetry.trace import Span

from shared import inbox, metrics, outbox, tracing
from shared.aio import forward, reconnect_backoff_s, sleep_unless_stopped, wait_event
from shared.envelope import BadMessage, Envelope, Event, EventData, parse_envelope, parse_event
from shared.jetstream import IDLE_WAIT_S, MSG_ID_HEADER, Puller, durable_name, ensure_consumer, reading_paused
from shared.logging import about_message, get_logger
from shared.outbox import OutboxRecord, Relay
from shared.partitions import UNPARTITIONED, Partitioning, split_stored
from shared.steps import StepBatch, batch_steps
from shared.store import Store, is_transient_db_error, savepoint
from shared.subjects import PUBLIC_STREAMS, Stream, consumer_filters, dlq_subject

log = get_logger("consumer")


DataT = TypeVar("DataT", bound=EventData)

Handler = Callable[[sqlite3.Connection, Envelope, DataT], list[Event]]
"""Load, decide (domain), save; return the events to add to the outbox. Synchronous: it runs
with the rest of its batch on the store's thread, inside the batch's transaction."""


@dataclass(frozen=True)
class Route(Generic[DataT]):
    """How one event type is handled: the model its ``data`` must match, and the handler."""

    data_model: type[DataT]
    handler: Handler[DataT]
    key: Callable[[Envelope, DataT], str | int] | None = None
    """Partitioned, the key whose partition the message belongs to, or that partition itself (a
    batch of sub-steps, shared.steps); None: its order_id."""


@dataclass(frozen=True)
class ConsumerSpec:
    """One durable consumer of a service: a stream and the event types it routes."""

    stream: Stream
    routes: Mapping[str, Route[Any]]

    @property
    def filter_subjects(self) -> list[str]:
        """Every subject shape of the routed types, as published (unpartitioned, or strays)."""
        return [f for event_type in self.routes for f in consumer_filters(event_type)]

    def partition_filters(self, partitioning: Partitioning, partition: int) -> list[str]:
        """What partition ``partition`` reads: the routed types as the stream stores them there."""
        if not partitioning.partitioned:
            return self.filter_subjects
        return [partitioning.subject(partition, f"{event_type}.*") for event_type in self.routes]

    def decode(self, subject: str, body: bytes) -> tuple[Envelope, Route[Any], EventData]:
        """The message's envelope, its route and its data, in one validation pass; BadMessage if bad."""
        route = self.routes.get(subject.rpartition(".")[0])
        if route is None:
            # Not <type>.<order_id> for a type we route: the full checks say what is wrong.
            envelope = parse_envelope(subject, body)
            raise BadMessage("unroutable", f"no handler for {envelope.type} on {self.stream.value}")
        envelope, data = parse_event(subject, body, route.data_model)
        return envelope, route, data


# --- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processed:
    records: Sequence[OutboxRecord] = ()


@dataclass(frozen=True)
class Duplicate:
    pass


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Retry:
    transient: bool
    error: str = ""


Outcome = Processed | Duplicate | DeadLetter | Retry


@dataclass
class Decoded:
    msg: Msg
    envelope: Envelope
    route: Route[Any]
    data: EventData
    outcome: Outcome | None = field(default=None)
    traceparent: str | None = None
    """Tracing: the span of this message's handling, which what it emits descends from."""


DLQ_HEADERS = (
    "Dlq-Reason",
    "Dlq-Detail",
    "Dlq-Service",
    "Dlq-Consumer",
    "Dlq-Original-Subject",
    "Dlq-Original-Stream",
    "Dlq-Original-Sequence",
    "Dlq-Original-Msg-Id",
    "Dlq-Deliveries",
)


STORED_SUBJECT_HEADER = "Dlq-Stored-Subject"
"""Partitioned: the subject the stream stored the message under, when not the one published."""


def retry_delay_s(num_delivered: int) -> float:
    """Growing redelivery delay: 0.25 s, 0.5 s, 1 s, … capped at 30 s."""
    return float(min(0.25 * 2 ** max(num_delivered - 1, 0), 30.0))


def consumer_durable(
    service: str, stream: Stream, partitioning: Partitioning, partition: int, strays: bool = False
) -> str:
    """The durable name of a partition's (or the strays') consumer of ``stream``: what the
    server's permissions for the service list (shared.ops.auth)."""
    if strays:
        return durable_name(f"{service}-strays", stream)
    return durable_name(partitioning.unit(service, partition).replace(".", "-"), stream)


class Consumer:
    """One durable pull consumer of a service: its pull, its decoding and its ack policy.

    The service's ``BatchLoop`` takes what all its consumers have ready and applies it together.
    """

    def __init__(
        self,
        *,
        service: str,
        spec: ConsumerSpec,
        nc: Client,
        batch_size: int,
        max_deliveries: int,
        partitioning: Partitioning = UNPARTITIONED,
        partition: int = 0,
        strays: bool = False,
    ) -> None:
        self.service = service
        self.spec = spec
        self.partitioning = partitioning
        self.partition = partition
        self.strays = strays
        """A strays consumer reads a partitioned stream's unrenamed subjects: the wrong shapes the
        transform left alone (shared.partitions). It only dead-letters."""
        self._nc = nc
        self._js = nc.jetstream()
        self._batch_size = batch_size
        self._max_deliveries = max_deliveries
        self.name = ""
        self._puller: Puller | None = None

    @property
    def durable(self) -> str:
        return consumer_durable(self.service, self.spec.stream, self.partitioning, self.partition, self.strays)

    @property
    def filters(self) -> list[str]:
        if self.strays:
            return self.spec.filter_subjects
        return self.spec.partition_filters(self.partitioning, self.partition)

    async def start(self, arrived: asyncio.Event) -> None:
        """Ensure the durable consumer exists and start pulling; ``arrived`` is set on every delivery."""
        self.name = await ensure_consumer(self._js, self.durable, self.spec.stream, self.filters)
        self._puller = Puller(self._nc, self.spec.stream.value, self.name, self._batch_size, arrived)
        await self._puller.start()

    async def take(self) -> list[Msg]:
        """What has been delivered, up to a batch, without waiting."""
        assert self._puller is not None, "start() first"
        return await self._puller.take_ready(self._batch_size)

    async def info(self, timeout: float) -> ConsumerInfo:
        """The server's view of this durable consumer: what it has pending and unacknowledged."""
        info: ConsumerInfo = await self._js.consumer_info(self.spec.stream.value, self.name, timeout=timeout)
        return info

    async def close(self) -> None:
        if self._puller is not None:
            await self._puller.close()

    def decode(self, msg: Msg) -> Decoded:
        if self.strays:
            self.spec.decode(msg.subject, msg.data)  # the real reason, when there is one
            raise BadMessage("unpartitioned", f"{msg.subject} was stored without a partition (docs/partitions.md)")
        if not self.partitioning.partitioned:
            return Decoded(msg, *self.spec.decode(msg.subject, msg.data))
        partition, subject = split_stored(msg.subject)
        decoded = Decoded(msg, *self.spec.decode(subject, msg.data))
        key_of = decoded.route.key
        key = key_of(decoded.envelope, decoded.data) if key_of else decoded.envelope.order_id
        owner = key if isinstance(key, int) else self.partitioning.of(key)
        if partition != self.partition or owner != self.partition:
            raise BadMessage("wrong_partition", f"{msg.subject}: its key {key!r} is in partition {owner}")
        return decoded

    def event_type_of(self, msg: Msg) -> str:
        """The routed event type a message's subject names, or ``unknown``: a metric's label, so
        only types this consumer routes, never whatever a bad subject says."""
        published = split_stored(msg.subject)[1] if self.partitioning.partitioned else msg.subject
        event_type = published.rpartition(".")[0]
        return event_type if event_type in self.spec.routes else "unknown"

    async def settle(self, msg: Msg, outcome: Outcome, event_type: str) -> str:
        """The ack policy: the one place that acks, naks or terms a message, and counts what it
        did; returns that (a ``metrics`` outcome)."""
        match outcome:
            case Processed():
                await msg.ack()
                done = metrics.PROCESSED
            case Duplicate():
                await msg.ack()
                done = metrics.DUPLICATE
            case DeadLetter(reason=reason, detail=detail):
                return await self._dead_letter(msg, reason, detail, event_type)
            case Retry(transient=transient, error=error):
                deliveries = msg.metadata.num_delivered
                if not transient and deliveries >= self._max_deliveries:
                    detail = f"{deliveries} deliveries; last error {error}"
                    return await self._dead_letter(msg, "max_deliveries", detail, event_type)
                await msg.nak(delay=retry_delay_s(deliveries))
                done = metrics.RETRIED
        metrics.handled(self.service, event_type, done)
        return done

    async def _dead_letter(self, msg: Msg, reason: str, detail: str, event_type: str) -> str:
        meta = msg.metadata
        seq = meta.sequence.stream
        original_headers = msg.headers or {}
        # As published: a public stream stores an event renamed by partition (shared.partitions).
        published = split_stored(msg.subject)[1] if self.spec.stream in PUBLIC_STREAMS else msg.subject
        headers = dict(
            zip(
                DLQ_HEADERS,
                (
                    reason,
                    _header_safe(detail),
                    self.service,
                    self.name,
                    published,
                    meta.stream,
                    str(seq),
                    original_headers.get(MSG_ID_HEADER, ""),
                    str(meta.num_delivered),
                ),
                strict=True,
            )
        )
        if published != msg.subject:
            headers[STORED_SUBJECT_HEADER] = msg.subject
        # Idempotent: a crash after this publish but before term dead-letters the same
        # message again under the same id, which the DLQ stream's duplicate window drops.
        headers[MSG_ID_HEADER] = f"{self.name}:{meta.stream}:{seq}"
        try:
            await self._js.publish(dlq_subject(self.service), msg.data, headers=headers, timeout=5.0)
        except Exception as exc:
            # Not in the DLQ yet, so not terminated: it comes back and is dead-lettered then.
            log.warning("dlq.publish_failed", error=repr(exc), reason=reason)
            await msg.nak(delay=retry_delay_s(meta.num_delivered))
            metrics.handled(self.service, event_type, metrics.RETRIED)
            return metrics.RETRIED
        await msg.term()
        metrics.handled(self.service, event_type, metrics.DEAD_LETTERED, reason)
        log.warning(
            "event.dead_lettered",
            reason=reason,
            detail=detail,
            subject=msg.subject,
            stream_sequence=seq,
        )
        return metrics.DEAD_LETTERED


class BatchLoop:
    """A service's one processing loop: group commit across all its consumers.

    Each round takes whatever every consumer has ready (never waiting for more), decodes it,
    applies it all in one transaction, hands the committed events to the relay, and settles
    each message by its own outcome. One loop, not one per consumer: separate loops would
    queue for the one SQLite writer, each with a transaction of its own.
    """

    def __init__(self, nc: Client, consumers: Sequence[Consumer], store: Store, relay: Relay) -> None:
        self.consumers = consumers
        self._nc = nc
        self._store = store
        self._relay = relay
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        for consumer in self.consumers:
            await consumer.start(self._arrived)

    async def run(self, stop: asyncio.Event) -> None:
        """Process rounds until ``stop``; the round in hand is always finished, and what was
        delivered but not taken is handed back for the next run."""
        try:
            async with forward(stop, self._arrived):  # a stop also ends the idle wait
                await self._rounds(stop)
        finally:
            for consumer in self.consumers:
                await consumer.close()

    async def _rounds(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            self._arrived.clear()  # before looking, so a delivery while we look is not missed
            try:
                taken = [(c, msg) for c in self.consumers for msg in await c.take()]
            except Exception as exc:  # NATS away or reconnecting: wait, do not spin.
                failures += 1
                log.warning("consumer.fetch_failed", error=repr(exc), attempt=failures)
                await sleep_unless_stopped(stop, reconnect_backoff_s(failures))
                continue
            failures = 0
            if taken:
                await self.process(taken)
            else:
                await wait_event(self._arrived, IDLE_WAIT_S)

    async def process(self, taken: Sequence[tuple[Consumer, Msg]]) -> list[Outcome]:
        """Decode, apply in one transaction, then settle each message by its own outcome."""
        started = time.perf_counter()
        outcomes: list[Outcome | None] = [None] * len(taken)
        decoded: list[tuple[int, Decoded]] = []
        for i, (consumer, msg) in enumerate(taken):
            try:
                decoded.append((i, consumer.decode(msg)))
            except BadMessage as bad:
                outcomes[i] = DeadLetter(bad.reason, bad.detail)
        types = {i: item.envelope.type for i, item in decoded}
        spans = _start_spans(taken, decoded, types) if tracing.enabled() else {}
        if decoded:
            await self._apply(decoded)
            for i, item in decoded:
                outcomes[i] = item.outcome
        final = [o if o is not None else Retry(transient=True, error="no outcome") for o in outcomes]
        # Committed: the events go out before the acks, in the same write.
        await self._relay.send([record for o in final if isinstance(o, Processed) for record in o.records])
        for i, ((consumer, msg), outcome) in enumerate(zip(taken, final, strict=True)):
            try:
                done = await consumer.settle(msg, outcome, types.get(i) or consumer.event_type_of(msg))
            except Exception as error:
                # NATS went away between commit and ack: the message comes back after ack_wait
                # and the inbox recognises it, so nothing is lost or applied twice.
                log.warning("consumer.settle_failed", consumer=consumer.name, error=repr(error))
                done = metrics.RETRIED
            if i in spans:
                tracing.finish(spans[i], done, _failure(outcome) if done != metrics.PROCESSED else "")
        metrics.round_done(taken[0][0].service, time.perf_counter() - started, len(taken))
        return final

    async def _apply(self, batch: Sequence[tuple[int, Decoded]]) -> None:
        try:
            # The loop has nothing to do until the round commits: it keeps off the GIL the
            # transaction's thread needs, and reads what came meanwhile in one go after.
            with reading_paused(self._nc):
                await self._store.run(functools.partial(self._apply_batch, batch))
        except Exception as exc:
            # BEGIN or COMMIT failed: nothing of this batch was stored. That is the store's
            # trouble (a lock, a full disk), not the messages', so it never counts towards
            # dead-lettering them. Dead letters and duplicates decided above still stand.
            log.warning("batch.rolled_back", error=repr(exc))
            for _, item in batch:
                if isinstance(item.outcome, Processed) or item.outcome is None:
                    item.outcome = Retry(transient=True, error=repr(exc))

    def _apply_batch(self, batch: Sequence[tuple[int, Decoded]], tx: sqlite3.Connection) -> None:
        """Group commit: the whole batch in one transaction, each message keeping its own outcome.

        Optimistic: the batch first runs straight through, as almost every batch succeeds, with
        one inbox lookup, one inbox insert and one outbox insert for the whole round. If any
        message raises, everything the batch did is rolled back and it runs again with a
        savepoint per message, so the failure undoes only itself (its neighbours' handlers may
        then log twice).
        """
        try:
            with savepoint(tx, "batch"):
                self._apply_straight(batch, tx)
            return
        except Exception:
            pass
        for _, item in batch:
            item.outcome = self._apply_one_isolated(tx, item)

    def _apply_straight(self, batch: Sequence[tuple[int, Decoded]], tx: sqlite3.Connection) -> None:
        seen = inbox.seen(tx, [item.envelope.event_id for _, item in batch])
        fresh: list[Envelope] = []
        emitted: list[OutboxRecord] = []
        steps: list[tuple[Event, str | None]] = []  # sub-steps, sent as one batch per partition
        last: Decoded | None = None
        for _, item in batch:
            env = item.envelope
            with about_message(env.type, env.order_id, env.event_id), tracing.handling(item.traceparent):
                seen_as = seen.get(env.event_id)
                if seen_as is not None:  # before, or earlier in this round
                    if reused := inbox.reused_id(env, seen_as):
                        raise reused
                    log.debug("event.duplicate_skipped")
                    item.outcome = Duplicate()
                    continue
                seen[env.event_id] = (env.type, env.order_id)
                events = item.route.handler(tx, env, item.data)
                records = outbox.from_events([e for e in events if e.partition is None], env.event_id, item.traceparent)
                steps += [(_in_span(e, item.traceparent), env.event_id) for e in events if e.partition is not None]
                log.debug("event.processed", emitted=[e.type for e in events])
                fresh.append(env)
                emitted.extend(records)
                item.outcome = Processed(records)
                last = item
        if steps:
            batches = outbox.from_events(batch_steps(steps), None)
            emitted.extend(batches)
            assert last is not None and isinstance(last.outcome, Processed)
            last.outcome = Processed([*last.outcome.records, *batches])  # the relay sends them with the round
        inbox.record_all(tx, fresh)
        outbox.insert(tx, emitted)

    def _apply_one(self, tx: sqlite3.Connection, item: Decoded) -> Processed | Duplicate:
        env = item.envelope
        with about_message(env.type, env.order_id, env.event_id), tracing.handling(item.traceparent):
            if not inbox.record(tx, env):
                log.debug("event.duplicate_skipped")
                return Duplicate()
            events = item.route.handler(tx, env, item.data)
            caused = [(_in_span(e, item.traceparent), env.event_id) for e in events]
            records = outbox.add(tx, batch_steps(caused), env.event_id, item.traceparent)
            log.debug("event.processed", emitted=[e.type for e in events])
            return Processed(records)

    def _apply_one_isolated(self, tx: sqlite3.Connection, item: Decoded) -> Outcome:
        env = item.envelope
        try:
            with savepoint(tx):
                return self._apply_one(tx, item)
        except BadMessage as bad:
            return DeadLetter(bad.reason, bad.detail)
        except Exception as exc:
            transient = is_transient_db_error(exc)
            with about_message(env.type, env.order_id, env.event_id):
                log.exception("handler.failed", transient=transient, deliveries=item.msg.metadata.num_delivered)
            return Retry(transient=transient, error=repr(exc))


def _start_spans(
    taken: Sequence[tuple[Consumer, Msg]], decoded: Sequence[tuple[int, Decoded]], types: Mapping[int, str]
) -> dict[int, Span]:
    """A span per message of the round, made before its transaction (which may run twice); a
    batch of sub-steps has none, as each of its steps has its own (shared.steps)."""
    items = dict(decoded)
    spans: dict[int, Span] = {}
    for i, (consumer, msg) in enumerate(taken):
        item = items.get(i)
        if item is not None and isinstance(item.data, StepBatch):
            continue
        event_type = types.get(i) or consumer.event_type_of(msg)
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": consumer.name,
            "messaging.batch.message_count": len(taken),
        }
        if item is not None:
            env = item.envelope
            attributes |= {"messaging.message.id": env.event_id, "saga.order_id": env.order_id}
            if env.causation_id:
                attributes["saga.causation_id"] = env.causation_id
        span = tracing.start_handling(msg.headers, f"handle {event_type}", attributes)
        if span is None:
            continue
        spans[i] = span
        if item is not None:
            item.traceparent = tracing.traceparent_of(span)
    return spans


def _in_span(event: Event, traceparent: str | None) -> Event:
    """A sub-step carries the span it was emitted in (its row of the batch keeps it)."""
    if traceparent is None or event.traceparent is not None:
        return event
    return dataclasses.replace(event, traceparent=traceparent)


def _failure(outcome: Outcome) -> str:
    match outcome:
        case DeadLetter(reason=reason, detail=detail):
            return f"{reason}: {detail}" if detail else reason
        case Retry(error=error):
            return error or "retried"
    return ""


def _header_safe(text: str, limit: int = 1024) -> str:
    one_line = " ".join(text.split())
    return one_line[:limit]
