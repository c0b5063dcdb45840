"""``saga-auth init``: its files, its keys kept or rotated, and its configuration run as documented
(``nats-server -c DIR/nats-server.conf -p PORT -sd DIR``) on a real server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import nkeys
import pytest

from shared.connection import Credentials, RefusedByServer, connect
from shared.ops.auth import ROLES, init, previous_seed_path, seed_path
from shared.ops.harness import _wait_for_line, free_port, nats_server_binary
from shared.partitions import Partitioning
from tests.conftest import admitted, poll

CLI = Path(sys.executable).parent / "saga-auth"


def public_keys(directory: Path) -> dict[str, str]:
    return {r: nkeys.from_seed(seed_path(directory, r).read_bytes().strip()).public_key.decode() for r in ROLES}


def test_init_writes_a_private_seed_per_role_and_keeps_them_unless_told_to_rotate(tmp_path: Path) -> None:
    done = subprocess.run([str(CLI), "init", str(tmp_path), "--partitions", "3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    first = public_keys(tmp_path)
    assert len(set(first.values())) == len(ROLES)
    for role in ROLES:
        assert seed_path(tmp_path, role).stat().st_mode & 0o777 == 0o600, role
        assert first[role] in done.stdout
    conf = (tmp_path / "permissions.conf").read_text()
    assert all(key in conf for key in first.values())
    assert "inventory_svc-p2-orders" in conf and "inventory_svc-p3-orders" not in conf  # PARTITIONS=3
    assert "include permissions.conf" in (tmp_path / "nats-server.conf").read_text()

    init(tmp_path, Partitioning(3))
    assert public_keys(tmp_path) == first
    # A rotation admits the new keys beside the previous ones, until those are dropped.
    init(tmp_path, Partitioning(3), rotate=True)
    rotated = public_keys(tmp_path)
    assert all(rotated[r] != first[r] for r in ROLES)
    conf = (tmp_path / "permissions.conf").read_text()
    assert all(key in conf for key in [*first.values(), *rotated.values()])
    assert all(previous_seed_path(tmp_path, r).stat().st_mode & 0o777 == 0o600 for r in ROLES)
    init(tmp_path, Partitioning(3), drop_previous=True)
    conf = (tmp_path / "permissions.conf").read_text()
    assert not any(key in conf for key in first.values()) and all(key in conf for key in rotated.values())
    assert not any(previous_seed_path(tmp_path, r).exists() for r in ROLES)
    assert public_keys(tmp_path) == rotated


def test_the_written_configuration_runs_with_a_port_and_store_from_the_command_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init(keys, Partitioning(1))
    checked = subprocess.run([nats_server_binary(), "-t", "-c", str(keys / "nats-server.conf")], capture_output=True)
    assert checked.returncode == 0, checked.stderr
    port, store, log = free_port(), tmp_path / "store", tmp_path / "nats.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [nats_server_binary(), "-c", str(keys / "nats-server.conf"), "-p", str(port), "-sd", str(store)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_line(log, "Server is ready", server, 20)
        url = f"nats://127.0.0.1:{port}"
        asyncio.run(_admits_only_its_keys(url, keys))
        assert store.is_dir() and any(store.iterdir())
        asyncio.run(_rotates_without_a_gap(url, keys, server))
    finally:
        server.terminate()
        server.wait(10)


async def _admits_only_its_keys(url: str, keys: Path) -> None:
    operator = await connect(url, Credentials(nkey_seed=seed_path(keys, "operator")))
    info = await operator.jetstream().account_info()  # JetStream is on
    assert info.limits is not None
    assert operator.max_payload == 1024 * 1024
    await operator.close()
    with pytest.raises(RefusedByServer):
        await connect(url, Credentials(), connect_timeout=2)


async def _rotates_without_a_gap(url: str, keys: Path, server: subprocess.Popen[bytes]) -> None:
    """The documented rotation: --rotate, reload, move each process to its new key, --drop-previous, reload."""
    old_seed = keys / "old-order_svc.nk"
    old_seed.write_bytes(seed_path(keys, "order_svc").read_bytes())
    running = await connect(url, Credentials(nkey_seed=old_seed, inbox_prefix="_INBOX_order_svc"))
    init(keys, Partitioning(1), rotate=True)
    server.send_signal(signal.SIGHUP)  # nats-server reloads its configuration
    new = Credentials(nkey_seed=seed_path(keys, "order_svc"), inbox_prefix="_INBOX_order_svc")
    fresh = await poll(lambda: admitted(url, new), lambda nc: nc is not None)
    assert fresh is not None
    await running.jetstream().account_info()  # the process on its previous key is undisturbed
    await fresh.close()
    await running.close()
    init(keys, Partitioning(1), drop_previous=True)
    server.send_signal(signal.SIGHUP)
    await poll(lambda: admitted(url, Credentials(nkey_seed=old_seed), close=True), lambda nc: nc is None)
