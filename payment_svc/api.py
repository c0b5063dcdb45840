"""payment_svc's requests: ``api.payments.deposit`` and ``api.payments.account``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from payment_svc import domain, repository
from shared.api import ApiError, ApiRequest, Endpoint, json_endpoint
from shared.contract import CustomerId
from shared.service import ServiceContext
from shared.subjects import API_PAYMENTS_ACCOUNT, API_PAYMENTS_DEPOSIT

MAX_DEPOSIT_CENTS = 10**15


class Deposit(ApiRequest):
    customer_id: CustomerId
    amount_cents: Annotated[int, Field(ge=1, le=MAX_DEPOSIT_CENTS)]


class GetAccount(ApiRequest):
    customer_id: str


def endpoints(ctx: ServiceContext) -> list[Endpoint]:
    async def deposit(req: Deposit) -> dict[str, Any]:
        # Committed before the reply: a client that got an answer can rely on the balance.
        async with ctx.store.transaction() as tx:
            account = domain.deposit(
                await repository.get_account(tx, req.customer_id), req.customer_id, req.amount_cents
            )
            await repository.save_account(tx, account)
            await repository.record_deposit(tx, req.customer_id, req.amount_cents)
        return {"customer_id": account.customer_id, "balance_cents": account.balance_cents}

    async def account(req: GetAccount) -> dict[str, Any]:
        found = await repository.get_account(ctx.store.reader, req.customer_id)
        if found is None:
            raise ApiError("not_found", f"no account {req.customer_id!r}")
        return {"customer_id": found.customer_id, "balance_cents": found.balance_cents}

    return [
        json_endpoint("deposit", API_PAYMENTS_DEPOSIT, Deposit, deposit),
        json_endpoint("account", API_PAYMENTS_ACCOUNT, GetAccount, account),
    ]
