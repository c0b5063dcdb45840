"""How every process of the saga reaches NATS: one server or a cluster, from one ``NATS_URL``.

``NATS_URL`` may list several servers, comma-separated (``nats://a:4222,nats://b:4222``).
nats-py takes a list and fails over between them (and to servers the cluster gossips), but
given the comma-separated string as one URL it refuses it: every service and tool connects
through here, so none of them can forget the split.
"""

from __future__ import annotations

import os
from typing import Any

import nats
from nats.aio.client import Client

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def servers(url: str) -> list[str]:
    """The servers ``url`` lists, in order; ValueError if it lists none."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise ValueError(f"no NATS server in {url!r}")
    return found


def nats_url_from_env() -> str:
    """``NATS_URL``, or the local default: the ``--nats-url`` default of every tool."""
    return os.environ.get("NATS_URL") or DEFAULT_NATS_URL


async def connect(url: str, **options: Any) -> Client:
    """Connect to the servers ``url`` lists; ``options`` go to ``nats.connect`` as they are."""
    return await nats.connect(servers=servers(url), **options)
