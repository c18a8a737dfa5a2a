"""The session benchmark's CI smoke run (``--quick``: small, never fails on timing).

Starts ``engine serve`` and the bare trio-websocket server as separate
processes and streams 20 real-time sessions to each; fails only if sessions
error out (or the benchmark itself breaks), not on CPU figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_sessions_quick_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_sessions.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the side-by-side table has the figures of both servers
    header = next(line for line in proc.stdout.splitlines() if "engine" in line and "bare" in line)
    assert header.split() == ["engine", "bare"]
    for row in (
        "server CPU per message (us)",
        "server CPU, % of a core",
        "sessions keeping up",
        "messages/s",
    ):
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(row)), None)
        assert line is not None, f"no {row!r} row in:\n{proc.stdout}"
        assert len(line[len(row) :].split()) >= 2, line
    assert "per-message server CPU, engine / bare" in proc.stdout
    results = {r["server"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"engine", "bare"}
    for r in results.values():
        assert r["errors"] == 0 and r["started"] == r["sessions"] == 20, r
        assert r["messages"] > 0 and r["server_cpu_s"] > 0, r
