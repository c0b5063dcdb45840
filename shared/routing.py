"""Requests to a partitioned service: every documented subject still answers, whoever owns what.

Each partition's owner serves its endpoints on ``<subject>.p<k>``. Every instance of the
service, standbys included, serves the documented subjects themselves (``api.orders.get``) and
forwards: a request about one key (``ByKey``) to the partition of that key, any other
(``Gather``) to every partition at once, merging their replies. Forwarding holds no state, so a
request reaches the owner of the day whichever instance the server picked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro.request import Request

from shared.api import ByKey, Endpoint, Gather, respond_error
from shared.logging import get_logger
from shared.partitions import Partitioning

log = get_logger("routing")

FORWARD_TIMEOUT_S = 4.0
"""How long a forwarded request may take, retries included: under a client's usual 5 s."""
NO_OWNER_RETRY_S = 0.1
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"


def partition_subject(subject: str, partitioning: Partitioning, partition: int) -> str:
    """Where partition ``partition``'s owner serves ``subject`` (``subject`` itself if unpartitioned)."""
    return f"{subject}.p{partition}" if partitioning.partitioned else subject


class PartitionUnavailable(Exception):
    """No instance owns the partition right now (a takeover under way)."""


def routed(nc: Client, endpoint: Endpoint, partitioning: Partitioning) -> Endpoint:
    """``endpoint``'s documented subject, forwarding each request to the partition(s) that answer it."""
    routing = endpoint.routing
    if routing is None:
        raise ValueError(f"endpoint {endpoint.subject} declares no routing: which partition answers it?")

    async def ask(partition: int, data: bytes) -> tuple[bytes, dict[str, str]]:
        subject = partition_subject(endpoint.subject, partitioning, partition)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FORWARD_TIMEOUT_S
        while True:
            try:
                reply = await nc.request(subject, data, timeout=max(deadline - loop.time(), 0.1))
                return reply.data, dict(reply.headers or {})
            except NoRespondersError:
                # No owner this instant: a hand-over or a takeover, which lasts about a second
                # (or a lease's TTL, for a dead owner). Ask again until the deadline.
                if loop.time() + NO_OWNER_RETRY_S >= deadline:
                    raise PartitionUnavailable(f"partition {partition} has no owner right now") from None
                await asyncio.sleep(NO_OWNER_RETRY_S)
            except NatsTimeoutError:
                raise PartitionUnavailable(f"partition {partition} did not answer in {FORWARD_TIMEOUT_S}s") from None

    async def on_request(request: Request) -> None:
        data = request.data or b"{}"
        try:
            if isinstance(routing, ByKey):
                reply, headers = await ask(_partition_of_request(data, routing, partitioning), data)
                if ERROR_CODE_HEADER in headers:
                    await request.respond_error(headers[ERROR_CODE_HEADER], headers.get(ERROR_HEADER, ""), data=reply)
                else:
                    await request.respond(reply)
                return
            await _gather(request, data, routing, partitioning, ask)
        except PartitionUnavailable as exc:
            await respond_error(request, "unavailable", f"{exc}; a takeover may be under way, try again")
        except Exception as exc:
            log.exception("routing.failed", subject=endpoint.subject)
            await respond_error(request, "internal", repr(exc))

    return Endpoint(endpoint.name, endpoint.subject, on_request, routing)


def _partition_of_request(data: bytes, routing: ByKey, partitioning: Partitioning) -> int:
    """The partition of the request's key; partition 0 for a body without one, which then answers
    with the validation error the service gives any bad request."""
    try:
        body = json.loads(data)
    except ValueError:
        return 0
    key = body.get(routing.field) if isinstance(body, dict) else None
    return partitioning.of(key) if isinstance(key, str) else 0


async def _gather(request: Request, data: bytes, routing: Gather, partitioning: Partitioning, ask: Any) -> None:
    answers = await asyncio.gather(*(ask(p, data) for p in partitioning.all()))
    for reply, headers in answers:
        if ERROR_CODE_HEADER in headers:  # a bad request is bad in every partition: say it once
            await request.respond_error(headers[ERROR_CODE_HEADER], headers.get(ERROR_HEADER, ""), data=reply)
            return
    body = json.loads(data)
    merged = routing.merge(body if isinstance(body, dict) else {}, [json.loads(reply) for reply, _ in answers])
    await request.respond(json.dumps(merged).encode())
