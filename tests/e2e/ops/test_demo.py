"""saga-demo, as the README's first command runs it: the whole system, and every demo order ends as expected."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_demo_command_runs_the_system_and_every_demo_order_ends_as_expected(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    done = subprocess.run(
        [str(ROOT / "run"), "demo", "--once", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    outcomes = [line for line in lines if line.strip().startswith("demo-")]
    assert len(outcomes) == 5, done.stdout
    assert all(line.endswith("[ok]") for line in outcomes), done.stdout
    assert "balances: alice 75.00, bob 5.00" in done.stdout
    assert "saga-demo: stopped." in done.stdout
    for service in ("order_svc", "payment_svc", "inventory_svc"):
        assert (tmp_path / "data" / f"{service}.sqlite3").exists()
        log = (tmp_path / "data" / "logs" / f"{service}.log").read_text()
        assert '"service.stopped"' in log, service  # stopped cleanly, not killed
