#!/usr/bin/env python3
"""Throughput of engine's native audio kernels, next to audioop, numpy and webrtcvad.

Every kernel is timed through the public Python API (``engine.audio``), so the
figures include the wrapper's checks and allocations, on

* 20 ms chunks (320 samples of 16 kHz mono; 500 different chunks per pass), and
* 10 s buffers (160,000 samples),

next to the baseline doing the same job in the same run. Each measurement is
the best of several passes (passes of ours and of the baseline alternate, so
both see the same machine load). Columns:

* ``us/call``  wall time per call (perf_counter)
* ``MB/s``     input bytes per second (1 MB = 10^6 bytes)
* ``RTF``      real-time factor: seconds of 16 kHz mono audio processed per
               second of CPU (one core)
* ``ratio``    baseline time / our time (> 1: we are faster)

Then the targets of issue 2 are checked as ratios of this run, and the script
exits with status 1 if one is missed (never with ``--quick``, a CI smoke test
whose timings mean nothing).

    python benchmarks/bench_audio.py            # full run (~30 s)
    python benchmarks/bench_audio.py --quick    # smoke test (~2 s)
    python benchmarks/bench_audio.py --json results.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine import audio

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python 3.13+ without audioop-lts
        audioop = None  # type: ignore[assignment]

try:
    import webrtcvad
except ImportError:
    webrtcvad = None

RATE = 16000
CHUNK = 320  # samples: 20 ms at 16 kHz
N_CHUNKS = 500  # 10 s of 20 ms chunks
BUF = 160_000  # samples: 10 s at 16 kHz


@dataclass
class Timing:
    name: str
    seconds: float  # per call
    in_bytes: int  # input bytes per call
    samples: int  # samples (of 16 kHz mono audio) per call

    @property
    def mbps(self) -> float:
        return self.in_bytes / self.seconds / 1e6

    @property
    def rtf(self) -> float:
        return self.samples / RATE / self.seconds


@dataclass
class Row:
    kernel: str
    size: str
    ours: Timing
    base: Timing | None
    extra: list[Timing] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return None if self.base is None else self.base.seconds / self.ours.seconds


@dataclass
class Target:
    name: str
    ratio: float | None
    need: float
    detail: str

    @property
    def ok(self) -> bool | None:
        return None if self.ratio is None else self.ratio >= self.need


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.rows: list[Row] = []
        # repetitions: (passes, minimum seconds per pass)
        self.passes = 2 if quick else 7
        self.min_pass_s = 0.0005 if quick else 0.03

    def _calib(self, fn: Callable[[], Any]) -> int:
        """Calls per pass so that a pass lasts at least min_pass_s."""
        reps = 1
        while True:
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            dt = time.perf_counter() - t
            if dt >= self.min_pass_s or reps >= 1 << 20:
                return reps
            reps = max(reps * 2, int(reps * self.min_pass_s / max(dt, 1e-9) * 1.2))

    def time_many(self, fns: Sequence[Callable[[], Any]]) -> list[float]:
        """Best seconds per call of each fn; passes of the fns alternate."""
        reps = [self._calib(f) for f in fns]
        best = [float("inf")] * len(fns)
        for _ in range(self.passes):
            for i, (f, r) in enumerate(zip(fns, reps, strict=True)):
                t = time.perf_counter()
                for _ in range(r):
                    f()
                best[i] = min(best[i], (time.perf_counter() - t) / r)
        return best

    def compare(
        self,
        kernel: str,
        size: str,
        ours: tuple[str, Callable[[], Any]],
        base: tuple[str, Callable[[], Any]] | None,
        in_bytes: int,
        samples: int,
        per: int = 1,
        extra: Sequence[tuple[str, Callable[[], Any]]] = (),
    ) -> Row:
        """per: calls each callable makes (a 20 ms pass makes N_CHUNKS calls)."""
        fns = [ours[1]] + ([base[1]] if base else []) + [e[1] for e in extra]
        secs = [s / per for s in self.time_many(fns)]
        row = Row(
            kernel,
            size,
            Timing(ours[0], secs[0], in_bytes, samples),
            Timing(base[0], secs[1], in_bytes, samples) if base else None,
            [Timing(e[0], s, in_bytes, samples) for e, s in zip(extra, secs[1 + bool(base) :], strict=True)],
        )
        self.rows.append(row)
        print_row(row)
        return row


def print_header() -> None:
    print(
        f"{'kernel':<31}{'size':<7}{'ours':>10}{'MB/s':>9}{'RTF':>10}   "
        f"{'baseline':<34}{'us/call':>9}{'MB/s':>9}{'RTF':>10}{'ratio':>8}"
    )
    print("-" * 139)


def fmt_t(t: Timing) -> str:
    return f"{t.seconds * 1e6:>10.2f}{t.mbps:>9.0f}{t.rtf:>10.0f}"


def print_row(r: Row) -> None:
    base = (
        f"{r.base.name:<34}{r.base.seconds * 1e6:>9.2f}{r.base.mbps:>9.0f}{r.base.rtf:>10.0f}{r.ratio:>7.2f}x"
        if r.base
        else f"{'-':<34}"
    )
    print(f"{r.kernel:<31}{r.size:<7}{fmt_t(r.ours)}   {base}", flush=True)
    for e in r.extra:
        ratio = e.seconds / r.ours.seconds
        print(
            f"{'':<31}{'':<7}{'':>10}{'':>9}{'':>10}   {e.name:<34}{e.seconds * 1e6:>9.2f}{e.mbps:>9.0f}"
            f"{e.rtf:>10.0f}{ratio:>7.2f}x",
            flush=True,
        )


def signal(n: int, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: noise bursts at a syllable rate over a noise floor, as float64 in [-1, 1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    env = 0.3 * np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2 + 0.003
    return np.clip(rng.standard_normal(n) * env, -1, 32767 / 32768)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="tiny repetitions; never fails on timing (CI smoke test)"
    )
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    b = Bench(args.quick)

    print(f"engine audio benchmark{' (--quick: timings are NOT meaningful)' if args.quick else ''}")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, native kernels: {audio.native_info()}"
    )
    print(
        f"audioop: {'yes' if audioop else 'NOT INSTALLED'}, "
        f"webrtcvad: {'yes' if webrtcvad else 'NOT INSTALLED'}"
    )
    print("times are the best of several passes; ratio = baseline time / our time\n")

    x = signal(BUF)
    s16 = np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2")
    s16_b = s16.tobytes()
    f32 = (s16 / 32768).astype(np.float32)
    f32_b = f32.tobytes()
    mu_b = audio.s16_to_ulaw(s16_b)
    s16_chunks = [s16_b[i * 2 * CHUNK : (i + 1) * 2 * CHUNK] for i in range(N_CHUNKS)]
    mu_chunks = [mu_b[i * CHUNK : (i + 1) * CHUNK] for i in range(N_CHUNKS)]
    f32_chunks = [f32[i * CHUNK : (i + 1) * CHUNK] for i in range(N_CHUNKS)]
    f32_b_chunks = [f32_b[i * 4 * CHUNK : (i + 1) * 4 * CHUNK] for i in range(N_CHUNKS)]
    i16_chunks = [s16[i * CHUNK : (i + 1) * CHUNK] for i in range(N_CHUNKS)]
    k = np.float32(1 / 32768)
    out_buf = np.empty(BUF, np.float32)
    out_small = np.empty(CHUNK, np.float32)
    np_out = np.empty(BUF, np.float32)
    ulaw_lut = audio.ulaw_to_f32(bytes(range(256)))

    def loop(fn: Callable[[Any], Any], items: list[Any]) -> Callable[[], None]:
        def run() -> None:
            for it in items:
                fn(it)

        return run

    def ao(name: str, fn: Callable[[], Any]) -> tuple[str, Callable[[], Any]] | None:
        return (name, fn) if audioop else None

    print_header()
    a = audioop
    # -- G.711 --
    r_enc = b.compare(
        "s16 -> mu-law",
        "10 s",
        ("s16_to_ulaw", lambda: audio.s16_to_ulaw(s16_b)),
        ao("audioop.lin2ulaw", lambda: a.lin2ulaw(s16_b, 2)),
        2 * BUF,
        BUF,
    )
    b.compare(
        "s16 -> mu-law",
        "20 ms",
        ("s16_to_ulaw", loop(audio.s16_to_ulaw, s16_chunks)),
        ao("audioop.lin2ulaw", loop(lambda c: a.lin2ulaw(c, 2), s16_chunks)),
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    r_dec = b.compare(
        "mu-law -> s16",
        "10 s",
        ("ulaw_to_s16", lambda: audio.ulaw_to_s16(mu_b)),
        ao("audioop.ulaw2lin", lambda: a.ulaw2lin(mu_b, 2)),
        BUF,
        BUF,
    )
    b.compare(
        "mu-law -> s16",
        "20 ms",
        ("ulaw_to_s16", loop(audio.ulaw_to_s16, mu_chunks)),
        ao("audioop.ulaw2lin", loop(lambda c: a.ulaw2lin(c, 2), mu_chunks)),
        CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    # -- RMS --
    r_rms = b.compare(
        "rms (s16)",
        "10 s",
        ("rms_s16", lambda: audio.rms_s16(s16_b)),
        ao("audioop.rms", lambda: a.rms(s16_b, 2)),
        2 * BUF,
        BUF,
    )
    b.compare(
        "rms (s16)",
        "20 ms",
        ("rms_s16", loop(audio.rms_s16, s16_chunks)),
        ao("audioop.rms", loop(lambda c: a.rms(c, 2), s16_chunks)),
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    # -- S16 <-> float32 --
    r_s2f = b.compare(
        "s16 -> f32 (allocating)",
        "10 s",
        ("s16_to_f32", lambda: audio.s16_to_f32(s16_b)),
        ("numpy astype(f32)*(1/32768)", lambda: s16.astype(np.float32) * k),
        2 * BUF,
        BUF,
    )
    b.compare(
        "s16 -> f32 (allocating)",
        "20 ms",
        ("s16_to_f32", loop(audio.s16_to_f32, s16_chunks)),
        (
            "numpy astype(f32)*(1/32768)",
            loop(lambda c: np.frombuffer(c, "<i2").astype(np.float32) * k, s16_chunks),
        ),
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    b.compare(
        "s16 -> f32 (into out=)",
        "10 s",
        ("s16_to_f32(..., out=)", lambda: audio.s16_to_f32(s16_b, out=out_buf)),
        ("numpy multiply(a, 1/32768, out=)", lambda: np.multiply(s16, k, out=np_out)),
        2 * BUF,
        BUF,
    )
    b.compare(
        "s16 -> f32 (into out=)",
        "20 ms",
        ("s16_to_f32(..., out=)", loop(lambda c: audio.s16_to_f32(c, out=out_small), s16_chunks)),
        ("numpy multiply(a, 1/32768, out=)", loop(lambda c: np.multiply(c, k, out=out_small), i16_chunks)),
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    r_f2s = b.compare(
        "f32 -> s16",
        "10 s",
        ("f32_to_s16", lambda: audio.f32_to_s16(f32)),
        ("numpy clip(x*32768).astype(i16)", lambda: np.clip(f32 * 32768, -32768, 32767).astype(np.int16)),
        4 * BUF,
        BUF,
    )
    b.compare(
        "f32 -> s16 (bytes out)",
        "10 s",
        ("f32_to_s16", lambda: audio.f32_to_s16(f32)),
        (
            "numpy clip-cast .tobytes()",
            lambda: np.clip(f32 * 32768, -32768, 32767).astype(np.int16).tobytes(),
        ),
        4 * BUF,
        BUF,
    )
    b.compare(
        "f32 -> s16",
        "20 ms",
        ("f32_to_s16", loop(audio.f32_to_s16, f32_chunks)),
        (
            "numpy clip(x*32768).astype(i16)",
            loop(lambda c: np.clip(c * 32768, -32768, 32767).astype(np.int16), f32_chunks),
        ),
        4 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    # -- mu-law <-> float32, F32LE sanitising (no targets; numpy references) --
    mu_arr = np.frombuffer(mu_b, np.uint8)
    b.compare(
        "mu-law -> f32",
        "10 s",
        ("ulaw_to_f32", lambda: audio.ulaw_to_f32(mu_b)),
        ("numpy table lookup lut[codes]", lambda: ulaw_lut[mu_arr]),
        BUF,
        BUF,
    )
    b.compare(
        "mu-law -> f32",
        "20 ms",
        ("ulaw_to_f32", loop(audio.ulaw_to_f32, mu_chunks)),
        ("numpy table lookup lut[codes]", loop(lambda c: ulaw_lut[np.frombuffer(c, np.uint8)], mu_chunks)),
        CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    b.compare(
        "f32 -> mu-law",
        "10 s",
        ("f32_to_ulaw", lambda: audio.f32_to_ulaw(f32)),
        ao(
            "numpy clip-cast + audioop.lin2ulaw",
            lambda: a.lin2ulaw(np.clip(f32 * 32768, -32768, 32767).astype(np.int16).tobytes(), 2),
        ),
        4 * BUF,
        BUF,
    )
    b.compare(
        "f32 -> mu-law",
        "20 ms",
        ("f32_to_ulaw", loop(audio.f32_to_ulaw, f32_chunks)),
        ao(
            "numpy clip-cast + audioop.lin2ulaw",
            loop(
                lambda c: a.lin2ulaw(np.clip(c * 32768, -32768, 32767).astype(np.int16).tobytes(), 2),
                f32_chunks,
            ),
        ),
        4 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    b.compare(
        "f32le sanitize (NaN/Inf)",
        "10 s",
        ("sanitize_f32", lambda: audio.sanitize_f32(f32_b)),
        (
            "numpy nan_to_num(frombuffer)",
            lambda: np.nan_to_num(np.frombuffer(f32_b, "<f4"), nan=0.0, posinf=1.0, neginf=-1.0),
        ),
        4 * BUF,
        BUF,
    )
    b.compare(
        "f32le sanitize (NaN/Inf)",
        "20 ms",
        ("sanitize_f32", loop(audio.sanitize_f32, f32_b_chunks)),
        (
            "numpy nan_to_num(frombuffer)",
            loop(
                lambda c: np.nan_to_num(np.frombuffer(c, "<f4"), nan=0.0, posinf=1.0, neginf=-1.0),
                f32_b_chunks,
            ),
        ),
        4 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )

    # -- per-frame energy --
    def np_energy(arr: np.ndarray) -> Any:
        f = arr.reshape(-1, CHUNK).astype(np.float32) * k
        return 10 * np.log10(np.maximum(np.mean(f * f, axis=1), 1e-12))

    b.compare(
        "frame energy (20 ms frames)",
        "10 s",
        ("frame_energy", lambda: audio.frame_energy(s16_b, "pcm_s16le", RATE)),
        ("numpy reshape/mean/log10", lambda: np_energy(s16)),
        2 * BUF,
        BUF,
    )
    b.compare(
        "frame energy (20 ms frames)",
        "20 ms",
        ("frame_energy", loop(lambda c: audio.frame_energy(c, "pcm_s16le", RATE), s16_chunks)),
        ("numpy reshape/mean/log10", loop(np_energy, i16_chunks)),
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )

    # -- the fused hot path: decode + energy + VAD (StreamDecoder.feed) --
    vad = webrtcvad.Vad(2) if webrtcvad else None
    web = ("webrtcvad.Vad(2).is_speech", loop(lambda c: vad.is_speech(c, RATE), s16_chunks)) if vad else None
    dec = audio.StreamDecoder("pcm_s16le", RATE)
    r_vad20 = b.compare(
        "feed s16 (decode+energy+VAD)",
        "20 ms",
        ("StreamDecoder.feed", loop(dec.feed, s16_chunks)),
        web,
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    chunks100 = [s16_b[i : i + 10 * CHUNK] for i in range(0, len(s16_b), 10 * CHUNK)]
    dec100 = audio.StreamDecoder("pcm_s16le", RATE)
    # per 20 ms frame: a 100 ms chunk is 5 frames
    r_vad100 = b.compare(
        "feed s16 (decode+energy+VAD)",
        "100 ms",
        ("StreamDecoder.feed, 100 ms chunks", loop(dec100.feed, chunks100)),
        web,
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    dec10s = audio.StreamDecoder("pcm_s16le", RATE)
    b.compare(
        "feed s16 (decode+energy+VAD)",
        "10 s",
        ("StreamDecoder.feed", lambda: dec10s.feed(s16_b)),
        ("webrtcvad.Vad(2).is_speech x 500", web[1]) if web else None,
        2 * BUF,
        BUF,
    )
    for enc, data, chunks in (
        ("mulaw", mu_b, mu_chunks),
        ("pcm_f32le", f32_b, f32_b_chunks),
    ):
        d20 = audio.StreamDecoder(enc, RATE)
        bps = audio.bytes_per_sample(enc)
        b.compare(
            f"feed {enc}",
            "20 ms",
            ("StreamDecoder.feed", loop(d20.feed, chunks)),
            web,
            bps * CHUNK,
            CHUNK,
            N_CHUNKS,
        )
        d10 = audio.StreamDecoder(enc, RATE)
        b.compare(
            f"feed {enc}",
            "10 s",
            ("StreamDecoder.feed", functools.partial(d10.feed, data)),
            None,
            bps * BUF,
            BUF,
        )
    dd = audio.StreamDecoder("pcm_s16le", RATE)
    b.compare(
        "feed_decode s16 (+float32 out)",
        "20 ms",
        ("StreamDecoder.feed_decode", loop(dd.feed_decode, s16_chunks)),
        None,
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )
    df = audio.StreamDecoder("pcm_s16le", RATE)
    b.compare(
        "feed_frames s16 (+flags/dB)",
        "20 ms",
        ("StreamDecoder.feed_frames", loop(df.feed_frames, s16_chunks)),
        None,
        2 * CHUNK,
        CHUNK,
        N_CHUNKS,
    )

    # -- targets --
    targets = [
        Target("s16 -> mu-law vs audioop.lin2ulaw (10 s)", r_enc.ratio, 10.0, ""),
        Target("mu-law -> s16 vs audioop.ulaw2lin (10 s)", r_dec.ratio, 1.0, ""),
        Target("rms vs audioop.rms (10 s)", r_rms.ratio, 2.0, ""),
        Target("s16 -> f32 vs numpy astype*k, both allocating (10 s)", r_s2f.ratio, 1.5, ""),
        Target("f32 -> s16 vs numpy clip+astype (10 s)", r_f2s.ratio, 1.0, ""),
        Target("feed 20 ms chunks vs webrtcvad, frames/s", r_vad20.ratio, 2.0, ""),
        Target("feed 100 ms chunks vs webrtcvad, frames/s", r_vad100.ratio, 8.0, ""),
    ]
    for t in (targets[-2], targets[-1]):
        if t.ratio is not None:
            row = r_vad20 if t is targets[-2] else r_vad100
            assert row.base is not None
            t.detail = f"{1 / row.ours.seconds:,.0f} vs {1 / row.base.seconds:,.0f} frames/s"
    print("\ntargets (ratios measured in this run):")
    missed = 0
    for t in targets:
        if t.ratio is None:
            status = "SKIP (baseline not installed)"
        else:
            status = "ok" if t.ok else "MISSED"
            missed += not t.ok
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}x"
        print(f"  {t.name:<56} {ratio:>8}  (need >= {t.need:g}x)  {status}  {t.detail}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "quick": args.quick,
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                    "native": audio.native_info(),
                    "rows": [
                        {
                            "kernel": r.kernel,
                            "size": r.size,
                            "ours": asdict(r.ours) | {"mbps": r.ours.mbps, "rtf": r.ours.rtf},
                            "baseline": None
                            if r.base is None
                            else asdict(r.base) | {"mbps": r.base.mbps, "rtf": r.base.rtf},
                            "ratio": r.ratio,
                            "extra": [asdict(e) | {"mbps": e.mbps, "rtf": e.rtf} for e in r.extra],
                        }
                        for r in b.rows
                    ],
                    "targets": [
                        {"name": t.name, "ratio": t.ratio, "need": t.need, "ok": t.ok} for t in targets
                    ],
                },
                fh,
                indent=2,
            )
    if args.quick:
        print("\n--quick: timings not checked (exit 0)")
        return 0
    if missed:
        print(f"\n{missed} target(s) MISSED")
        return 1
    print("\nall targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
