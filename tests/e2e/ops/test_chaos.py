"""The fast chaos runs, on one server and on a cluster: kills, NATS crashes, a long stop, a paused
writer, duplicates and garbage, then every invariant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_fast_chaos_run_behind_the_trust_boundary_keeps_every_invariant(tmp_path: Path) -> None:
    cli = Path(sys.executable).parent / "saga-chaos"
    done = subprocess.run(
        [str(cli), "--duration", "30", "--rate", "12", "--seed", "7", "--auth", "--workdir", str(tmp_path / "chaos")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "0 failed" in done.stdout
    assert "behind saga-auth" in done.stdout
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


@pytest.mark.parametrize("partitions", ["1", "4"], ids=["one_partition", "four_partitions"])
def test_chaos_on_a_cluster_with_two_instances_of_each_service_keeps_every_invariant(
    tmp_path: Path, partitions: str
) -> None:
    # A 3-node cluster with R3 streams; the node leading ORDERS SIGKILLed and restarted later;
    # each service's writer SIGKILLed (its standby takes over); a writer SIGSTOPped past its
    # lease, then SIGCONTed. A short lease keeps the pause short. Partitioned: a partition's
    # writer is killed or paused, the other instance takes its partitions over.
    cli = Path(sys.executable).parent / "saga-chaos"
    args = ["--cluster", "3", "--instances", "2", "--lease-ttl", "3", "--duration", "30", "--rate", "10", "--seed", "3"]
    args += ["--partitions", partitions]
    if partitions != "1":
        args.append("--auth")  # the partitions' consumers, leases and hand-overs within their permissions
    done = subprocess.run(
        [str(cli), *args, "--workdir", str(tmp_path / "chaos")], capture_output=True, text=True, timeout=600
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "0 failed" in done.stdout
    assert "PASS  no commit under a stale lease" in done.stdout
    if partitions != "1":
        assert "PASS  no partition committed under two owners in one lease epoch" in done.stdout
        assert "PASS  orders across several inventory partitions were among them" in done.stdout
    for injected in (
        "SIGKILLs: order_svc (its writer)",
        "SIGKILLs: payment_svc (its writer)",
        "SIGKILLs: inventory_svc (its writer)",
        "nats nodes SIGKILLed (the ORDERS leader)",
        "writers SIGSTOPped past their lease",
        "long stops",
        "malformed messages",
        "events republished",
    ):
        assert injected in done.stdout, injected
    for name in ("order_svc", "payment_svc", "inventory_svc"):
        # Every kill and the pause moved the lease on: more than one epoch wrote each store.
        log = (tmp_path / "chaos" / "logs" / f"{name}-2.log").read_text()
        assert '"lease.standing_by"' in log, name


def test_chaos_refuses_a_workdir_left_by_another_run(tmp_path: Path) -> None:
    (tmp_path / "payment_svc.sqlite3").write_bytes(b"left over")
    cli = Path(sys.executable).parent / "saga-chaos"
    done = subprocess.run([str(cli), "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not empty" in done.stderr
