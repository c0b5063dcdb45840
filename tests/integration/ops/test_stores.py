"""saga-store: show the registered stores and leases; replace a lost store only by naming it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from payment_svc.__main__ import PAYMENT_SERVICE
from shared.ops.harness import NatsServer
from shared.registry import read_store_identity
from shared.settings import Settings
from tests.integration.conftest import running


def saga_store(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "saga-store"
    return subprocess.run([str(cli), "--nats-url", url, *args], capture_output=True, text=True, timeout=60)


async def test_show_id_and_a_deliberate_replacement(
    nats_server: NatsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("payment_svc")
    async with running(PAYMENT_SERVICE, settings):
        shown = saga_store(nats_server.url, "show")
        assert shown.returncode == 0, shown.stderr
        store_id = read_store_identity(settings.db_path)
        assert store_id is not None
        [row] = [line for line in shown.stdout.splitlines() if line.startswith("payment_svc")]
        assert store_id in row and " pid " in row  # registered, and its lease held
    ident = saga_store(nats_server.url, "id", "--service", "payment_svc", "--data-dir", str(settings.data_dir))
    assert ident.stdout.strip() == store_id

    new_dir = tmp_path / "restored"
    wrong = saga_store(nats_server.url, "replace", "payment_svc", "--data-dir", str(new_dir), "--replacing", "nope")
    assert wrong.returncode == 1 and "refused" in wrong.stderr and "nothing changed" in wrong.stderr
    done = saga_store(nats_server.url, "replace", "payment_svc", "--data-dir", str(new_dir), "--replacing", store_id)
    assert done.returncode == 0, done.stderr
    new_id = read_store_identity(new_dir / "payment_svc.sqlite3")
    assert new_id is not None and new_id != store_id and new_id in done.stdout
    [row] = [line for line in saga_store(nats_server.url, "show").stdout.splitlines() if line.startswith("payment_svc")]
    assert new_id in row and "free" in row  # the old writer gave its lease back when it stopped
