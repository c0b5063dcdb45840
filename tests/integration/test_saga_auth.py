"""``saga-auth init``: its files, its keys kept or rotated, and its configuration run as documented
(``nats-server -c DIR/nats-server.conf -p PORT -sd DIR``) on a real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nkeys
import pytest

from shared.connection import Credentials, RefusedByServer, connect
from shared.ops.auth import ROLES, init, seed_path
from shared.ops.harness import _wait_for_line, free_port, nats_server_binary
from shared.partitions import Partitioning

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
    assert "payment_svc-p2-orders" in conf and "payment_svc-p3-orders" not in conf  # PARTITIONS=3
    assert "include permissions.conf" in (tmp_path / "nats-server.conf").read_text()

    init(tmp_path, Partitioning(3))
    assert public_keys(tmp_path) == first
    init(tmp_path, Partitioning(3), rotate=True)
    rotated = public_keys(tmp_path)
    assert all(rotated[r] != first[r] for r in ROLES)
    assert not any(key in (tmp_path / "permissions.conf").read_text() for key in first.values())


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
        asyncio.run(_admits_only_its_keys(f"nats://127.0.0.1:{port}", keys))
        assert store.is_dir() and any(store.iterdir())
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
