"""Leases in a NATS KV bucket: at most one holder per key, and a fencing token for its writes.

A lease is the newest message on ``$KV.saga_leases.<key>``, written with compare-and-swap
(``Nats-Expected-Last-Subject-Sequence``) and a per-message TTL (``LEASE_TTL_S``). Taking a free
key writes it with the expected sequence of what is there (nothing, or a delete marker); a
renewal writes it again expecting the holder's own last revision. So two instances can never
both take or keep a key: the second write is refused. A holder that stops renewing (dead,
paused, cut off) loses the key once its last message expires, and a standby takes it.

The revision of the write that took the key is the lease's **epoch**: it only grows (it is the
bucket stream's sequence), so it fences a writer that lost its lease the way Temporal's shard
RangeID does. ``Lease.check`` is what a store calls before every commit: the lease must still
be valid by this process's own clock (its last confirmed renewal, sent at least TTL ago at the
server, plus TTL, minus a margin), or the commit is refused. A writer paused past its lease
(SIGSTOP) thus commits nothing when it resumes, before it has even heard that it lost.

One key per store today (the service's name); part 2's partitions are more keys, same mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, BadRequestError, NotFoundError

from shared.aio import sleep_unless_stopped
from shared.logging import get_logger

log = get_logger("lease")

LEASE_BUCKET = "saga_leases"
REGISTRY_BUCKET = "saga_stores"
WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's err_codes for a failed compare-and-swap
KV_OPERATION = "KV-Operation"
RENEW_RETRY_S = 0.5
"""How soon a failed renewal is tried again."""


class LeaseLost(Exception):
    """This process no longer holds the lease: nothing more may be committed under it."""


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


async def ensure_buckets(js: JetStreamContext, replicas: int) -> None:
    """The lease bucket (one value per key, each message with its own TTL) and the store
    registry (a short history of replacements, no TTL). Made once; kept as they are after."""
    for config in (
        KeyValueConfig(bucket=LEASE_BUCKET, history=1, replicas=replicas, storage=StorageType.FILE),
        KeyValueConfig(bucket=REGISTRY_BUCKET, history=16, replicas=replicas, storage=StorageType.FILE),
    ):
        try:
            await js.stream_info(kv_stream(config.bucket))
        except NotFoundError:
            with contextlib.suppress(BadRequestError):  # made by another instance meanwhile
                await js.create_key_value(config)


def machine_id() -> str:
    """Which kernel and pid namespace this process runs in: a pid means the same process only
    within one of these (two containers on one host, even with one hostname, differ here)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return f"{socket.gethostname()}:unknown"
    return f"{socket.gethostname()}:{boot}:{pid_namespace}"


def process_start(pid: int) -> int | None:
    """When process ``pid`` of this pid namespace started (clock ticks since boot), or None if
    there is none: with the pid, it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses); starttime is the 22nd.
    return int(stat.rpartition(")")[2].split()[19])


@dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) a lease: written as the lease's value, for people and standbys."""

    instance: str
    store: str
    machine: str
    pid: int
    started: int = 0
    """``process_start(pid)`` when it took the lease."""

    @classmethod
    def this_process(cls, store: str) -> Holder:
        pid = os.getpid()
        return cls(uuid.uuid4().hex[:12], store, machine_id(), pid, process_start(pid) or 0)

    def is_dead_predecessor(self, other: Holder) -> bool:
        """True if ``other`` is surely a process that is gone: it ran in this kernel and pid
        namespace, and no process with its pid and start time exists any more. Then its lease
        need not expire before this process takes it (a restart after a crash is immediate)."""
        if other.machine != self.machine or other.instance == self.instance or other.pid <= 0:
            return False
        return process_start(other.pid) != other.started


def _decode(data: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Held:
    """What a key holds now: its revision, and its holder if it is held (None: free)."""

    revision: int
    holder: Holder | None
    epoch: int | None


async def read(js: JetStreamContext, key: str) -> Held:
    """The current state of the lease on ``key``."""
    try:
        msg = await js.get_last_msg(kv_stream(LEASE_BUCKET), kv_subject(LEASE_BUCKET, key))
    except NotFoundError:
        return Held(0, None, None)
    revision = msg.seq or 0
    if msg.headers and msg.headers.get(KV_OPERATION) in ("DEL", "PURGE"):
        return Held(revision, None, None)
    value = _decode(msg.data)
    try:
        holder = Holder(
            str(value["instance"]),
            str(value["store"]),
            str(value["machine"]),
            int(value["pid"]),
            int(value.get("started", 0)),
        )
    except (KeyError, TypeError, ValueError):
        holder = Holder("unknown", "unknown", "unknown", -1)
    epoch = value.get("epoch")
    return Held(revision, holder, epoch if isinstance(epoch, int) else revision)


class Lease:
    """One key's lease, taken by ``acquire`` and kept by ``keep`` until lost or released."""

    def __init__(self, js: JetStreamContext, key: str, holder: Holder, ttl_s: float) -> None:
        self.key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self.epoch: int | None = None
        """The revision of the write that took the key: the fencing token."""
        self.revision = 0
        self.valid_until = 0.0
        """``time.monotonic()`` past which nothing may be committed under this lease."""
        self.lost = asyncio.Event()
        self._js = js
        # Margin for the time between a commit's check and its end, and for the server's
        # clock running a little fast: the lease counts as gone a bit before it expires there.
        self._margin_s = max(0.2, ttl_s * 0.15)

    @property
    def renew_every_s(self) -> float:
        """A quarter of the TTL: a renewal that fails (a leader election of the bucket's stream
        takes about 5 s) leaves TTL - margin - this = 0.6 of it to keep retrying in."""
        return self.ttl_s / 4

    def check(self) -> None:
        """Raise LeaseLost unless the lease is held and still valid by this process's clock."""
        if self.epoch is None or self.lost.is_set():
            raise LeaseLost(f"lease {self.key}: not held")
        if time.monotonic() >= self.valid_until:
            raise LeaseLost(
                f"lease {self.key}: epoch {self.epoch} expired {time.monotonic() - self.valid_until:.1f}s ago"
            )

    def _value(self) -> bytes:
        return json.dumps({**self.holder.__dict__, "epoch": self.epoch}).encode()

    async def _write(self, expected_last: int) -> int:
        """Write the lease expecting ``expected_last`` as the key's last revision; its new revision."""
        sent = time.monotonic()
        ack = await self._js.publish(
            kv_subject(LEASE_BUCKET, self.key),
            self._value(),
            headers={"Nats-Expected-Last-Subject-Sequence": str(expected_last)},
            msg_ttl=self.ttl_s,
            timeout=min(self.renew_every_s, 5.0),
        )
        # The server stored it after we sent it, so it expires no sooner than this.
        self.valid_until = sent + self.ttl_s - self._margin_s
        self.revision = ack.seq
        return ack.seq

    async def try_acquire(self) -> Held:
        """One attempt: take the key if it is free (or its holder is surely dead). Returns what
        the key held before; ``self.epoch`` is set if this process holds it now."""
        held = await read(self._js, self.key)
        if held.holder is not None and not self.holder.is_dead_predecessor(held.holder):
            return held
        try:
            self.epoch = None
            revision = await self._write(held.revision)
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return held  # someone else was quicker
            raise
        self.epoch = revision  # renewals record it in the value; until then readers take the revision
        self.lost.clear()
        if held.holder is not None:
            log.warning("lease.taken_from_dead_process", key=self.key, epoch=self.epoch, previous=held.holder.__dict__)
        return held

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lease (True) or ``stop`` is set (False)."""
        poll_s = min(1.0, self.ttl_s / 4)
        announced: str | None = None
        failures = 0
        while not stop.is_set():
            try:
                held = await self.try_acquire()
                failures = 0
            except Exception as exc:  # NATS away, the bucket's leader being elected
                failures += 1
                log.warning("lease.acquire_failed", key=self.key, error=repr(exc), attempt=failures)
                await sleep_unless_stopped(stop, min(0.5 * failures, 5.0))
                continue
            if self.epoch is not None:
                log.info("lease.acquired", key=self.key, epoch=self.epoch, ttl_s=self.ttl_s)
                return True
            if held.holder is not None and held.holder.instance != announced:
                announced = held.holder.instance
                log.info("lease.standing_by", key=self.key, holder=held.holder.__dict__, epoch=held.epoch)
            await sleep_unless_stopped(stop, poll_s)
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until ``stop`` or until the lease is lost (then ``lost`` is set).

        After a failed renewal the next try comes RENEW_RETRY_S later, not a whole period: a
        node loss holds the bucket's stream without a leader for about 5 s, and the lease must
        be written again as soon as there is one."""
        failures = 0
        while not await sleep_unless_stopped(stop, RENEW_RETRY_S if failures else self.renew_every_s):
            if time.monotonic() >= self.valid_until:
                self._lose("expired before it could be renewed")
                return
            try:
                await self._write(self.revision)
                failures = 0
                continue
            except APIError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE and not await self._own_write_landed():
                    self._lose("taken by another instance, or expired at the server")
                    return
                error: Exception = exc
            except Exception as exc:  # a timeout, NATS away: try again soon, while still valid
                error = exc
            failures += 1
            if failures == 1 or failures % 10 == 0:
                log.warning(
                    "lease.renew_failed", key=self.key, error=repr(error), left_s=self._left(), attempt=failures
                )

    async def _own_write_landed(self) -> bool:
        """After a compare-and-swap refused a renewal: True if the key's last write is this
        lease's own (a renewal stored whose ack was lost, in a timeout or a failover), and then
        renew from its revision; False if someone else wrote it, or it expired at the server."""
        try:
            held = await read(self._js, self.key)
        except Exception:
            return True  # cannot tell yet: keep trying while the lease is still valid by our clock
        if held.holder is None or held.holder.instance != self.holder.instance or held.epoch != self.epoch:
            return False
        self.revision = held.revision
        return True

    def _left(self) -> float:
        return round(self.valid_until - time.monotonic(), 2)

    def _lose(self, why: str) -> None:
        log.error("lease.lost", key=self.key, epoch=self.epoch, why=why)
        self.lost.set()

    async def release(self) -> None:
        """Give the key up now (a clean stop), so a standby need not wait for it to expire."""
        if self.epoch is None or self.lost.is_set():
            return
        self.lost.set()
        try:
            await self._js.publish(
                kv_subject(LEASE_BUCKET, self.key),
                b"",
                headers={KV_OPERATION: "DEL", "Nats-Expected-Last-Subject-Sequence": str(self.revision)},
                timeout=2.0,
            )
            log.info("lease.released", key=self.key, epoch=self.epoch)
        except Exception as exc:  # it expires by itself
            log.warning("lease.release_failed", key=self.key, error=repr(exc))
