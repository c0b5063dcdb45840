"""The tiny bench: the command runs end to end and checks its own outcomes. No timing asserts:
speed is measured by the benchmark, not by tests (docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_bench(args: list[str], scratch: Path) -> subprocess.CompletedProcess[str]:
    """``saga-bench args`` with its runs' stream stores and SQLite files made under ``scratch``."""
    cli = Path(sys.executable).parent / "saga-bench"
    env = {**os.environ, "TMPDIR": str(scratch)}
    return subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=600, env=env)


def test_tiny_bench_runs_both_systems_verifies_outcomes_and_writes_json_and_chart(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = run_bench(["--burst", "300", "--floor", "--out", str(tmp_path)], scratch)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(scratch.iterdir()) == []  # a run that gave the right answer cleans up after itself
    [result_file] = tmp_path.glob("bench-*.json")
    [chart] = tmp_path.glob("bench-*.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(result_file.read_text())
    floor, saga = summary["results"]
    assert (floor["label"], saga["label"]) == ("floor", "saga")
    for result in (floor, saga):
        assert result["orders"] == 300 and result["wrong_outcomes"] == 0
        assert sum(result["outcomes"].values()) == 300 and "not finished" not in result["outcomes"]
        assert set(result["latency_ms"]) == {"p50", "p95", "p99", "max"}
        assert result["redelivered"] == 0  # every message acked within ACK_WAIT_S, none nakked
    assert set(saga["processes"]) == {"nats-server", "order_svc", "payment_svc", "inventory_svc"}
    # Run-queue time needs the kernel's schedstats; where it keeps them, every process has a figure.
    counted = Path("/proc/self/schedstat").exists()
    for usage in [*saga["processes"].values(), saga["load_generator"]]:
        assert usage["cpu_percent"] >= 0 and usage["peak_rss_mb"] > 0
        assert (usage["run_queue_percent"] >= 0) if counted else (usage["run_queue_percent"] is None)
    # Each of them handled hundreds of messages; the load generator's share may round to no clock tick.
    assert all(usage["cpu_percent"] > 0 for usage in saga["processes"].values())
    assert saga["outcomes"]["CONFIRMED"] > 200  # the default mix: about 80%
    # Every saga stores its events in the three public streams, and nothing in step streams unpartitioned.
    assert set(saga["stored_bytes_per_saga"]) == {"ORDERS", "PAYMENTS", "INVENTORY"}
    assert all(size > 100 for size in saga["stored_bytes_per_saga"].values())
    assert "stored per saga B" in done.stdout
    # The chart's time buckets: round ones, enough of them for a short burst, every saga in one.
    widths = {point["bucket_s"] for point in saga["timeline"]}
    assert len(widths) == 1 and saga["elapsed_s"] / widths.pop() <= 60
    assert round(sum(p["sagas_per_s"] * p["bucket_s"] for p in saga["timeline"])) == 300
    assert summary["floor_ratio"] > 0
    assert (
        "saga / floor" in done.stdout
        and "completed sagas/s" in done.stdout
        and "redelivered" in done.stdout
        and "run queue %" in done.stdout
    )


def test_bench_keeps_a_runs_files_when_asked(tmp_path: Path) -> None:
    done = run_bench(["--burst", "20", "--keep-workdir", "--out", str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [workdir] = tmp_path.glob("saga-bench-saga-*")
    assert {"order_svc.sqlite3", "payment_svc.sqlite3", "inventory_svc.sqlite3"} <= {p.name for p in workdir.iterdir()}
    assert str(workdir) in done.stderr


def test_a_shape_and_one_by_one_alternate_in_pairs_and_the_median_pair_is_reported(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = ["--burst", "200", "--partitions", "2", "--pairs", "2", "--nats-sync", "2m", "--out", str(tmp_path)]
    done = run_bench(args, scratch)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [result_file] = tmp_path.glob("bench-*.json")
    summary = json.loads(result_file.read_text())
    # Alternating, and the second pair the other way round.
    assert [r["label"] for r in summary["results"]] == ["saga-1", "saga-p2x1-1", "saga-p2x1-2", "saga-2"]
    pairs = [p["cpu_per_saga"] for p in summary["p2x1_over_p1x1_pairs"]]
    assert len(pairs) == 2 and summary["p2x1_over_p1x1_cpu_per_saga"] == sum(pairs) / 2  # the median of two
    # Partitioned, the step streams are stored too.
    assert {"PAYMENT_STEPS", "INVENTORY_STEPS"} <= set(summary["results"][1]["stored_bytes_per_saga"])
    assert "pair by pair" in done.stdout


def test_tracing_off_and_on_side_by_side(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = run_bench(["--burst", "200", "--tracing", "--nats-sync", "2m", "--out", str(tmp_path)], scratch)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [result_file] = tmp_path.glob("bench-*.json")
    summary = json.loads(result_file.read_text())
    untraced, traced = summary["results"]
    assert (untraced["label"], traced["label"]) == ("saga", "saga-traced")
    # Unpartitioned, a saga is 7 handlings (6 for one its payment refuses), all exported.
    assert untraced["spans_per_saga"] == 0 and 6 <= traced["spans_per_saga"] <= 7
    assert summary["p1x1_traced_over_p1x1_cpu_per_saga"] > 0
    assert "1 partitions x 1 instances, traced / 1 partitions x 1 instances" in done.stdout
