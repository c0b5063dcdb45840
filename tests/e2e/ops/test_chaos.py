"""The fast chaos run: kills, a NATS crash, a long stop, duplicates and garbage, then every invariant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_fast_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "saga-chaos"
    done = subprocess.run(
        [str(cli), "--duration", "30", "--rate", "12", "--seed", "7", "--workdir", str(tmp_path / "chaos")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "0 failed" in done.stdout
    for injected in (
        "SIGKILLs: order_svc",
        "SIGKILLs: payment_svc",
        "SIGKILLs: inventory_svc",
        "nats-server SIGKILLs",
        "long stops",
        "malformed messages",
        "events republished",
    ):
        assert injected in done.stdout, injected
    assert "CANCELLED timeout" in done.stdout, "the long stop must make some orders time out"


def test_chaos_refuses_a_workdir_left_by_another_run(tmp_path: Path) -> None:
    (tmp_path / "payment_svc.sqlite3").write_bytes(b"left over")
    cli = Path(sys.executable).parent / "saga-chaos"
    done = subprocess.run([str(cli), "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not empty" in done.stderr
