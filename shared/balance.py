"""Spreading a service's partitions over its live instances, by what each instance decides alone.

Every instance says every few seconds, on core NATS, who it is and which partitions it owns
(``saga.members.<service>``). From what it heard within a lease's TTL each instance knows the
live members, and decides for itself whether to take a free partition or hand one over. The
decisions are soft: two instances may both want the same partition, and the lease (shared.lease)
lets one have it. They only decide how evenly the partitions end up spread.

With P partitions and n members, each should own ``floor(P/n)`` or ``ceil(P/n)`` of them:
- a member short of the floor takes any free partition;
- a member short of the ceiling takes one only if no member is short of the floor (the neediest
  first, so an instance that just gave one up does not take it straight back);
- a member over the ceiling hands one over; so does the member owning the most (ties to the
  highest instance id) while anyone is short of the floor.

One partition and two instances: the floor is 0, the ceiling 1; the owner keeps it, the other
stands by and takes it only when it is free: part 1's writer and standby, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.aio import sleep_unless_stopped
from shared.lease import Holder
from shared.logging import get_logger

log = get_logger("balance")


def members_subject(service: str) -> str:
    return f"saga.members.{service}"


@dataclass(frozen=True)
class Member:
    """One live instance, as its latest heartbeat described it."""

    instance: str
    owned: frozenset[int]
    eligible: frozenset[int]
    """The partitions whose files this instance's DATA_DIR holds (shared.registry)."""


@dataclass(frozen=True)
class Decision:
    take: bool = False
    """Try to take one free partition."""
    hand_over: int | None = None
    """Give this partition up cleanly, now."""


def decide(me: Member, others: Iterable[Member], free: Iterable[int]) -> Decision:
    """Pure: what ``me`` does next, among the live members that can own the same partitions."""
    group = [m for m in others if m.instance != me.instance and m.eligible == me.eligible] + [me]
    count = len(me.eligible)
    floor, extra = divmod(count, len(group))
    ceiling = floor + (1 if extra else 0)
    owned = len(me.owned)
    needy = any(len(m.owned) < floor for m in group)
    if owned > ceiling or (needy and owned > floor and _richest(group) == me.instance):
        return Decision(hand_over=max(me.owned))
    if any(p in me.eligible for p in free) and (owned < floor or (owned < ceiling and not needy)):
        return Decision(take=True)
    return Decision()


def _richest(group: list[Member]) -> str:
    return max(group, key=lambda m: (len(m.owned), m.instance)).instance


@dataclass
class Membership:
    """This instance's heartbeats, and the members it has heard from lately."""

    nc: Client
    service: str
    holder: Holder
    eligible: frozenset[int]
    ttl_s: float
    owned: set[int] = field(default_factory=set)
    _heard: dict[str, tuple[float, Member, Holder]] = field(default_factory=dict)
    _sub: Any = None
    _answers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(members_subject(self.service), cb=self._on_heartbeat)
        await self.beat()

    async def leave(self) -> None:
        """Say this instance is going: the others count it out now, not a TTL later."""
        with contextlib.suppress(Exception):
            body = {"instance": self.holder.instance, "leaving": True}
            await self.nc.publish(members_subject(self.service), json.dumps(body).encode())

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def me(self) -> Member:
        return Member(self.holder.instance, frozenset(self.owned), self.eligible)

    async def beat(self) -> None:
        """Say who this instance is and what it owns (also at once after every change)."""
        body = {
            "instance": self.holder.instance,
            "owned": sorted(self.owned),
            "eligible": sorted(self.eligible),
            "machine": self.holder.machine,
            "pid": self.holder.pid,
            "started": self.holder.started,
        }
        try:
            await self.nc.publish(members_subject(self.service), json.dumps(body).encode())
        except Exception as exc:  # NATS away: the next beat tries again
            log.warning("members.heartbeat_failed", error=repr(exc))

    async def run(self, stop: asyncio.Event) -> None:
        while not await sleep_unless_stopped(stop, self.ttl_s / 3):
            await self.beat()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
            if body.get("leaving") is True:
                self._heard.pop(str(body["instance"]), None)
                return
            member = Member(str(body["instance"]), frozenset(body["owned"]), frozenset(body["eligible"]))
            holder = Holder(member.instance, "", str(body["machine"]), int(body["pid"]), int(body["started"]))
        except (ValueError, KeyError, TypeError):
            log.warning("members.bad_heartbeat", subject=msg.subject)
            return
        if member.instance == self.holder.instance:
            return
        if member.instance not in self._heard:
            answer = asyncio.get_running_loop().create_task(self.beat())  # a newcomer hears us at once
            self._answers.add(answer)
            answer.add_done_callback(self._answers.discard)
        self._heard[member.instance] = (time.monotonic(), member, holder)

    def live(self) -> list[Member]:
        """The other members heard from within a TTL, less those surely dead (shared.lease)."""
        now = time.monotonic()
        live = []
        for instance, (at, member, holder) in list(self._heard.items()):
            if now - at > self.ttl_s or self.holder.is_dead_predecessor(holder):
                del self._heard[instance]
                continue
            live.append(member)
        return live
