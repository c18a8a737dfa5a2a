"""Smoke test of benchmarks/bench_audio.py: the quick mode runs, exits 0 and
prints a row for every kernel (its timings are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_audio.py"

KERNELS = [
    "s16 -> mu-law",
    "mu-law -> s16",
    "rms (s16)",
    "s16 -> f32 (allocating)",
    "s16 -> f32 (into out=)",
    "f32 -> s16",
    "mu-law -> f32",
    "f32 -> mu-law",
    "f32le sanitize (NaN/Inf)",
    "frame energy (20 ms frames)",
    "feed s16 (decode+energy+VAD)",
    "feed mulaw",
    "feed pcm_f32le",
    "feed_decode s16 (+float32 out)",
    "feed_frames s16 (+flags/dB)",
]


def test_quick_benchmark_runs_and_reports_every_kernel(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for kernel in KERNELS:
        sizes = {line[31:38].strip() for line in lines if line.startswith(kernel + " ")}
        expected = {"20 ms"} if kernel.startswith("feed_") else {"20 ms", "10 s"}
        assert expected <= sizes, f"{kernel!r}: rows for {sorted(sizes)} in:\n{proc.stdout}"
    assert "100 ms" in {line[31:38].strip() for line in lines if line.startswith("feed s16 ")}
    # every target is listed with a ratio (or skipped when its baseline is not installed)
    targets = [line for line in lines if "(need >=" in line]
    assert len(targets) == 7
    assert all(("x  (need" in t) or "SKIP" in t for t in targets)
    data = json.loads(out_json.read_text())
    assert data["quick"] is True and len(data["targets"]) == 7
    assert all(r["ours"]["seconds"] > 0 for r in data["rows"])
