"""saga-demo, as the README's first command runs it: the whole system, and every demo order ends as expected."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    return subprocess.run(
        [str(ROOT / "run"), "demo", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "topology",
    [[], ["--cluster", "--instances", "2"]],
    ids=["one-server", "cluster-two-instances"],
)
def test_demo_command_runs_the_system_and_every_demo_order_ends_as_expected(
    tmp_path: Path, topology: list[str]
) -> None:
    done = run_demo("--once", "--data-dir", str(tmp_path / "data"), *topology)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    outcomes = [line for line in lines if line.strip().startswith("demo-")]
    assert len(outcomes) == 5, done.stdout
    assert all(line.endswith("[ok]") for line in outcomes), done.stdout
    assert "balances: alice 75.00, bob 5.00" in done.stdout
    assert "saga-demo: stopped." in done.stdout
    assert "saga-demo: saga explorer (saga-web) at http://127.0.0.1:" in done.stdout
    assert "saga-web: serving http://127.0.0.1:" in (tmp_path / "data" / "logs" / "saga-web.log").read_text()
    # Secure by default: the server admitted only saga-auth's keys, each private to its owner.
    assert f"behind saga-auth: one key per service and role in {tmp_path / 'data' / 'auth'}" in done.stdout
    for role in ("order_svc", "payment_svc", "inventory_svc", "client", "operator"):
        assert (tmp_path / "data" / "auth" / f"{role}.nk").stat().st_mode & 0o777 == 0o600, role
    for service in ("order_svc", "payment_svc", "inventory_svc"):
        assert (tmp_path / "data" / f"{service}.sqlite3").exists()
        log = (tmp_path / "data" / "logs" / f"{service}.log").read_text()
        assert '"service.stopped"' in log, service  # stopped cleanly, not killed
    if topology:
        assert done.stdout.count(" standby ") == 3, done.stdout
        assert "a 3-node JetStream cluster, R3 streams, at nats://127.0.0.1:" in done.stdout


def test_demo_refuses_a_data_dir_made_with_another_topology(tmp_path: Path) -> None:
    assert run_demo("--once", "--data-dir", str(tmp_path / "data")).returncode == 0
    done = run_demo("--once", "--cluster", "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2
    assert "was made with single NATS, not cluster-3" in done.stderr
