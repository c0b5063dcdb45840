"""``saga-web``: the saga explorer, a page an operator opens to see orders and the saga's flow.

``/`` lists orders, newest first, live (Server-Sent Events on ``/events``), filterable by
status; ``/orders/<order_id>`` is one order's history across every stream (a timeline with its
causes, compensations and dead letters marked, and the graph of what caused what) and what each
service holds for it now; ``/flow`` is the graph of which event type caused which, counted over
everything the streams hold, with the paths orders fall off marked.

It reads only through NATS, as ``saga-audit`` does: an ordered consumer tails each stream from
its first message, and the services' APIs answer for their state. It writes nothing. It binds
127.0.0.1 unless told otherwise: it shows customers and amounts, to anyone who can reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from shared.connection import CredentialsError, RefusedByServer, connect, nats_url_from_env
from shared.logging import configure_logging, get_logger
from shared.ops import explorer
from shared.ops.audit import all_pages
from shared.ops.client import ApiErrorReply, get_order, request
from shared.partitions import PART_PREFIX
from shared.subjects import (
    API_INVENTORY_RESERVATIONS,
    API_ORDERS_LIST,
    API_PAYMENTS_LIST,
    ORDER_ID_PATTERN,
    STREAM_SUBJECTS,
    Stream,
)

log = get_logger("web")

DEFAULT_PORT = 8090
LIST_LIMIT = 500
"""Orders the list page holds: the newest (the API pages through all, saga-audit reads all)."""
REFRESH_S = 0.2
"""How often orders touched by new events are read again from order_svc."""
KEEPALIVE_S = 15.0
STREAMS_CHECK_S = 5.0
"""How often streams that did not exist yet are looked for."""
STATUSES = ("PENDING", "CONFIRMED", "CANCELLED")


@dataclass
class Explorer:
    """What the page knows: orders (as order_svc last answered), every order's events, the flow."""

    nc: Client
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: defaultdict[str, list[explorer.Seen]] = field(default_factory=lambda: defaultdict(list))
    flow: explorer.Flow = field(default_factory=explorer.Flow)
    listeners: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    _dirty: set[str] = field(default_factory=set)
    _requested_at: dict[str, float] = field(default_factory=dict)
    """When an order's request was stored, until order_svc is seen to hold the order."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _tailed: dict[Stream, Any] = field(default_factory=dict)
    """Each stream's ordered consumer, once it exists."""

    async def start(self) -> None:
        # Tail first, then list: an order placed between the two is in one or the other.
        await self._tail_new_streams()
        try:
            listed, _ = await all_pages(self.nc, API_ORDERS_LIST, "orders", "order_id", 500)
        except (ApiErrorReply, nats.errors.Error, TimeoutError) as exc:
            log.warning("web.list_failed", error=repr(exc))  # the tail still fills the list
            listed = {}
        for order_id, order in listed.items():
            self.orders[order_id] = {**self.orders.get(order_id, {}), **order}
        self._tasks += [asyncio.create_task(self._refresh_dirty()), asyncio.create_task(self._watch_streams())]

    async def _tail_new_streams(self) -> None:
        """An ordered consumer from the first message of every stream not tailed yet (the services
        make the streams, and the step streams exist only when partitioned)."""
        js = self.nc.jetstream()
        for stream in Stream:
            if stream in self._tailed:
                continue
            try:
                info = await js.stream_info(stream.value)
            except NotFoundError:
                continue
            filters = [STREAM_SUBJECTS[stream]]
            if info.config.subject_transform is not None:  # partitioned: stored renamed
                filters.append(f"{PART_PREFIX}.*.{STREAM_SUBJECTS[stream]}")
            self._tailed[stream] = await js.subscribe(
                filters[0],
                stream=stream.value,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, filter_subjects=filters),
                cb=self._on_message,
            )
            log.info("web.tailing", stream=stream.value, filters=filters)

    async def _watch_streams(self) -> None:
        while len(self._tailed) < len(Stream):
            await asyncio.sleep(STREAMS_CHECK_S)
            try:
                await self._tail_new_streams()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("web.tail_failed", error=repr(exc))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for sub in self._tailed.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        meta = msg.metadata
        for event in explorer.decode(
            meta.stream, meta.sequence.stream, meta.timestamp.timestamp(), msg.subject, msg.headers, msg.data
        ):
            self.events[event.order_id].append(event)
            self.flow.add(event)
            if event.stream == Stream.ORDERS.value or event.dead_letter:
                self._touch(event)

    def _touch(self, event: explorer.Seen) -> None:
        if not ORDER_ID_PATTERN.match(event.order_id):
            return
        if event.type == "orders.requested" and not event.dead_letter:
            self._requested_at.setdefault(event.order_id, event.time)
        self._dirty.add(event.order_id)

    async def _refresh_dirty(self) -> None:
        """Orders whose events moved on, read again from order_svc: the list shows its state,
        not a guess from events, and only orders it holds (a request it refused is no order)."""
        while True:
            await asyncio.sleep(REFRESH_S)
            dirty, self._dirty = self._dirty, set()
            for order_id in dirty:
                try:
                    fresh = await get_order(self.nc, order_id)
                except (ApiErrorReply, nats.errors.Error, TimeoutError) as exc:
                    log.warning("web.refresh_failed", order_id=order_id, error=repr(exc))
                    self._dirty.add(order_id)
                    continue
                if fresh is None:  # not yet: its next event brings it back
                    continue
                known = self.orders.get(order_id)
                if known is None:
                    placed = self._requested_at.pop(order_id, None)
                    known = self.orders[order_id] = {"created_at": placed or time.time()}
                if any(known.get(k) != v for k, v in fresh.items()):
                    known.update(fresh)
                    self._publish(known)

    def _publish(self, order: dict[str, Any]) -> None:
        for queue in list(self.listeners):
            queue.put_nowait(dict(order))

    def newest(self, status: str | None, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
        found = [o for o in self.orders.values() if status is None or o.get("status") == status]
        found.sort(key=lambda o: (o.get("created_at") or 0, o["order_id"]), reverse=True)
        return found[:limit]

    async def held_for(self, order_id: str) -> dict[str, Any]:
        """What each service holds for the order now, by asking it."""
        held: dict[str, Any] = {}
        held["order_svc"] = await _answer(get_order(self.nc, order_id))
        held["payment_svc"] = await _answer(_row(self.nc, API_PAYMENTS_LIST, "payments", order_id))
        held["inventory_svc"] = await _answer(_row(self.nc, API_INVENTORY_RESERVATIONS, "reservations", order_id))
        return held


async def _answer(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except (ApiErrorReply, nats.errors.Error, TimeoutError) as exc:
        return {"unavailable": repr(exc)}


def just_before(key: str) -> str:
    """A keyset cursor whose next key is ``key`` if it exists: order ids are ASCII below 0x7f, so
    no valid id lies between this and ``key``."""
    return key[:-1] + chr(ord(key[-1]) - 1) + "\x7f"


async def _row(nc: Client, subject: str, items: str, order_id: str) -> list[dict[str, Any]] | None:
    """The rows a list endpoint holds for ``order_id`` (one per partition that holds a part)."""
    reply = await request(nc, subject, {"after": just_before(order_id), "limit": 1})
    rows = [row for row in reply[items] if row.get("order_id") == order_id]
    return rows or None


# --- pages ----------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse} td,th{padding:3px 10px;border-bottom:1px solid #e3e6ea;text-align:left}
th{background:#f3f5f7} tr.new{animation:flash 2s} @keyframes flash{from{background:#fff6c0}to{background:none}}
.CONFIRMED{color:#167a3a} .CANCELLED{color:#b3261e} .PENDING{color:#8a6a00}
tr.failure td,tr.dead_letter td{background:#fdecea} tr.compensation td{background:#fff4e5}
.tag{font-size:.8em;padding:1px 6px;border-radius:8px;background:#e8eaed}
.tag.failure,.tag.dead_letter{background:#f7c8c4} .tag.compensation{background:#ffd9a8}
.graph{overflow-x:auto} .flow rect{fill:#eef3fb;stroke:#6b8bc3} .flow text{font-size:11px}
.flow .request rect{fill:#e8eaed;stroke:#777} .flow .step rect{fill:#f4f4f4;stroke:#999;stroke-dasharray:3}
.flow .failure rect,.flow .dead_letter rect{fill:#fdecea;stroke:#b3261e}
.flow .compensation rect{fill:#fff4e5;stroke:#c77700}
.flow .edge path{stroke:#6b8bc3;stroke-width:1.5} .flow .edge.failing path{stroke:#b3261e}
.flow .edge text{fill:#555} nav a{margin-right:1em} pre{margin:0;white-space:pre-wrap}
"""


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><nav><a href='/'>orders</a><a href='/flow'>flow</a></nav>"
        f"{body}</body></html>"
    )


LIST_SCRIPT = """
const rows = new Map();
const table = document.getElementById('orders');
const filter = document.getElementById('status');
const money = c => c == null ? '' : (c / 100).toFixed(2);
const when = t => t ? new Date(t * 1000).toLocaleTimeString() : '';
function row(o, fresh) {
  const tr = document.createElement('tr');
  tr.dataset.orderId = o.order_id; tr.dataset.created = o.created_at || 0; tr.dataset.status = o.status;
  if (fresh) tr.className = 'new';
  const cells = [when(o.created_at), o.order_id, o.customer_id || '', money(o.total_cents), o.status, o.reason || ''];
  cells.forEach((text, i) => {
    const td = document.createElement('td');
    if (i == 1) { const a = document.createElement('a'); a.href = '/orders/' + encodeURIComponent(text);
      a.textContent = text; td.appendChild(a); } else td.textContent = text;
    if (i == 4) td.className = 'status ' + text;
    tr.appendChild(td);
  });
  tr.hidden = filter.value !== '' && filter.value !== o.status;
  return tr;
}
function upsert(o, fresh) {
  const tr = row(o, fresh), old = rows.get(o.order_id);
  rows.set(o.order_id, tr);
  if (old) { old.replaceWith(tr); return; }
  const after = [...table.rows].find(r => Number(r.dataset.created) < Number(tr.dataset.created));
  table.insertBefore(tr, after || null);
}
filter.onchange = () => {
  history.replaceState(null, '', filter.value ? '?status=' + filter.value : '/');
  for (const tr of table.rows) tr.hidden = filter.value !== '' && filter.value !== tr.dataset.status;
};
fetch('/api/orders').then(r => r.json()).then(list => {
  list.reverse().forEach(o => upsert(o, false));
  document.body.dataset.loaded = 'yes';
  const live = new EventSource('/events');
  live.addEventListener('order', e => upsert(JSON.parse(e.data), true));
  live.onopen = () => { document.getElementById('live').textContent = 'live'; };
  live.onerror = () => { document.getElementById('live').textContent = 'reconnecting'; };
});
"""


def list_page(status: str | None) -> str:
    options = "".join(
        f"<option value='{s}'{' selected' if s == status else ''}>{s or 'every status'}</option>"
        for s in ("", *STATUSES)
    )
    return _page(
        "Orders",
        "<h1>Orders <span class='tag' id='live'>connecting</span></h1>"
        f"<p><label>Status <select id='status'>{options}</select></label> newest first</p>"
        "<table><thead><tr><th>placed</th><th>order</th><th>customer</th><th>total</th><th>status</th>"
        "<th>reason</th></tr></thead><tbody id='orders'></tbody></table>"
        f"<script>{LIST_SCRIPT}</script>",
    )


def order_page(order_id: str, events: list[explorer.Seen], held: dict[str, Any]) -> str:
    timeline = explorer.history(events)
    caused_by_index = explorer.causes(timeline)
    start = timeline[0].time if timeline else 0.0
    rows = []
    for n, e in enumerate(timeline):
        cause = caused_by_index[n]
        caused_by = (
            f"<a href='#event-{cause}'>↖ {escape(timeline[cause].type)}</a>"
            if cause is not None
            else escape(e.causation_id or "")
        )
        where = e.stream + (f" p{e.partition}" if e.partition is not None else "")
        note = e.reason or ""
        if e.dead_letter:
            note = f"dead-lettered by {e.service}: {e.dead_letter} {e.data.get('detail', '')}"
        rows.append(
            f"<tr id='event-{n}' class='event {e.kind}' data-type='{escape(e.type)}' data-kind='{e.kind}'>"
            f"<td>+{(e.time - start) * 1000:.0f} ms</td><td>{escape(e.service)}</td><td>{escape(e.subject)}</td>"
            f"<td><span class='tag {e.kind}'>{e.kind.replace('_', ' ')}</span></td><td>{caused_by}</td>"
            f"<td>{escape(where)} #{e.seq}</td><td>{escape(note)}</td></tr>"
        )
    state = "".join(
        f"<tr class='held' data-service='{service}'><th>{service}</th><td><pre>{escape(json.dumps(value, indent=1))}"
        "</pre></td></tr>"
        for service, value in held.items()
    )
    status = (held.get("order_svc") or {}).get("status", "")
    table = (
        "<table id='timeline'><thead><tr><th>when</th><th>from</th><th>subject</th><th>kind</th><th>caused by</th>"
        f"<th>stored</th><th>note</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p id='timeline'>No events of this order are in the streams (yet, or any more).</p>"
    )
    return _page(
        f"Order {order_id}",
        f"<h1>Order {escape(order_id)} <span class='status {escape(str(status))}' id='order-status'>"
        f"{escape(str(status))}</span></h1>"
        f"<h2>History</h2>{table}"
        f"<h2>What caused what</h2><div class='graph'>{explorer.order_svg(timeline)}</div>"
        f"<h2>What each service holds now</h2><table id='held'>{state}</table>",
    )


def flow_page(flow: explorer.Flow) -> str:
    outcomes = "".join(
        f"<tr><td class='{escape(k.split()[0])}'>{escape(k)}</td><td>{v}</td></tr>"
        for k, v in flow.outcomes.most_common()
    )
    unlinked = (
        f"<p>{flow.unlinked} event(s) name a cause no stream holds any more (retention).</p>" if flow.unlinked else ""
    )
    return _page(
        "Flow",
        "<h1>The saga as it ran</h1><p>Every event type the streams hold, with how many; every arrow a"
        " cause and its effect (<code>causation_id</code>), with how many times. Red: the paths orders"
        " fall off the happy path, and their compensations.</p>"
        f"<div class='graph'>{explorer.flow_svg(flow)}</div>{unlinked}"
        f"<h2>How orders ended</h2><table id='outcomes'>{outcomes}</table>",
    )


# --- HTTP -----------------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamWriter, dict[str, list[str]]], Awaitable[None]]


async def _respond(writer: asyncio.StreamWriter, status: str, body: str, content_type: str = "text/html") -> None:
    data = body.encode()
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}; charset=utf-8\r\nContent-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()


class WebServer:
    def __init__(self, state: Explorer) -> None:
        self.state = state

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing here needs them
            method, target, *_ = line.decode("latin-1").split() or ["", ""]
            if method != "GET":
                await _respond(writer, "405 Method Not Allowed", "GET only", "text/plain")
                return
            url = urlsplit(target)
            await self.route(writer, unquote(url.path), parse_qs(url.query))
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def route(self, writer: asyncio.StreamWriter, path: str, query: dict[str, list[str]]) -> None:
        asked = query.get("status") or [""]
        status = asked[0] if asked[0] in STATUSES else None
        if path == "/":
            await _respond(writer, "200 OK", list_page(status))
        elif path == "/api/orders":
            await _respond(writer, "200 OK", json.dumps(self.state.newest(status)), "application/json")
        elif path == "/events":
            await self.stream_events(writer)
        elif path == "/flow":
            await _respond(writer, "200 OK", flow_page(self.state.flow))
        elif path.startswith("/orders/") and ORDER_ID_PATTERN.match(order_id := path.removeprefix("/orders/")):
            held = await self.state.held_for(order_id)
            await _respond(writer, "200 OK", order_page(order_id, self.state.events.get(order_id, []), held))
        else:
            await _respond(writer, "404 Not Found", _page("Not found", f"<p>No page {escape(path)}.</p>"))

    async def stream_events(self, writer: asyncio.StreamWriter) -> None:
        """Server-Sent Events: each order as it changes, until the browser goes."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.state.listeners.add(queue)
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                b"Connection: keep-alive\r\n\r\nretry: 1000\n\n"
            )
            await writer.drain()
            while True:
                try:
                    order = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    writer.write(f"event: order\ndata: {json.dumps(order)}\n\n".encode())
                except TimeoutError:
                    writer.write(b": keepalive\n\n")  # and finds out when the browser has gone
                await writer.drain()
        finally:
            self.state.listeners.discard(queue)


async def serve(args: argparse.Namespace) -> int:
    nc = await connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=-1)
    state = Explorer(nc)
    try:
        await state.start()
        server = await asyncio.start_server(WebServer(state).handle, args.host, args.port)
        port = server.sockets[0].getsockname()[1]
        print(f"saga-web: serving http://{args.host}:{port}/ (reading {args.nats_url})", flush=True)
        async with server:
            await server.serve_forever()
    finally:
        await state.stop()
        await nc.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-web", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--nats-url", default=nats_url_from_env(), help="server(s), comma-separated (NATS_URL)")
    args = parser.parse_args(argv)
    configure_logging("saga-web", "json")
    try:
        code = asyncio.run(serve(args))
    except KeyboardInterrupt:
        code = 0
    except (RefusedByServer, CredentialsError) as exc:
        print(f"saga-web: cannot connect: {exc}", file=sys.stderr)
        code = 2
    except OSError as exc:
        print(f"saga-web: cannot serve: {exc}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
