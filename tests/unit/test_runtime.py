import ast
import os
import subprocess
import sys
from pathlib import Path

from shared.runtime import GC_THRESHOLDS


def run_python(script: str, tmp_path: Path) -> list[tuple[int, ...]]:
    """Run ``script`` in a fresh interpreter (the GC settings are process-wide) and read back the
    thresholds it prints, one tuple per line."""
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return [tuple(ast.literal_eval(line)) for line in done.stdout.splitlines() if line.startswith("(")]


def test_tune_gc_collects_less_often_than_cpythons_default(tmp_path: Path) -> None:
    script = """
import gc
print(gc.get_threshold())
from shared.runtime import tune_gc
tune_gc()
print(gc.get_threshold())
"""
    default, tuned = run_python(script, tmp_path)
    assert tuned == GC_THRESHOLDS
    assert all(mine > cpythons for mine, cpythons in zip(tuned, default, strict=True))


def test_a_service_process_is_tuned_before_it_serves(tmp_path: Path) -> None:
    # The entry point the console scripts and `python -m order_svc` run, with serve() replaced by
    # one that reports the thresholds it runs under.
    script = """
import gc
import shared.service

async def report(definition, settings, *args):
    print(gc.get_threshold())
    return 0

shared.service.serve = report
from order_svc.__main__ import main
try:
    main()
except SystemExit as done:
    assert done.code == 0, done.code
"""
    assert run_python(script, tmp_path) == [GC_THRESHOLDS]
