"""Partitions: which slice of a service's state a key belongs to, and the subjects that say so.

``PARTITIONS=N`` splits every service's state into N partitions, each its own SQLite file, its
own lease and its own durable consumers (docs/partitions.md). With N = 1, the default, nothing
here changes a subject, a file or a consumer name: it is the system as it was.

With N > 1 every public stream renames the events it stores: ``orders.created.<order_id>`` is
stored as ``part.<k>.orders.created.<order_id>``, k being ``partition_of(order_id, N)``. The
server does it (a stream subject transform, ``{{partition(N, 2)}}``: FNV-1a of the order_id
token, modulo N), so a publisher's subjects, and every ``nats`` line, stay what they were, and
a consumer of partition k reads only its own events. The renamed subjects lie outside the
stream's own subjects (``orders.>``): a message of the wrong shape (``orders.created``,
``orders.created.a.b``), which the transform leaves alone, is all that remains in ``orders.>``,
and a strays consumer dead-letters it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

FNV_OFFSET_32 = 0x811C9DC5
FNV_PRIME_32 = 0x01000193

PART_PREFIX = "part"
"""The first token of a partitioned subject: ``part.<k>.<subject>``."""

MAX_PARTITIONS = 256


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bits: the hash the server's ``{{partition()}}`` transform uses."""
    h = FNV_OFFSET_32
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME_32) & 0xFFFFFFFF
    return h


def partition_of(key: str, count: int) -> int:
    """The partition of ``key`` among ``count``, exactly as the server computes it."""
    return _hash_of(key) % count if count > 1 else 0


@functools.lru_cache(maxsize=1 << 15)
def _hash_of(key: str) -> int:
    # One order's id is hashed at each of its events and again by its handlers, a customer's and
    # a sku's at every order: in pure Python the hash was 4-5% of a partitioned service's CPU.
    return fnv1a_32(key.encode())


def stored_subject(partition: int, subject: str) -> str:
    """``subject`` as partition ``partition`` of a partitioned stream stores it."""
    return f"{PART_PREFIX}.{partition}.{subject}"


def split_stored(subject: str) -> tuple[int | None, str]:
    """(partition, the subject as published) of a stored subject; (None, subject) if not partitioned."""
    head, _, rest = subject.partition(".")
    if head != PART_PREFIX:
        return None, subject
    token, _, inner = rest.partition(".")
    if not token.isdigit() or not inner:
        return None, subject
    return int(token), inner


def transform_dest(domain: str, count: int) -> str:
    """The destination of a public stream's transform: ``<domain>.<event>.<order_id>`` renamed."""
    return f"{PART_PREFIX}.{{{{partition({count},2)}}}}.{domain}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"


@dataclass(frozen=True)
class Partitioning:
    """How many partitions every service's state is split into, and the names that follow."""

    count: int = 1

    @property
    def partitioned(self) -> bool:
        return self.count > 1

    def of(self, key: str) -> int:
        return partition_of(key, self.count)

    def all(self) -> range:
        return range(self.count)

    def unit(self, service: str, partition: int) -> str:
        """The name of one partition of a service: its lease and registry key, and its file's stem.

        ``order_svc`` when unpartitioned (the names of before), ``order_svc.p3`` otherwise.
        """
        return f"{service}.p{partition}" if self.partitioned else service

    def file_name(self, service: str, partition: int) -> str:
        """The SQLite file of one partition: ``<service>.sqlite3``, or ``<service>.p<k>.sqlite3``."""
        return f"{self.unit(service, partition)}.sqlite3"

    def subject(self, partition: int, subject: str) -> str:
        """Where partition ``partition``'s copy of ``subject`` is stored (``subject`` itself if unpartitioned)."""
        return stored_subject(partition, subject) if self.partitioned else subject

    def label(self, partition: int) -> str:
        return f"partition {partition} of {self.count}" if self.partitioned else "unpartitioned"


UNPARTITIONED = Partitioning(1)
