"""``saga-audit``: reconcile the three services' records, through their NATS APIs only.

It pages through every order, payment, reservation, account and sku, and lists every
discrepancy by order_id. ``--repair`` heals what re-sending an event can heal: it asks the
service that emitted the event which triggers the missing step to publish it again (its
outbox still holds it). That is safe because every handler is idempotent: a consumer that
already processed the event skips it by its event_id.

A saga in flight looks like a discrepancy for a few milliseconds (a cancelled order whose
refund is on its way), so a discrepancy counts only if it is still there ``--confirm-after``
seconds later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import nats
from nats.aio.client import Client

from shared.connection import CredentialsError, RefusedByServer, connect, nats_url_from_env
from shared.ops.client import request
from shared.subjects import (
    API_INVENTORY_RESERVATIONS,
    API_INVENTORY_SKUS,
    API_ORDERS_LIST,
    API_PAYMENTS_ACCOUNTS,
    API_PAYMENTS_LIST,
    EventType,
)

PENDING_GRACE_S = 5.0
"""An order PENDING this much past its timeout is stuck (order_svc sweeps every second)."""

REPUBLISH_SUBJECT = {
    "orders": "api.orders.republish",
    "payments": "api.payments.republish",
    "inventory": "api.inventory.republish",
}


@dataclass(frozen=True)
class Repair:
    """Re-send ``event_type`` about the order; its owning service emitted it."""

    event_type: str

    @property
    def service(self) -> str:
        return self.event_type.split(".", 1)[0]


@dataclass(frozen=True)
class Discrepancy:
    kind: str
    key: str
    """The order_id, or for totals the customer_id or sku."""
    detail: str
    repair: Repair | None = None


@dataclass
class Snapshot:
    """Every record of the three services, keyed as the audit needs them."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)
    skus: dict[str, dict[str, Any]] = field(default_factory=dict)
    order_timeout_s: float = 30.0
    now: float = 0.0


# --- the checks (pure) ------------------------------------------------------------------------

HOLDS_MONEY = {"HELD", "CAPTURED"}
"""A payment whose amount is off the customer's balance: held (until a confirm or cancel) or captured."""
HOLDS_STOCK = {"RESERVED", "COMMITTED"}


def audit(snap: Snapshot) -> list[Discrepancy]:
    """Every way the three services' records disagree, or fail to conserve money and stock."""
    found: list[Discrepancy] = []
    for order_id, order in snap.orders.items():
        found += _check_order(order_id, order, snap)
    for order_id, payment in snap.payments.items():
        if order_id not in snap.orders and payment["status"] in HOLDS_MONEY:
            found.append(
                Discrepancy(
                    "charge_for_unknown_order",
                    order_id,
                    f"{payment['amount_cents']} cents charged to {payment['customer_id']}",
                )
            )
    for order_id, reservation in snap.reservations.items():
        if order_id not in snap.orders and reservation["status"] in HOLDS_STOCK:
            found.append(
                Discrepancy(
                    "reservation_for_unknown_order", order_id, f"{reservation['status']} {reservation['items']}"
                )
            )
    found += _check_money(snap)
    found += _check_stock(snap)
    return found


def _check_order(order_id: str, order: dict[str, Any], snap: Snapshot) -> list[Discrepancy]:
    payment = snap.payments.get(order_id)
    reservation = snap.reservations.get(order_id)
    pay_status = payment["status"] if payment else None
    res_status = reservation["status"] if reservation else None
    found: list[Discrepancy] = []
    status = order["status"]
    if payment and payment.get("refused_cancel"):
        # A cancel after the capture: never a compensation (payment_svc.domain), so someone or
        # something cancelled a confirmed order. Reported; what to do is the business's call.
        found.append(
            Discrepancy(
                "cancel_after_capture",
                order_id,
                f"orders.cancelled ({payment['refused_cancel']}) for a captured charge of"
                f" {payment['amount_cents']} cents; nothing released, order {status}",
            )
        )
    if status == "CONFIRMED":
        if pay_status == "HELD":
            found.append(
                Discrepancy("charge_not_captured", order_id, "charge still held", Repair(EventType.ORDERS_CONFIRMED))
            )
        elif pay_status != "CAPTURED":
            found.append(Discrepancy("confirmed_without_charge", order_id, f"payment is {pay_status}"))
        if payment and pay_status in HOLDS_MONEY and payment["amount_cents"] != order["total_cents"]:
            found.append(
                Discrepancy(
                    "charge_differs_from_total",
                    order_id,
                    f"charged {payment['amount_cents']}, total {order['total_cents']}",
                )
            )
        if res_status == "RESERVED":
            found.append(
                Discrepancy(
                    "reservation_not_committed", order_id, "stock still reserved", Repair(EventType.ORDERS_CONFIRMED)
                )
            )
        elif res_status != "COMMITTED":
            found.append(Discrepancy("confirmed_without_reservation", order_id, f"reservation is {res_status}"))
    elif status == "CANCELLED":
        if pay_status == "CAPTURED":
            found.append(
                Discrepancy(
                    "cancelled_but_captured",
                    order_id,
                    f"{payment['amount_cents'] if payment else 0} cents captured for a cancelled order",
                )
            )
        if pay_status == "HELD":
            found.append(
                Discrepancy(
                    "cancelled_but_charged",
                    order_id,
                    f"{payment['amount_cents'] if payment else 0} cents not refunded",
                    Repair(EventType.ORDERS_CANCELLED),
                )
            )
        if res_status == "RESERVED":
            found.append(
                Discrepancy(
                    "cancelled_but_stock_held", order_id, "reservation not released", Repair(EventType.ORDERS_CANCELLED)
                )
            )
        elif res_status == "COMMITTED":
            found.append(Discrepancy("cancelled_but_stock_committed", order_id, "stock left for good"))
    elif status == "PENDING":
        age = snap.now - order["created_at"]
        if age > snap.order_timeout_s + PENDING_GRACE_S:
            found.append(
                Discrepancy(
                    "pending_past_timeout",
                    order_id,
                    f"pending {age:.0f}s, timeout {snap.order_timeout_s:g}s",
                    _stalled_step(pay_status, res_status),
                )
            )
    return found


def _stalled_step(pay_status: str | None, res_status: str | None) -> Repair | None:
    """The event whose consumer has not acted yet, for an order stuck PENDING."""
    if res_status == "RESERVED":
        return Repair(EventType.INVENTORY_RESERVED)
    if res_status == "FAILED":
        return Repair(EventType.INVENTORY_FAILED)
    if pay_status == "FAILED":
        return Repair(EventType.PAYMENTS_FAILED)
    if pay_status == "HELD":
        return Repair(EventType.PAYMENTS_COMPLETED)
    if pay_status is None:
        return Repair(EventType.ORDERS_CREATED)
    return None


def _check_money(snap: Snapshot) -> list[Discrepancy]:
    found: list[Discrepancy] = []
    charged: Counter[str] = Counter()
    for payment in snap.payments.values():
        if payment["status"] in HOLDS_MONEY:
            charged[payment["customer_id"]] += payment["amount_cents"]
    for customer_id, account in snap.accounts.items():
        expected = account["deposited_cents"] - charged[customer_id]
        if account["balance_cents"] != expected:
            found.append(
                Discrepancy(
                    "balance_not_conserved",
                    customer_id,
                    f"balance {account['balance_cents']}, deposits - charges = {expected}",
                )
            )
        if account["balance_cents"] < 0:
            found.append(Discrepancy("negative_balance", customer_id, str(account["balance_cents"])))
    for customer_id in set(charged) - set(snap.accounts):
        found.append(Discrepancy("charge_without_account", customer_id, f"{charged[customer_id]} cents"))
    confirmed_total = sum(o["total_cents"] for o in snap.orders.values() if o["status"] == "CONFIRMED")
    charged_total = sum(charged.values())
    if snap.orders and confirmed_total != charged_total:
        found.append(
            Discrepancy(
                "money_not_conserved", "*", f"confirmed orders total {confirmed_total}, charges held {charged_total}"
            )
        )
    return found


def _check_stock(snap: Snapshot) -> list[Discrepancy]:
    found: list[Discrepancy] = []
    committed: Counter[str] = Counter()
    reserved: Counter[str] = Counter()
    for reservation in snap.reservations.values():
        for part in reservation.get("parts", [reservation]):
            target = committed if part["status"] == "COMMITTED" else reserved
            if part["status"] in HOLDS_STOCK:
                for item in part["items"]:
                    target[item["sku"]] += item["quantity"]
    for sku, level in snap.skus.items():
        if level["available"] + level["reserved"] != level["restocked"] - committed[sku]:
            found.append(
                Discrepancy(
                    "stock_not_conserved",
                    sku,
                    f"available {level['available']} + reserved {level['reserved']}"
                    f" != restocked {level['restocked']} - committed {committed[sku]}",
                )
            )
        if level["reserved"] != reserved[sku]:
            found.append(
                Discrepancy(
                    "reserved_differs", sku, f"reserved {level['reserved']}, open reservations hold {reserved[sku]}"
                )
            )
    return found


# --- collecting, over NATS ------------------------------------------------------------------


async def all_pages(
    nc: Client, subject: str, items_key: str, key: str, page_size: int
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every item behind a paged endpoint, keyed by ``key``; and the last reply (for its metadata)."""
    found: dict[str, dict[str, Any]] = {}
    after: str | None = None
    while True:
        reply = await request(nc, subject, {"after": after, "limit": page_size}, timeout=10)
        found.update((item[key], item) for item in reply[items_key])
        after = reply["next"]
        if after is None:
            return found, reply


async def _all_rows(nc: Client, subject: str, items_key: str, page_size: int) -> list[dict[str, Any]]:
    """Every item behind a paged endpoint, as the pages hold them (a key may come more than once)."""
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        reply = await request(nc, subject, {"after": after, "limit": page_size}, timeout=10)
        rows.extend(reply[items_key])
        after = reply["next"]
        if after is None:
            return rows


def combine_parts(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Reservations by order. Partitioned, an order whose skus live in several inventory
    partitions has a row in each (a part); its combined status is the parts' status when they
    agree, else the one that matters most: RESERVED (stock still held), then COMMITTED, then
    RELEASED. ``parts`` keeps the rows, for the stock counts."""
    by_order: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_order[row["order_id"]].append(row)
    combined = {}
    for order_id, parts in by_order.items():
        if len(parts) == 1:
            combined[order_id] = {**parts[0], "parts": parts}
            continue
        statuses = {part["status"] for part in parts}
        status = next((s for s in ("RESERVED", "COMMITTED", "RELEASED") if s in statuses), parts[0]["status"])
        combined[order_id] = {
            "order_id": order_id,
            "status": statuses.pop() if len(statuses) == 1 else status,
            "reason": next((part["reason"] for part in parts if part["reason"]), None),
            "items": [item for part in parts for item in part["items"]],
            "parts": parts,
        }
    return combined


async def collect(nc: Client, page_size: int = 500) -> Snapshot:
    """Read every record of the three services through their APIs."""
    orders, orders_reply = await all_pages(nc, API_ORDERS_LIST, "orders", "order_id", page_size)
    payments, _ = await all_pages(nc, API_PAYMENTS_LIST, "payments", "order_id", page_size)
    accounts, _ = await all_pages(nc, API_PAYMENTS_ACCOUNTS, "accounts", "customer_id", page_size)
    reservations = combine_parts(await _all_rows(nc, API_INVENTORY_RESERVATIONS, "reservations", page_size))
    skus, _ = await all_pages(nc, API_INVENTORY_SKUS, "skus", "sku", page_size)
    return Snapshot(
        orders=orders,
        payments=payments,
        accounts=accounts,
        reservations=reservations,
        skus=skus,
        order_timeout_s=orders_reply["order_timeout_s"],
        now=orders_reply["now"],
    )


async def run_audit(
    nc: Client, page_size: int = 500, confirm_after_s: float = 2.0
) -> tuple[Snapshot, list[Discrepancy]]:
    """Audit; keep only discrepancies still present ``confirm_after_s`` later (not sagas in flight)."""
    snap = await collect(nc, page_size)
    found = audit(snap)
    if found and confirm_after_s > 0:
        await asyncio.sleep(confirm_after_s)
        snap = await collect(nc, page_size)
        again = set(audit(snap))
        found = [d for d in found if d in again]
    return snap, found


async def repair(nc: Client, found: Iterable[Discrepancy]) -> list[tuple[Discrepancy, int]]:
    """Re-send the triggering event of each repairable discrepancy (once per order and event)."""
    done: list[tuple[Discrepancy, int]] = []
    sent: set[tuple[str, str]] = set()
    for discrepancy in found:
        if discrepancy.repair is None or (discrepancy.key, discrepancy.repair.event_type) in sent:
            continue
        sent.add((discrepancy.key, discrepancy.repair.event_type))
        reply = await request(
            nc,
            REPUBLISH_SUBJECT[discrepancy.repair.service],
            {"order_id": discrepancy.key, "type": discrepancy.repair.event_type},
        )
        done.append((discrepancy, int(reply["republished"])))
    return done


# --- the command ----------------------------------------------------------------------------


def summary(snap: Snapshot) -> dict[str, Any]:
    statuses = Counter(o["status"] for o in snap.orders.values())
    return {
        "orders": len(snap.orders),
        "by_status": dict(sorted(statuses.items())),
        "payments": len(snap.payments),
        "reservations": len(snap.reservations),
        "customers": len(snap.accounts),
        "skus": len(snap.skus),
    }


def print_report(snap: Snapshot, found: list[Discrepancy]) -> None:
    s = summary(snap)
    print(
        f"audited {s['orders']} orders {s['by_status']}, {s['payments']} payments, "
        f"{s['reservations']} reservations, {s['customers']} customers, {s['skus']} skus"
    )
    if not found:
        print("clean: every order, charge, reservation, balance and stock level agrees")
        return
    by_key: dict[str, list[Discrepancy]] = defaultdict(list)
    for d in found:
        by_key[d.key].append(d)
    print(f"{len(found)} discrepancies:")
    print(f"  {'order / key':<32} {'kind':<32} {'repair':<22} detail")
    for key in sorted(by_key):
        for d in by_key[key]:
            fix = f"re-send {d.repair.event_type}" if d.repair else "-"
            print(f"  {key:<32} {d.kind:<32} {fix:<22} {d.detail}")


async def main_async(args: argparse.Namespace) -> int:
    nc = await connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        snap, found = await run_audit(nc, args.page_size, args.confirm_after)
        if args.json:
            print(json.dumps({"summary": summary(snap), "discrepancies": [asdict(d) for d in found]}, indent=2))
        else:
            print_report(snap, found)
        if found and args.repair:
            repaired = await repair(nc, found)
            for d, count in repaired:
                print(f"repair: {d.key}: re-sent {d.repair.event_type if d.repair else ''} ({count} event(s))")
            if not repaired:
                print("repair: nothing here can be healed by re-sending an event")
            await asyncio.sleep(args.settle)
            snap, found = await run_audit(nc, args.page_size, args.confirm_after)
            print("after repair:")
            print_report(snap, found)
        return 1 if found else 0
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saga-audit", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats-url", default=nats_url_from_env(), help="server(s), comma-separated (NATS_URL)")
    parser.add_argument("--repair", action="store_true", help="re-send the events that trigger missing steps")
    parser.add_argument("--page-size", type=int, default=500, help="records per request (1-1000)")
    parser.add_argument(
        "--confirm-after",
        type=float,
        default=2.0,
        help="seconds a discrepancy must persist to count (0: report at once)",
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait after a repair before re-auditing")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        code = asyncio.run(main_async(args))
    except (RefusedByServer, CredentialsError) as exc:  # one line, not a traceback: docs/operations.md
        print(f"saga-audit: cannot connect: {exc}", file=sys.stderr)
        code = 2
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        print(f"saga-audit: cannot audit: {exc!r}", file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
