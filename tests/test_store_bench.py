"""The store benchmark's CI smoke run (``--quick``: small, never fails on timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_store_quick_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_store.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "group commit" in proc.stdout and "one txn per checkpoint" in proc.stdout
