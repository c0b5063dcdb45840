"""payment_svc's requests: ``api.payments.deposit`` and ``api.payments.account``."""

from __future__ import annotations

import functools
import sqlite3
from typing import Annotated, Any

from pydantic import Field

from payment_svc import domain, repository
from payment_svc.domain import Account
from shared.api import (
    ApiError,
    ApiRequest,
    ByKey,
    Endpoint,
    PageRequest,
    RequestId,
    already_applied,
    json_endpoint,
    merge_pages,
    page,
)
from shared.contract import CustomerId
from shared.service import ServiceContext
from shared.subjects import API_PAYMENTS_ACCOUNT, API_PAYMENTS_ACCOUNTS, API_PAYMENTS_DEPOSIT, API_PAYMENTS_LIST

MAX_DEPOSIT_CENTS = 10**15


class Deposit(ApiRequest):
    customer_id: CustomerId
    amount_cents: Annotated[int, Field(ge=1, le=MAX_DEPOSIT_CENTS)]
    request_id: RequestId | None = None
    """Sent again under the same key (after a timeout), the deposit is made once."""


class GetAccount(ApiRequest):
    customer_id: str


def endpoints(ctx: ServiceContext) -> list[Endpoint]:
    async def deposit(req: Deposit) -> dict[str, Any]:
        # Committed before the reply: a client that got an answer can rely on the balance.
        def apply(tx: sqlite3.Connection) -> Account:
            current = repository.get_account(tx, req.customer_id)
            recorded = repository.deposit_of_request(tx, req.request_id)
            if already_applied(req.request_id, recorded, (req.customer_id, req.amount_cents)) and current:
                return current
            account = domain.deposit(current, req.customer_id, req.amount_cents)
            repository.save_account(tx, account)
            repository.record_deposit(tx, req.customer_id, req.amount_cents, req.request_id)
            return account

        account = await ctx.store.run(apply)
        return {"customer_id": account.customer_id, "balance_cents": account.balance_cents}

    async def account(req: GetAccount) -> dict[str, Any]:
        found = await ctx.store.read(functools.partial(repository.get_account, customer_id=req.customer_id))
        if found is None:
            raise ApiError("not_found", f"no account {req.customer_id!r}")
        return {"customer_id": found.customer_id, "balance_cents": found.balance_cents}

    async def list_payments(req: PageRequest) -> dict[str, Any]:
        payments, next_after = await page(
            ctx.store,
            "SELECT order_id, customer_id, amount_cents, status, reason, refused_cancel FROM payments"
            " WHERE order_id > ? ORDER BY order_id LIMIT ?",
            req,
            "order_id",
            dict,
        )
        return {"payments": payments, "next": next_after}

    async def list_accounts(req: PageRequest) -> dict[str, Any]:
        accounts, next_after = await page(
            ctx.store,
            "SELECT a.customer_id, a.balance_cents,"
            " (SELECT COALESCE(SUM(d.amount_cents), 0) FROM deposits d WHERE d.customer_id = a.customer_id)"
            " AS deposited_cents FROM accounts a WHERE a.customer_id > ? ORDER BY a.customer_id LIMIT ?",
            req,
            "customer_id",
            dict,
        )
        return {"accounts": accounts, "next": next_after}

    return [
        json_endpoint("deposit", API_PAYMENTS_DEPOSIT, Deposit, deposit, ByKey("customer_id")),
        json_endpoint("account", API_PAYMENTS_ACCOUNT, GetAccount, account, ByKey("customer_id")),
        json_endpoint("list", API_PAYMENTS_LIST, PageRequest, list_payments, merge_pages("payments", "order_id")),
        json_endpoint(
            "accounts", API_PAYMENTS_ACCOUNTS, PageRequest, list_accounts, merge_pages("accounts", "customer_id")
        ),
    ]
