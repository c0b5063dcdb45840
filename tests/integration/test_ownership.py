"""One writer per service, on a real nats-server and real SQLite: the lease, its fence, the
store registry, and a standby that answers nothing until it takes over."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from payment_svc.__main__ import PAYMENT_SERVICE
from shared import registry
from shared.lease import (
    LEASE_BUCKET,
    Holder,
    Lease,
    LeaseLost,
    ensure_buckets,
    kv_stream,
    kv_subject,
    process_start,
    read,
)
from shared.ops import client
from shared.service import EXIT_NOT_THE_REGISTERED_STORE, serve
from shared.settings import Settings
from shared.store import Store, WriterLock
from tests.conftest import poll, unique
from tests.integration.conftest import query, running

SCHEMA = "CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY, name TEXT);"


def holder(store: str = "store-a") -> Holder:
    return dataclasses.replace(Holder.this_process(store), instance=unique("i"))


async def test_only_one_of_two_contenders_holds_a_lease_and_the_next_epoch_is_higher(js: JetStreamContext) -> None:
    await ensure_buckets(js, replicas=1)
    first, second = Lease(js, "svc", holder(), ttl_s=2.0), Lease(js, "svc", holder(), ttl_s=2.0)
    stop = asyncio.Event()
    assert await first.acquire(stop)
    await second.try_acquire()
    assert first.epoch is not None and second.epoch is None
    held = await read(js, "svc")
    assert held.holder is not None and held.holder.instance == first.holder.instance

    # The holder dies without a word (no renewal, no release): the other takes over once it expires.
    began = time.monotonic()
    assert await asyncio.wait_for(second.acquire(stop), timeout=10)
    assert 1.0 < time.monotonic() - began < 2.0 + 2.0
    assert second.epoch is not None and second.epoch > first.epoch
    with pytest.raises(LeaseLost):
        first.check()  # by its own clock, the first one's lease is over too


async def test_the_lease_of_a_dead_process_on_this_machine_is_taken_without_waiting_for_it(
    js: JetStreamContext,
) -> None:
    await ensure_buckets(js, replicas=1)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # noqa: ASYNC220 (a pid to kill)
    started = process_start(child.pid)
    assert started is not None
    dead = dataclasses.replace(holder(), pid=child.pid, started=started)
    alive = Lease(js, "svc", dead, ttl_s=30.0)  # as the child would have held it
    assert await alive.acquire(asyncio.Event())
    contender = Lease(js, "svc", holder(), ttl_s=30.0)
    await contender.try_acquire()
    assert contender.epoch is None, "its holder still runs: the lease is not free"
    child.kill()
    child.wait()
    await contender.try_acquire()  # far inside the 30 s TTL
    assert contender.epoch is not None and alive.epoch is not None and contender.epoch > alive.epoch


async def test_a_released_lease_is_taken_at_once_and_a_renewal_keeps_it(js: JetStreamContext) -> None:
    await ensure_buckets(js, replicas=1)
    first, second = Lease(js, "svc", holder(), ttl_s=1.5), Lease(js, "svc", holder(), ttl_s=1.5)
    stop = asyncio.Event()
    assert await first.acquire(stop)
    keeping = asyncio.create_task(first.keep(stop))
    await asyncio.sleep(3 * first.ttl_s)  # renewed the whole while: still its holder
    await second.try_acquire()
    assert second.epoch is None and not first.lost.is_set()
    first.check()
    stop.set()
    await keeping
    await first.release()
    began = time.monotonic()
    assert await asyncio.wait_for(second.acquire(asyncio.Event()), timeout=5)
    assert time.monotonic() - began < 1.0


async def test_a_renewal_stored_but_unacknowledged_keeps_the_lease_and_a_stranger_s_write_ends_it(
    js: JetStreamContext,
) -> None:
    await ensure_buckets(js, replicas=1)
    lease = Lease(js, "svc", holder(), ttl_s=2.0)
    stop = asyncio.Event()
    assert await lease.acquire(stop)

    async def write_behind_its_back(value: bytes) -> int:
        ack = await js.publish(
            kv_subject(LEASE_BUCKET, "svc"),
            value,
            headers={"Nats-Expected-Last-Subject-Sequence": str((await read(js, "svc")).revision)},
            msg_ttl=lease.ttl_s,
        )
        return ack.seq

    # One of its own renewals was stored, but the ack was lost (a timeout, a failover): its
    # next compare-and-swap is refused, and it finds its own write there and renews on from it.
    landed = await write_behind_its_back(lease._value())
    keeping = asyncio.create_task(lease.keep(stop))
    await poll(lambda: read(js, "svc"), lambda held: held.revision > landed + 1, timeout=5)
    assert not lease.lost.is_set()
    lease.check()

    # Another instance's write there means the lease is gone.
    stranger = json.loads(lease._value()) | {"instance": unique("i")}
    await write_behind_its_back(json.dumps(stranger).encode())
    await asyncio.wait_for(keeping, timeout=5)
    assert lease.lost.is_set()
    with pytest.raises(LeaseLost):
        lease.check()


async def test_a_failed_renewal_is_tried_again_within_a_second_not_a_period_later(js: JetStreamContext) -> None:
    await ensure_buckets(js, replicas=1)
    lease = Lease(js, "svc", holder(), ttl_s=12.0)  # renewed every 3 s, valid 10.2 s past a renewal
    stop = asyncio.Event()
    assert await lease.acquire(stop)
    keeping = asyncio.create_task(lease.keep(stop))
    stream = kv_stream(LEASE_BUCKET)
    config = (await js.stream_info(stream)).config
    # The bucket refuses every write for a while (as a stream with no leader does): too small a
    # message size for the lease's value.
    await js.update_stream(dataclasses.replace(config, max_msg_size=8))
    refused_from = lease.revision
    await asyncio.sleep(lease.renew_every_s + 0.5)  # so the next due renewal was refused
    assert lease.revision == refused_from and not lease.lost.is_set()
    await js.update_stream(config)
    writable_at = time.monotonic()
    await poll(lambda: read(js, "svc"), lambda held: held.revision > refused_from, timeout=lease.renew_every_s)
    # Tried again within RENEW_RETRY_S (0.5 s) of the bucket taking writes, not at the next period.
    assert time.monotonic() - writable_at < lease.renew_every_s / 2
    lease.check()
    stop.set()
    await keeping


async def test_a_commit_under_an_expired_lease_or_an_older_epoch_is_refused(
    js: JetStreamContext, tmp_path: Path
) -> None:
    await ensure_buckets(js, replicas=1)
    db = tmp_path / "svc.sqlite3"
    old = Lease(js, "svc", holder(), ttl_s=5.0)
    assert await old.acquire(asyncio.Event())
    old_store = await Store.open(db, SCHEMA, lease=old)
    await old_store.run(lambda tx: tx.execute("INSERT INTO things(name) VALUES ('under the old lease')"))

    # Paused past its lease (as by SIGSTOP): by its own clock the lease is over, so no commit.
    old.valid_until = time.monotonic() - 0.01
    with pytest.raises(LeaseLost):
        await old_store.run(lambda tx: tx.execute("INSERT INTO things(name) VALUES ('stale')"))

    # A newer epoch takes the file; the old writer, even with its clock fooled, cannot commit.
    await old.release()
    new = Lease(js, "svc", holder(), ttl_s=5.0)
    assert await new.acquire(asyncio.Event())
    new_store = await Store.open(db, SCHEMA, lease=new)
    await new_store.run(lambda tx: tx.execute("INSERT INTO things(name) VALUES ('under the new lease')"))
    old.valid_until, old.lost = time.monotonic() + 60, asyncio.Event()
    with pytest.raises(LeaseLost, match="newer epoch"):
        await old_store.run(lambda tx: tx.execute("INSERT INTO things(name) VALUES ('zombie')"))
    with pytest.raises(LeaseLost, match="not older than ours"):
        await Store.open(db, SCHEMA, lease=old)  # nor may it open the file again as its writer

    assert [name for (name,) in query(db, "SELECT name FROM things ORDER BY id")] == [
        "under the old lease",
        "under the new lease",
    ]
    epochs = query(db, "SELECT epoch, commits FROM writer_epochs ORDER BY epoch")
    assert epochs == [(old.epoch, 1), (new.epoch, 1)]
    await old_store.close()
    await new_store.close()


def test_the_writer_lock_is_exclusive_and_freed_on_release(tmp_path: Path) -> None:
    first, second = WriterLock(tmp_path / "svc.sqlite3"), WriterLock(tmp_path / "svc.sqlite3")
    assert first.try_lock("first")
    assert not second.try_lock("second")
    assert second.holder() == "first"
    first.release()
    assert second.try_lock("second")
    second.release()


async def _micro_roles(nc: Client, name: str) -> list[str]:
    """The role every running instance of micro service ``name`` announces."""
    inbox = nc.new_inbox()
    replies: list[str] = []

    async def collect(msg: object) -> None:
        replies.append(json.loads(msg.data)["metadata"]["role"])  # type: ignore[attr-defined]

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.INFO.{name}", b"", reply=inbox)
    await asyncio.sleep(0.5)  # a scatter-gather: every instance answers within this
    await sub.unsubscribe()
    return sorted(replies)


async def test_a_second_instance_on_the_same_data_dir_stands_by_and_takes_over_on_a_clean_stop(
    nc: Client, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings("payment_svc")
    customer = unique("cust")
    stop_second, second_started = asyncio.Event(), asyncio.Event()
    async with running(PAYMENT_SERVICE, settings):
        assert (await client.deposit(nc, customer, 500))["balance_cents"] == 500
        second = asyncio.create_task(serve(PAYMENT_SERVICE, settings, stop_second, second_started))
        await poll(lambda: _micro_roles(nc, "payments"), lambda roles: roles == ["standby", "writer"])
        # Every request is answered by the writer alone, never by the standby.
        for _ in range(10):
            assert await client.balance(nc, customer) == 500
        assert not second_started.is_set()
    # The writer stopped and gave up its lease: the standby writes now, on the same file.
    await asyncio.wait_for(second_started.wait(), timeout=5)
    assert await client.balance(nc, customer) == 500
    assert await _micro_roles(nc, "payments") == ["writer"]
    stop_second.set()
    assert await asyncio.wait_for(second, timeout=20) == 0
    epochs = query(settings.db_path, "SELECT epoch FROM writer_epochs ORDER BY epoch")
    assert len(epochs) == 2


async def test_an_instance_with_a_data_dir_of_its_own_refuses_to_run_and_writes_nothing(
    nc: Client, js: JetStreamContext, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("payment_svc")
    elsewhere = dataclasses.replace(settings, data_dir=tmp_path / "other-volume")
    async with running(PAYMENT_SERVICE, settings):
        code = await asyncio.wait_for(serve(PAYMENT_SERVICE, elsewhere), timeout=20)
        assert code == EXIT_NOT_THE_REGISTERED_STORE
        assert not elsewhere.db_path.exists()  # it did not even make a file

        # Nor one whose volume holds a store of its own (made before this one was registered).
        registry.store_identity(elsewhere.db_path, "payment_svc")
        code = await asyncio.wait_for(serve(PAYMENT_SERVICE, elsewhere), timeout=20)
        assert code == EXIT_NOT_THE_REGISTERED_STORE
        assert query(elsewhere.db_path, "SELECT name FROM sqlite_master WHERE name = 'accounts'") == []


async def test_a_lost_store_is_replaced_only_by_naming_the_one_it_replaces(
    js: JetStreamContext, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("payment_svc")
    async with running(PAYMENT_SERVICE, settings):
        pass
    lost = registry.store_identity(settings.db_path, "payment_svc")
    fresh = tmp_path / "new-volume" / "payment_svc.sqlite3"
    with pytest.raises(registry.NotTheRegisteredStore, match="nothing changed"):
        await registry.replace(js, "payment_svc", fresh, "payment_svc", replacing="not-the-registered-one")
    new_id = await registry.replace(js, "payment_svc", fresh, "payment_svc", replacing=lost)
    current = await registry.registered(js, "payment_svc")
    assert current is not None and current.store_id == new_id != lost
    # The new volume runs; the old one is refused.
    async with running(PAYMENT_SERVICE, dataclasses.replace(settings, data_dir=fresh.parent)):
        pass
    assert await asyncio.wait_for(serve(PAYMENT_SERVICE, settings), timeout=20) == EXIT_NOT_THE_REGISTERED_STORE


async def test_a_running_writer_whose_store_is_replaced_under_it_stops(
    js: JetStreamContext, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("payment_svc", lease_ttl_s=2.0)  # it looks every renewal: half a second
    stop, started = asyncio.Event(), asyncio.Event()
    serving = asyncio.create_task(serve(PAYMENT_SERVICE, settings, stop, started))
    try:
        await asyncio.wait_for(started.wait(), timeout=20)
        running_store = registry.store_identity(settings.db_path, "payment_svc")
        await registry.replace(
            js, "payment_svc", tmp_path / "new-volume" / "payment_svc.sqlite3", "payment_svc", running_store
        )
        assert await asyncio.wait_for(serving, timeout=10) == 1  # it stopped by itself, as a failure
    finally:
        stop.set()
        await asyncio.gather(serving, return_exceptions=True)
