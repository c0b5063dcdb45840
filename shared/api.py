"""Request/reply endpoints on NATS micro services, so ``nats micro ls|info|stats`` shows them.

Every reply is JSON. An error reply is ``{"error": {"code": str, "message": str}}`` and also
carries the micro ``Nats-Service-Error`` headers, so the endpoint's error count and the ``nats``
CLI both see it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from nats.micro.request import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.logging import get_logger
from shared.store import Store

log = get_logger("api")

_HTTP_LIKE = {"bad_request": "400", "not_found": "404", "conflict": "409", "internal": "500", "unavailable": "503"}


class ApiError(Exception):
    """A request the service answers with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ApiRequest(BaseModel):
    """Base of every request body: strict types, so ``"5"`` is not an amount."""

    model_config = ConfigDict(strict=True, frozen=True)


ReqT = TypeVar("ReqT", bound=ApiRequest)

RequestId = Annotated[str, Field(min_length=1, max_length=128)]
"""An idempotency key: the client's name for one change (a deposit, a restock), so that sending
it again after a timeout, to whichever instance answers, applies it once."""


def already_applied(request_id: str | None, recorded: tuple[Any, ...] | None, asked: tuple[Any, ...]) -> bool:
    """Whether the change ``request_id`` names was applied before (then apply nothing, answer as
    now); ApiError if that key was used for a change with other content than ``asked``."""
    if request_id is None or recorded is None:
        return False
    if recorded != asked:
        raise ApiError("request_id_reused", f"request_id {request_id!r} was used for {recorded}, not {asked}")
    return True


MAX_PAGE = 1000


class PageRequest(ApiRequest):
    """Keyset paging: ``after`` is the last key of the previous page (null for the first)."""

    after: str | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 500


class RepublishRequest(ApiRequest):
    """Send again the events this service emitted about ``order_id`` of ``type`` (repair)."""

    order_id: str
    type: str


async def page(
    store: Store, sql: str, request: PageRequest, key: str, row_to_dict: Callable[[sqlite3.Row], dict[str, Any]]
) -> tuple[list[dict[str, Any]], str | None]:
    """Run ``sql`` (which takes ``(after, limit)`` and orders by ``key``); return items and the next cursor."""

    def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        return [row_to_dict(row) for row in conn.execute(sql, (request.after or "", request.limit))]

    rows = await store.read(query)
    next_after = rows[-1][key] if len(rows) == request.limit else None
    return rows, next_after


@dataclass(frozen=True)
class ByKey:
    """A request about one key: the partition of the request's ``field`` answers it."""

    field: str


@dataclass(frozen=True)
class Gather:
    """A request every partition answers: ``merge`` makes one reply of theirs (shared.routing)."""

    merge: Callable[[dict[str, Any], list[dict[str, Any]]], dict[str, Any]]
    """(the request, each partition's reply) -> the reply."""


Routing = ByKey | Gather


def merge_pages(items: str, key: str) -> Gather:
    """One keyset page of ``items`` (ordered by ``key``) from every partition's page.

    A partition whose page came back full may hold more beyond its last key, so the merged page
    ends at the smallest such key and holds everything up to it: nothing is skipped, and a key
    several partitions hold (an order's lines across inventory partitions) is never split
    between pages. So a merged page may hold more than ``limit`` items.
    """

    def merge(request: dict[str, Any], replies: list[dict[str, Any]]) -> dict[str, Any]:
        limit = int(request.get("limit", PageRequest.model_fields["limit"].default))
        full = [reply[items][-1][key] for reply in replies if len(reply[items]) >= limit]
        cutoff = min(full) if full else None
        merged = sorted(
            (item for reply in replies for item in reply[items] if cutoff is None or item[key] <= cutoff),
            key=lambda item: item[key],
        )
        return {**replies[0], items: merged, "next": cutoff}

    return Gather(merge)


def sum_of(counted: str) -> Gather:
    """The first partition's reply, with ``counted`` summed over every partition."""

    def merge(request: dict[str, Any], replies: list[dict[str, Any]]) -> dict[str, Any]:
        return {**replies[0], counted: sum(int(reply[counted]) for reply in replies)}

    return Gather(merge)


@dataclass(frozen=True)
class Endpoint:
    """One request/reply endpoint: its micro name, subject, typed handler, and which partition answers."""

    name: str
    subject: str
    handler: Callable[[Request], Awaitable[None]]
    routing: Routing | None = None
    """Which partition(s) answer when the service is partitioned; required then (shared.routing)."""


def json_endpoint(
    name: str,
    subject: str,
    model: type[ReqT],
    handle: Callable[[ReqT], Awaitable[dict[str, Any]]],
    routing: Routing | None = None,
) -> Endpoint:
    """Wrap ``handle`` so it receives a validated request and its result or error goes back as JSON."""

    async def on_request(request: Request) -> None:
        try:
            try:
                body = model.model_validate_json(request.data or b"{}")
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in err["loc"]) or "body"
                raise ApiError("bad_request", f"{where}: {err['msg']}") from None
            reply = await handle(body)
        except ApiError as exc:
            await _respond_error(request, exc.code, exc.message)
            return
        except Exception as exc:
            log.exception("api.failed", subject=subject)
            await _respond_error(request, "internal", repr(exc))
            return
        await request.respond(json.dumps(reply).encode())

    return Endpoint(name, subject, on_request, routing)


async def respond_error(request: Request, code: str, message: str) -> None:
    """Answer ``request`` with an error reply (module docstring)."""
    await _respond_error(request, code, message)


async def _respond_error(request: Request, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await request.respond_error(_HTTP_LIKE.get(code, "500"), message, data=body)
