"""Sub-steps between a service's own partitions, batched: one message per partition per round.

A sub-step (docs/partitions.md) is an Event with a ``partition``. Sent one message each, they
would add a publish, a store and a delivery per order and hop: a third more messages per saga.
But a round commits many orders at once, and its sub-steps for one partition can travel
together. So the round's sub-steps become one ``<service>.steps`` event per destination
partition. It is written to the outbox in the round's transaction and applied by the receiving
partition in one transaction. That partition dedups the batch by its event id, and every
sub-step's handler is a state machine with its barrier, so a batch sent again changes nothing.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import Field

from shared import tracing
from shared.envelope import BadMessage, Envelope, Event, EventData, new_event_id, parse_data
from shared.subjects import ORDER_ID_PATTERN

STEPS = "steps"
"""The event name of a batch: ``<service>.steps``."""

MAX_STEPS = 10_000
BATCH_BUDGET_BYTES = 512 * 1024
"""A batch stays well under the server's ``max_payload`` (1 MiB, shared.ops.auth): a round of
thousands of orders with a hundred long skus each would otherwise not fit in one message."""


def _step_bound(data: dict[str, Any]) -> int:
    """An upper bound of a step's JSON size, without encoding it: every field but a list of
    items is bounded by the contract (ids and reasons of at most 128 characters), and an item
    (a sku of at most 128 characters and a quantity) takes under 160 bytes."""
    items = data.get("items")
    return 1024 + 160 * (len(items) if isinstance(items, list) else 0)


StepType = Annotated[str, Field(min_length=1, max_length=128)]
_TypeIndex = Annotated[int, Field(ge=0)]
_OrderId = Annotated[str, Field(pattern=ORDER_ID_PATTERN.pattern)]
_CausationId = Annotated[str, Field(min_length=1, max_length=128)] | None
StepRow = (
    tuple[_TypeIndex, _OrderId, _CausationId, dict[str, Any]]
    | tuple[_TypeIndex, _OrderId, _CausationId, dict[str, Any], Annotated[str, Field(max_length=128)]]
)
"""One step: ``[index into types, order_id, causation_id, data]``, and when tracing, its cause's
``traceparent`` last. Rows, not objects with their keys and type spelt out each time:
partitioned, the server's work grows with the bytes it stores and delivers, and the steps were
most of the bytes partitioning adds (performance.md)."""


class StepBatch(EventData):
    partition: Annotated[int, Field(ge=0)]
    """The partition every step of the batch is for."""
    types: Annotated[list[StepType], Field(min_length=1, max_length=64)]
    """The step types of the batch, each once."""
    steps: Annotated[list[StepRow], Field(min_length=1, max_length=MAX_STEPS)]


def batch_steps(caused: Sequence[tuple[Event, str | None]]) -> list[Event]:
    """The round's events, its sub-steps merged into one batch per (service, partition);
    ``caused`` pairs each event with the event that caused it."""
    saga: list[Event] = []
    batches: dict[tuple[str, int], list[tuple[Event, str | None]]] = {}
    for event, cause in caused:
        if event.partition is None:
            saga.append(event)
            continue
        domain = event.type.partition(".")[0]
        batches.setdefault((domain, event.partition), []).append((event, cause))
    for (domain, partition), steps in batches.items():
        chunk: list[tuple[Event, str | None]] = []
        size = 0
        for step in steps:
            bound = _step_bound(step[0].data)
            if chunk and (size + bound > BATCH_BUDGET_BYTES or len(chunk) == MAX_STEPS):
                saga.append(_batch(domain, partition, chunk))
                chunk, size = [], 0
            chunk.append(step)
            size += bound
        saga.append(_batch(domain, partition, chunk))
    return saga


def _batch(domain: str, partition: int, steps: list[tuple[Event, str | None]]) -> Event:
    types: dict[str, int] = {}
    rows = [
        [types.setdefault(e.type, len(types)), e.order_id, cause, e.data, *([e.traceparent] if e.traceparent else [])]
        for e, cause in steps
    ]
    data = {"partition": partition, "types": list(types), "steps": rows}
    return Event(f"{domain}.{STEPS}", f"{STEPS}-{new_event_id()}", data, partition)


StepHandler = Callable[[sqlite3.Connection, Envelope, Any], list[Event]]


def apply_batch(
    routes: Mapping[str, tuple[type[EventData], StepHandler]], tx: sqlite3.Connection, env: Envelope, data: StepBatch
) -> list[Event]:
    """Each step of the batch by its own handler, in order, in the caller's transaction."""
    emitted: list[Event] = []
    for n, row in enumerate(data.steps):
        type_index, order_id, causation_id, step_data = row[:4]
        if type_index >= len(data.types):
            raise BadMessage("invalid_data", f"step {n}: type {type_index} of {len(data.types)}")
        step_type = data.types[type_index]
        route = routes.get(step_type)
        if route is None:
            raise BadMessage("unroutable", f"step {n}: no handler for {step_type}")
        model, handler = route
        # The batch's validation already checked every field as Envelope would.
        inner = Envelope.model_construct(
            event_id=f"{env.event_id}:{n}",
            type=step_type,
            order_id=order_id,
            occurred_at=env.occurred_at,
            causation_id=causation_id,
            data=step_data,
        )
        caused = handler(tx, inner, parse_data(model, inner))
        if len(row) == 5 and tracing.enabled():
            caused = _traced_step(tx, row[4], inner, caused)
        emitted += caused
    return emitted


def _traced_step(tx: sqlite3.Connection, cause: str, step: Envelope, caused: list[Event]) -> list[Event]:
    """The step as a span of its own, a child of its cause; what it emits is in that span. The span
    ends only if the batch's transaction commits: a batch retried step by step makes it again."""
    traceparent = tracing.child_until_commit(
        tx,
        cause,
        f"handle {step.type}",
        {"saga.order_id": step.order_id, "saga.event_id": step.event_id, "saga.causation_id": step.causation_id or ""},
    )
    if traceparent is None:
        return caused
    return [dataclasses.replace(event, traceparent=traceparent) for event in caused]


def partition_of_batch(env: Envelope, data: StepBatch) -> int:
    return data.partition
