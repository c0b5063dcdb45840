"""What ``saga-web`` shows, as pure functions of the messages the streams hold: one order's
history, and the flow (which event type causes which, how often) derived from what ran.

No NATS and no HTTP here (shared.ops.web reads and serves): a message goes in as its stream,
sequence, time, stored subject, headers and bytes, and comes out as ``Seen`` records.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

from shared.partitions import split_stored
from shared.steps import STEPS

CLIENT = "client"
"""Who publishes a request: not a service (docs/events.md)."""

EMITTER = {"orders": "order_svc", "payments": "payment_svc", "inventory": "inventory_svc"}
"""A saga event's emitter, by its domain; a sub-step's domain is its service's own name."""

FAILURES = frozenset({"orders.rejected", "payments.failed", "inventory.failed"})
COMPENSATIONS = frozenset({"orders.cancelled", "payments.refunded", "inventory.released"})
REQUESTS = frozenset({"orders.requested", "orders.cancel_requested"})
DEAD_LETTER = "dead letter"
"""The flow's node for messages a service dead-lettered (by the type they claimed to be)."""


@dataclass(frozen=True)
class Seen:
    """One event as a stream holds it: a saga event, a sub-step out of a batch, or a dead letter."""

    stream: str
    seq: int
    time: float
    subject: str
    """As published (a partitioned stream's ``part.<n>.`` prefix taken off)."""
    event_id: str
    type: str
    order_id: str
    causation_id: str | None
    data: Mapping[str, Any] = field(default_factory=dict)
    partition: int | None = None
    dead_letter: str | None = None
    """The reason, if this is a dead letter (its ``Dlq-*`` headers)."""
    dead_lettered_by: str | None = None
    step: int | None = None
    """Its index in its batch, if a sub-step (docs/partitions.md)."""
    batch_id: str | None = None
    """The event_id of its batch, if a sub-step: what the events a step emits name as their cause."""

    @property
    def names(self) -> list[str]:
        """What an effect's ``causation_id`` may call it: its event_id, or (a sub-step) its
        batch's, which is the message its handler ran in; ``cause_keys`` of the effect match."""
        return [self.event_id, *([f"{self.batch_id}|{self.order_id}"] if self.batch_id else [])]

    @property
    def cause_keys(self) -> list[str]:
        if not self.causation_id:
            return []
        return [self.causation_id, f"{self.causation_id}|{self.order_id}"]

    @property
    def service(self) -> str:
        """Who emitted it (a dead letter: who dead-lettered it)."""
        if self.dead_lettered_by:
            return self.dead_lettered_by
        if self.type in REQUESTS:
            return CLIENT
        domain = self.type.partition(".")[0]
        return EMITTER.get(domain, domain)

    @property
    def kind(self) -> str:
        """``request``, ``forward``, ``failure``, ``compensation``, ``step`` or ``dead_letter``."""
        if self.dead_letter:
            return "dead_letter"
        kind = _kind_of_type(self.type)
        if kind in ("forward", "step"):  # which one, its batch says: not the name of its type
            return "step" if self.step is not None else "forward"
        return kind

    @property
    def reason(self) -> str | None:
        reason = self.data.get("reason") if isinstance(self.data, Mapping) else None
        return str(reason) if reason else None


def decode(
    stream: str, seq: int, time: float, stored: str, headers: Mapping[str, str] | None, body: bytes
) -> list[Seen]:
    """The events one stored message holds: none if it is not an event (and not a dead letter),
    one for a saga event or a dead letter, one per step for a batch of sub-steps."""
    partition, subject = split_stored(stored)
    headers = headers or {}
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    reason = headers.get("Dlq-Reason")
    if reason is not None:  # a dead letter: whatever it was, by the subject it came on
        original = split_stored(headers.get("Dlq-Original-Subject", ""))[1]
        head, _, last = original.rpartition(".")
        return [
            Seen(
                stream,
                seq,
                time,
                original,
                str(doc.get("event_id") or headers.get("Dlq-Original-Msg-Id") or f"dlq-{seq}"),
                str(doc.get("type") or head or original),
                str(doc.get("order_id") or last),
                _text(doc.get("causation_id")),
                {"detail": headers.get("Dlq-Detail", "")},
                partition,
                dead_letter=reason,
                dead_lettered_by=headers.get("Dlq-Service") or None,
            )
        ]
    event_id, event_type, order_id = (_text(doc.get(k)) for k in ("event_id", "type", "order_id"))
    if not (event_id and event_type and order_id):
        return []
    raw = doc.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if event_type.endswith(f".{STEPS}"):
        return list(_steps(stream, seq, time, subject, event_id, data, partition))
    return [
        Seen(
            stream, seq, time, subject, event_id, event_type, order_id, _text(doc.get("causation_id")), data, partition
        )
    ]


def _steps(
    stream: str, seq: int, time: float, subject: str, batch_id: str, data: Mapping[str, Any], partition: int | None
) -> Iterable[Seen]:
    types = data.get("types") or []
    for n, row in enumerate(data.get("steps") or []):
        try:
            type_index, order_id, causation_id, step_data = row[:4]
            step_type = types[type_index]
        except (TypeError, ValueError, IndexError):
            continue
        # The event_id shared.steps gives the step, so what it caused names it as its cause.
        yield Seen(
            stream,
            seq,
            time,
            f"{step_type}.{order_id}",
            f"{batch_id}:{n}",
            str(step_type),
            str(order_id),
            _text(causation_id),
            step_data if isinstance(step_data, dict) else {},
            partition,
            step=n,
            batch_id=batch_id,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- one order ------------------------------------------------------------------------------


def history(events: Iterable[Seen]) -> list[Seen]:
    """One order's events in the order they were stored, each once (a re-send, a copy in the
    DLQ and the original are kept apart by stream)."""
    unique = {(e.stream, e.seq, e.step): e for e in events}
    return sorted(unique.values(), key=lambda e: (e.time, e.stream, e.seq, e.step or 0))


def causes(timeline: list[Seen]) -> list[int | None]:
    """For each event of one order's timeline, the index of its cause in it, if there."""
    first: dict[str, int] = {}
    for n, e in enumerate(timeline):
        if not e.dead_letter:
            for name in e.names:
                first.setdefault(name, n)
    return [next((first[k] for k in e.cause_keys if k in first), None) for e in timeline]


# --- the flow -------------------------------------------------------------------------------


@dataclass
class Flow:
    """Which event type causes which, counted over what actually ran. Fed event by event in any
    order across streams: an effect read before its cause waits for it."""

    nodes: Counter[str] = field(default_factory=Counter)
    edges: Counter[tuple[str, str]] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    """How orders ended: ``CONFIRMED``, ``CANCELLED <reason>``."""
    _type_of: dict[str, str] = field(default_factory=dict)
    """A cause's node by each of its ``names``."""
    _waiting: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """Effects whose cause is not read yet, by each of their ``cause_keys``."""
    _seen: set[tuple[str, int, int | None]] = field(default_factory=set)
    _effects: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    _effect_count: int = 0

    def add(self, event: Seen) -> None:
        key = (event.stream, event.seq, event.step)
        if key in self._seen:
            return
        self._seen.add(key)
        node = self.node_of(event)
        self.nodes[node] += 1
        if event.type == "orders.confirmed":
            self.outcomes["CONFIRMED"] += 1
        elif event.type == "orders.cancelled":
            self.outcomes[" ".join(["CANCELLED", *filter(None, [event.reason])])] += 1
        if not event.dead_letter:
            for name in event.names:
                self._type_of.setdefault(name, node)
                for effect_id in self._waiting.pop(name, []):
                    self._link(node, effect_id)
        if event.cause_keys:
            cause = next((self._type_of[k] for k in event.cause_keys if k in self._type_of), None)
            if cause is None:
                self._effect_count += 1
                effect_id = str(self._effect_count)
                self._effects[effect_id] = (node, event.cause_keys)
                for k in event.cause_keys:
                    self._waiting[k].append(effect_id)
            else:
                self.edges[(cause, node)] += 1

    def _link(self, cause: str, effect_id: str) -> None:
        """An effect waiting under several keys is linked by the first cause found, once."""
        waiting = self._effects.pop(effect_id, None)
        if waiting is None:
            return
        effect, keys = waiting
        for k in keys:
            if effect_id in self._waiting.get(k, []):
                self._waiting[k].remove(effect_id)
                if not self._waiting[k]:
                    del self._waiting[k]
        self.edges[(cause, effect)] += 1

    @property
    def unlinked(self) -> int:
        """Events whose cause is not (or no longer) in any stream."""
        return len(self._effects)

    @staticmethod
    def node_of(event: Seen) -> str:
        return DEAD_LETTER if event.dead_letter else event.type


def is_failure_path(source: str, target: str) -> bool:
    """An edge on the way an order falls off the happy path."""
    bad = FAILURES | COMPENSATIONS | {DEAD_LETTER}
    return source in bad or target in bad or "release" in target or "refund" in target


# --- drawing --------------------------------------------------------------------------------

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 40, 40, 26, 30


def layers(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Each node's column: the longest chain of causes before it (a cycle is cut where found)."""
    nodes = list(nodes)
    into: defaultdict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        if source != target:
            into[target].add(source)
    depth: dict[str, int] = {}

    def of(node: str, visiting: frozenset[str]) -> int:
        if node in depth:
            return depth[node]
        causes = [c for c in into[node] if c not in visiting]
        found = 1 + max((of(c, visiting | {node}) for c in causes), default=-1)
        depth[node] = found
        return found

    for node in nodes:
        of(node, frozenset())
    return {node: depth[node] for node in nodes}


def svg(
    nodes: Mapping[str, str],
    edges: Mapping[tuple[str, str], str],
    css_class: Mapping[str, str],
    failing: Iterable[tuple[str, str]] = (),
    links: Mapping[str, str] | None = None,
) -> str:
    """A left-to-right drawing: ``nodes`` (id: label) in columns by ``layers``, ``edges``
    (source, target: label) as arrows, ``failing`` ones in red; ``links``: a node's href."""
    if not nodes:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="0" height="0"></svg>'
    column = layers(nodes, edges)
    rows: defaultdict[int, list[str]] = defaultdict(list)
    for node in nodes:  # the order given is the order within a column
        rows[column[node]].append(node)
    at: dict[str, tuple[int, int]] = {}
    for x, members in rows.items():
        for y, node in enumerate(members):
            at[node] = (PAD + x * (NODE_W + GAP_X), PAD + y * (NODE_H + GAP_Y))
    width = PAD * 2 + (max(rows) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max(len(m) for m in rows.values()) * (NODE_H + GAP_Y) - GAP_Y
    failing = set(failing)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flow" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>',
    ]
    for (source, target), label in edges.items():
        if source not in at or target not in at:
            continue
        (sx, sy), (tx, ty) = at[source], at[target]
        x1, y1, x2, y2 = sx + NODE_W, sy + NODE_H // 2, tx, ty + NODE_H // 2
        if tx <= sx:  # back or within a column: loop around below
            x1, y1, x2, y2 = sx + NODE_W // 2, sy + NODE_H, tx + NODE_W // 2, ty + NODE_H
            bend = max(y1, y2) + GAP_Y + 10
            path = f"M {x1} {y1} C {x1} {bend}, {x2} {bend}, {x2} {y2}"
            lx, ly = (x1 + x2) // 2, bend - 4
        elif column[target] - column[source] > 1:  # over the columns between: through the gap above
            lane = min(sy, ty) - GAP_Y
            path = f"M {x1} {y1} C {x1 + GAP_X} {lane}, {x2 - GAP_X} {lane}, {x2} {y2}"
            lx, ly = (x1 + x2) // 2, lane + 10
        else:
            mid = (x1 + x2) // 2
            path = f"M {x1} {y1} C {mid} {y1}, {mid} {y2}, {x2} {y2}"
            lx, ly = mid, (y1 + y2) // 2 - 4
        cls = "edge failing" if (source, target) in failing else "edge"
        parts.append(
            f'<g class="{cls}" data-source="{escape(source)}" data-target="{escape(target)}">'
            f'<path d="{path}" fill="none" marker-end="url(#arrow)"/>'
            f'<text x="{lx}" y="{ly}" text-anchor="middle">{escape(label)}</text></g>'
        )
    for node, label in nodes.items():
        x, y = at[node]
        # Two lines: the type, then what follows it (a count, a reason), so a box stays narrow.
        first, split, rest = label.partition(" (")
        lines = [first, f"({rest}"] if split else [first]
        middle = x + NODE_W // 2
        texts = "".join(
            f'<tspan x="{middle}" dy="{0 if n == 0 else 14}">{escape(line)}</tspan>' for n, line in enumerate(lines)
        )
        top = y + NODE_H // 2 + (5 if len(lines) == 1 else -2)
        box = (
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{middle}" y="{top}" text-anchor="middle">{texts}</text>'
        )
        cls = f"node {css_class.get(node, '')}".strip()
        group = f'<g class="{cls}" data-node="{escape(node)}">{box}</g>'
        href = (links or {}).get(node)
        parts.append(f'<a href="{escape(href)}">{group}</a>' if href else group)
    parts.append("</svg>")
    return "".join(parts)


def flow_svg(flow: Flow) -> str:
    """The saga's shape as it ran: every event type with how many were stored, every cause →
    effect with how many times."""
    order = sorted(flow.nodes, key=lambda n: (_kind_rank(n), n))
    nodes = {n: f"{n} ({flow.nodes[n]})" for n in order}
    edges = {edge: str(count) for edge, count in flow.edges.items()}
    kinds = {n: _kind_of_type(n) for n in order}
    failing = [edge for edge in flow.edges if is_failure_path(*edge)]
    return svg(nodes, edges, kinds, failing)


def order_svg(events: Iterable[Seen]) -> str:
    """One order's events as a graph of what caused what (arrows from cause to effect)."""
    timeline = list(events)
    nodes = {
        f"#{n}": e.type + (f" ({e.reason})" if e.reason else "") + (" ✗" if e.dead_letter else "")
        for n, e in enumerate(timeline)
    }
    kinds = {f"#{n}": e.kind for n, e in enumerate(timeline)}
    links = {f"#{n}": f"#event-{n}" for n in range(len(timeline))}
    edges: dict[tuple[str, str], str] = {}
    failing = []
    for n, cause in enumerate(causes(timeline)):
        if cause is not None:
            edge = (f"#{cause}", f"#{n}")
            edges[edge] = ""
            if timeline[n].kind in ("failure", "compensation", "dead_letter"):
                failing.append(edge)
    return svg(nodes, edges, kinds, failing, links)


def _kind_of_type(node: str) -> str:
    if node == DEAD_LETTER:
        return "dead_letter"
    if node in REQUESTS:
        return "request"
    if node in FAILURES:
        return "failure"
    if node in COMPENSATIONS or "release" in node or "refund" in node:
        return "compensation"
    return "forward" if node.partition(".")[0] in EMITTER else "step"


def _kind_rank(node: str) -> int:
    return ["request", "forward", "step", "failure", "compensation", "dead_letter"].index(_kind_of_type(node))
