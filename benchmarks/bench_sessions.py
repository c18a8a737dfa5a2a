"""Benchmark: N concurrent real-time v1 sessions against ``engine serve``, and a bare server.

The server under test runs as a separate process: ``engine --db TMP/engine.db
serve --port P --config TMP/bench.toml`` on a fresh database with accounts of a
``bench`` plan (created with ``engine accounts create``), then, in the same
run, ``benchmarks/bare_server.py`` (a trio-websocket server with the same
tuning that only reads messages). This process is the client, built to be
cheap so that it does not starve the server on a small machine: raw
non-blocking sockets driven by Trio, the WebSocket handshake and the server's
messages handled by ``wsproto``, and the audio frames (100 ms of 16 kHz S16
mono, speech-like noise bursts at a syllable rate, about -20 dBFS) masked once
with a constant key and re-sent as prepared bytes.

Each session connects (``Authorization: Bearer KEY``), sends ``start``, waits
for ``session_started``, then sends one 3,200-byte binary frame every 100 ms
(each frame 100 ms after the audio it holds began, as a microphone would),
paced by one timer task for all sessions. Sessions start gradually over the
ramp; CPU is measured over the steady-state window that follows (``--seconds``,
after a short settle); then the sessions close in the order they started, over
as long as the ramp took (each one sends its last frame, ``{"type":"close"}``,
and waits for ``session_ended``), so every session streams equally long.

Reported per server: server CPU over the window (``/proc/PID/stat``
utime + stime, all threads) in % of a core, per stream, and per message;
messages/s; whether every session kept up (server audio clock within 1 % of
its wall clock, from the last ``session_status`` and from ``session_ended``);
sessions that ended with errors. Targets (issue 3): 1,000 concurrent real-time
streams on one server process all keeping up, and per-message server CPU no
more than 1.5x the bare server's.

    python benchmarks/bench_sessions.py                 # 1,000 sessions, 30 s; exit 1 if a target is missed
    python benchmarks/bench_sessions.py --quick         # CI smoke: 20 sessions, 5 s; fails only on errors
    python benchmarks/bench_sessions.py --sessions 500 --seconds 20 --json out.json
    python benchmarks/bench_sessions.py --profile prof  # also py-spy each server over the window (prof-*.txt)

Diagnostics: ``--servers engine`` (or ``bare``) runs one server only;
``--engine-helper "ARGS"`` serves the same Engine through
``benchmarks/bench_sessions_server.py`` (loop lag and store latency logged
every 5 s, experimental ``--patch`` options; see its docstring) and ``--keep``
keeps the server logs. The figures are per machine: other processes' load is
shown ("other processes") because it changes what a server gets done.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SR = 16000
FRAME_S = 0.1
FRAME_BYTES = int(SR * FRAME_S) * 2  # 3,200 bytes: 100 ms of S16 mono
TICK_S = 0.002  # the pacer's resolution: 50 phase buckets per 100 ms period
BUCKETS = round(FRAME_S / TICK_S)
MASK = b"\x5a\xc3\x1e\x97"  # a constant client mask key is fine for a benchmark
START_MSG = json.dumps(
    {"type": "start", "audio": {"encoding": "pcm_s16le", "sample_rate": SR, "channels": 1}},
    separators=(",", ":"),
)
CLOSE_MSG = '{"type":"close"}'
KEEPUP_TOLERANCE = 0.01  # server audio clock within 1 % of its wall clock
TARGET_SESSIONS = 1000
TARGET_RATIO = 1.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- audio


def speech_like(seconds: float = 6.0, seed: int = 7) -> bytes:
    """Noise bursts at a syllable rate (~4/s, with phrase pauses), bursts about -20 dBFS RMS.

    Low-passed white noise under a Hann-ish envelope of 120-220 ms, gaps of
    60-160 ms and an occasional 0.3-0.6 s pause, over a -60 dBFS background: the
    engine's energy VAD calls most of it speech, so sessions never idle out.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = np.zeros(n)
    t = 0
    while t < n:
        b = min(int(rng.uniform(0.12, 0.22) * SR), n - t)
        env[t : t + b] = np.hanning(b) ** 0.3
        t += b + int(rng.uniform(0.06, 0.16) * SR)
        if rng.random() < 0.12:
            t += int(rng.uniform(0.3, 0.6) * SR)
    noise = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
    noise /= np.sqrt(np.mean(noise**2))
    x = noise * env * (10 ** (-20 / 20) * 32768) + rng.standard_normal(n) * (10 ** (-60 / 20) * 32768)
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def masked_frame(payload: bytes) -> bytes:
    """A complete client WebSocket binary frame (FIN, opcode 2, masked), built once."""
    n = len(payload)
    if n < 126:
        head = bytes([0x82, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big")
    pad = (-n) % 4
    data = np.frombuffer(payload + bytes(pad), dtype=np.uint32)
    key = np.frombuffer(MASK, dtype=np.uint32)[0]
    masked: bytes = (data ^ key).tobytes()[:n]
    return head + MASK + masked


def build_frames() -> list[bytes]:
    audio = speech_like()
    return [
        masked_frame(audio[i : i + FRAME_BYTES]) for i in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES)
    ]


# ---------------------------------------------------------------------------- process metrics


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of the process's main thread (the Trio loop: bound to one core by the GIL)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    total = sum(vals[:8])
    idle = vals[3] + vals[4]
    return total - idle, total


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------- client


class Session:
    __slots__ = (
        "blocked",
        "close_code",
        "close_tick",
        "closed",
        "dead",
        "ended",
        "error",
        "first_tick",
        "frames",
        "idx",
        "key",
        "pending",
        "sock",
        "speech",
        "start_latency",
        "started",
        "started_at",
        "status",
        "statuses",
        "text",
        "ws",
    )

    def __init__(self, idx: int, key: str) -> None:
        self.idx = idx
        self.key = key
        self.sock: socket.socket | None = None
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: bytearray | None = None  # bytes the socket would not take yet
        self.blocked = 0
        self.started = False
        self.started_at = 0.0
        self.start_latency: float | None = None  # connect -> session_started
        self.first_tick = 0
        self.close_tick = 0
        self.frames = 0
        self.status: tuple[float, float, float] | None = None  # last (duration, audio, speech)
        self.statuses = 0
        self.ended: dict[str, Any] | None = None
        self.error: str | None = None
        self.close_code: int | None = None
        self.closed = False
        self.dead = False
        self.text: list[str] = []
        self.speech = 0.0

    def fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self.dead = True


class Client:
    """N sessions over raw sockets, one pacer task sending every due frame."""

    def __init__(
        self,
        port: int,
        keys: list[str],
        n: int,
        *,
        ramp_s: float,
        settle_s: float,
        seconds: float,
        frames: list[bytes],
        server_pid: int,
        close_timeout_s: float,
    ) -> None:
        self.addr = ("127.0.0.1", port)
        self.host = f"127.0.0.1:{port}"
        self.sessions = [Session(i, keys[i % len(keys)]) for i in range(n)]
        self.ramp_s = ramp_s
        self.settle_s = settle_s
        self.seconds = seconds
        self.frames = frames
        self.server_pid = server_pid
        self.close_timeout_s = close_timeout_s
        self.buckets: list[list[Session]] = [[] for _ in range(BUCKETS)]
        self.sent = 0  # frames sent, all sessions
        self.max_late = 0.0  # pacer lateness within the window
        self.in_window = False
        self.blocked_in_window = 0
        self.window: dict[str, Any] = {}
        self._nursery: trio.Nursery | None = None

    # -- sending -------------------------------------------------------------

    def send_now(self, s: Session, data: bytes) -> None:
        """Write without waiting; what the socket refuses is queued and flushed by a task."""
        if s.dead or s.sock is None:
            return
        if s.pending is not None:
            s.pending += data
            return
        try:
            n = s.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            s.fail(f"send: {exc!r}")
            return
        if n < len(data):
            s.pending = bytearray(data[n:])
            s.blocked += 1
            if self.in_window:
                self.blocked_in_window += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._flush, s)

    async def _flush(self, s: Session) -> None:
        try:
            while s.pending and not s.dead and s.sock is not None:
                await trio.lowlevel.wait_writable(s.sock)
                try:
                    n = s.sock.send(s.pending)
                except BlockingIOError:
                    continue
                del s.pending[:n]
        except (OSError, trio.ClosedResourceError) as exc:
            s.fail(f"send: {exc!r}")
        finally:
            s.pending = None

    # -- receiving -------------------------------------------------------------

    async def _receive(self, s: Session) -> None:
        """Read once from the socket and handle the WebSocket events."""
        sock = s.sock
        assert sock is not None
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            s.fail(f"recv: {exc!r}")
            s.closed = True
            return
        if not data:
            if s.close_code is None:
                s.close_code = 1006
            s.closed = True
            return
        s.ws.receive_data(data)
        for ev in s.ws.events():
            if isinstance(ev, TextMessage):
                s.text.append(ev.data)
                if ev.message_finished:
                    self._on_text(s, "".join(s.text))
                    s.text = []
            elif isinstance(ev, BytesMessage | AcceptConnection):
                pass
            elif isinstance(ev, Ping):
                self.send_now(s, s.ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                s.close_code = ev.code
                try:
                    self.send_now(s, s.ws.send(ev.response()))
                except Exception:
                    pass
                s.closed = True
            elif isinstance(ev, RejectConnection):
                s.fail(f"handshake rejected: HTTP {ev.status_code}")
                s.closed = True
            elif isinstance(ev, RejectData) and s.error and ev.data:
                s.error += " " + bytes(ev.data).decode("utf-8", "replace")[:200]

    def _on_text(self, s: Session, text: str) -> None:
        try:
            msg = json.loads(text)
            kind = msg.get("type")
        except ValueError:
            s.fail(f"bad server message: {text[:100]!r}")
            return
        if kind == "session_status":
            s.status = (
                float(msg["duration"]),
                float(msg["audio_duration"]),
                float(msg.get("speech_duration", 0)),
            )
            s.statuses += 1
        elif kind == "session_started":
            s.started = True
        elif kind == "session_ended":
            s.ended = msg
        elif kind == "error":
            s.fail(f"{msg.get('code')}: {msg.get('message')}")

    # -- one session -------------------------------------------------------------

    async def run_session(self, s: Session, start_deadline: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sock = sock
        t_connect = trio.current_time()
        try:
            with trio.move_on_at(start_deadline):
                try:
                    sock.connect(self.addr)
                except BlockingIOError:
                    pass
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    s.fail(f"connect: {os.strerror(err)}")
                    return
                req = Request(
                    host=self.host,
                    target="/v1/stream",
                    extra_headers=[(b"Authorization", f"Bearer {s.key}".encode())],
                )
                self.send_now(s, s.ws.send(req))
                while s.ws.state is not ConnectionState.OPEN and not s.closed:
                    await self._receive(s)
                if s.closed:
                    s.fail(s.error or "connection closed during the handshake")
                    return
                self.send_now(s, s.ws.send(TextMessage(data=START_MSG)))
                while not s.started and not s.closed:
                    await self._receive(s)
            if not s.started:
                s.fail(s.error or "no session_started in time")
                return
            s.started_at = trio.current_time()
            s.start_latency = s.started_at - t_connect
            # the first frame goes out 100 ms after the audio it holds began
            tick = math.ceil((s.started_at + FRAME_S - self.t0) / TICK_S)
            s.first_tick = tick
            self.buckets[tick % BUCKETS].append(s)
            while not s.closed:
                await self._receive(s)
        except OSError as exc:
            s.fail(f"{exc!r}")
        finally:
            s.dead = True
            trio.lowlevel.notify_closing(sock)
            sock.close()

    # -- the pacer -------------------------------------------------------------

    async def pacer(self, last_close_tick: int) -> None:
        frames = self.frames
        nf = len(frames)
        n = 0
        t0 = self.t0
        send_now = self.send_now
        while True:
            await trio.sleep_until(t0 + n * TICK_S)
            now = trio.current_time()
            if self.in_window:
                late = now - (t0 + n * TICK_S)
                if late > self.max_late:
                    self.max_late = late
            while t0 + n * TICK_S <= now:
                bucket = self.buckets[n % BUCKETS]
                if bucket:
                    keep = []
                    for s in bucket:
                        if s.dead:
                            continue
                        if n < s.first_tick and n < s.close_tick:
                            keep.append(s)
                            continue
                        if n >= s.first_tick:
                            send_now(s, frames[(s.idx * 7 + s.frames) % nf])
                            s.frames += 1
                            self.sent += 1
                        if n >= s.close_tick:  # the last 100 ms went out just now: close
                            send_now(s, s.ws.send(TextMessage(data=CLOSE_MSG)))
                            continue
                        keep.append(s)
                    self.buckets[n % BUCKETS] = keep
                n += 1
            if n >= last_close_tick + BUCKETS and self.launched and not any(self.buckets):
                return

    # -- the run -------------------------------------------------------------

    async def run(self) -> None:
        n = len(self.sessions)
        self.t0 = trio.current_time()
        self.launched = False
        w0 = self.t0 + self.ramp_s + self.settle_s
        w1 = w0 + self.seconds
        # sessions close in the order they started, over as long as the ramp took: every
        # session streams for the same time, and the closes are as spread out as the starts
        for i, s in enumerate(self.sessions):
            s.close_tick = math.ceil((w1 + i * self.ramp_s / n - self.t0) / TICK_S)
        last_close_tick = self.sessions[-1].close_tick
        start_deadline = w1  # a session not started by the end of the window has failed
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.pacer, last_close_tick)
            for i, s in enumerate(self.sessions):
                await trio.sleep_until(self.t0 + i * self.ramp_s / n)
                nursery.start_soon(self.run_session, s, start_deadline)
            self.launched = True

            await trio.sleep_until(w0)
            self.in_window = True
            streaming0 = sum(1 for s in self.sessions if s.started and not s.dead)
            sent0, cpu0, mach0, me0, wall0 = (
                self.sent,
                proc_cpu(self.server_pid),
                machine_cpu(),
                self_cpu(),
                time.monotonic(),
            )
            main0 = main_thread_cpu(self.server_pid)
            await trio.sleep_until(w1)
            sent1, cpu1, mach1, me1, wall1 = (
                self.sent,
                proc_cpu(self.server_pid),
                machine_cpu(),
                self_cpu(),
                time.monotonic(),
            )
            main1 = main_thread_cpu(self.server_pid)
            self.in_window = False
            streaming1 = sum(1 for s in self.sessions if s.started and not s.dead)
            self.window = dict(
                wall_s=wall1 - wall0,
                messages=sent1 - sent0,
                server_user_s=cpu1[0] - cpu0[0],
                server_sys_s=cpu1[1] - cpu0[1],
                server_main_s=main1 - main0,
                machine_busy_cores=(mach1[0] - mach0[0])
                / max(1, mach1[1] - mach0[1])
                * (os.cpu_count() or 1),
                client_cpu_s=me1 - me0,
                server_rss_mb=proc_rss_mb(self.server_pid),
                streaming_at_start=streaming0,
                streaming_at_end=streaming1,
            )
            # wait for every session_ended
            with trio.move_on_at(w1 + self.ramp_s + FRAME_S + self.close_timeout_s) as scope:
                while any(not s.dead for s in self.sessions):
                    await trio.sleep(0.05)
            if scope.cancelled_caught:
                for s in self.sessions:
                    if not s.dead:
                        s.fail("no close from the server in time")
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- results


@dataclass
class Result:
    server: str
    sessions: int
    started: int = 0
    ok: int = 0
    errors: int = 0
    keep_up: int = 0
    ended: int = 0
    statuses: int = 0
    worst_status_lag_ms: float | None = None
    p50_status_lag_ms: float | None = None
    worst_end_lag_ms: float | None = None
    p50_end_lag_ms: float | None = None
    speech_share: float | None = None
    start_latency_ms_p50: float | None = None
    start_latency_ms_max: float | None = None
    window_s: float = 0.0
    messages: int = 0
    messages_per_s: float = 0.0
    server_cpu_s: float = 0.0
    server_user_s: float = 0.0
    server_sys_s: float = 0.0
    server_core_pct: float = 0.0
    server_main_thread_pct: float = 0.0  # the Trio loop's thread alone, % of a core
    cpu_per_stream_pct: float = 0.0
    cpu_per_message_us: float = 0.0
    server_rss_mb: float = 0.0
    client_core_pct: float = 0.0
    machine_busy_cores: float = 0.0
    other_load_cores: float = 0.0  # machine busy minus this server and this client: noise
    pacer_max_late_ms: float = 0.0
    client_blocked_sends: int = 0
    streaming_at_start: int = 0
    streaming_at_end: int = 0
    server_log_errors: int = 0
    error_samples: list[str] = field(default_factory=list)


def summarize(name: str, client: Client, log_errors: int) -> Result:
    ss = client.sessions
    r = Result(server=name, sessions=len(ss))
    status_lags, end_lags, speech = [], [], []
    for s in ss:
        r.started += s.started
        ok_end = s.ended is not None
        r.ended += ok_end
        r.statuses += s.statuses
        err = s.error
        if err is None and not (ok_end and s.close_code == 1000):
            err = (
                f"no session_ended (close code {s.close_code})"
                if not ok_end
                else f"close code {s.close_code}"
            )
        if err is not None:
            r.errors += 1
            if len(r.error_samples) < 5:
                r.error_samples.append(f"session {s.idx}: {err}")
            continue
        r.ok += 1
        keeps = True
        if s.status is not None:
            d, a, sp = s.status
            status_lags.append(d - a)
            keeps &= d - a <= KEEPUP_TOLERANCE * d
            if d:
                speech.append(sp / max(a, 1e-9))
        assert s.ended is not None
        d, a = float(s.ended["duration"]), float(s.ended["audio_duration"])
        end_lags.append(d - a)
        keeps &= d - a <= KEEPUP_TOLERANCE * d
        r.keep_up += keeps
    if status_lags:
        status_lags.sort()
        r.worst_status_lag_ms = round(status_lags[-1] * 1000, 1)
        r.p50_status_lag_ms = round(status_lags[len(status_lags) // 2] * 1000, 1)
    if end_lags:
        end_lags.sort()
        r.worst_end_lag_ms = round(end_lags[-1] * 1000, 1)
        r.p50_end_lag_ms = round(end_lags[len(end_lags) // 2] * 1000, 1)
    lat = sorted(s.start_latency for s in ss if s.start_latency is not None)
    if lat:
        r.start_latency_ms_p50 = round(lat[len(lat) // 2] * 1000, 1)
        r.start_latency_ms_max = round(lat[-1] * 1000, 1)
    if speech:
        r.speech_share = round(float(np.mean(speech)), 3)
    w = client.window
    r.window_s = w["wall_s"]
    r.messages = w["messages"]
    r.messages_per_s = r.messages / r.window_s
    r.server_user_s, r.server_sys_s = w["server_user_s"], w["server_sys_s"]
    r.server_cpu_s = r.server_user_s + r.server_sys_s
    r.server_core_pct = 100 * r.server_cpu_s / r.window_s
    r.server_main_thread_pct = 100 * w["server_main_s"] / r.window_s
    r.cpu_per_stream_pct = r.server_core_pct / max(1, w["streaming_at_start"])
    r.cpu_per_message_us = 1e6 * r.server_cpu_s / max(1, r.messages)
    r.server_rss_mb = w["server_rss_mb"]
    r.client_core_pct = 100 * w["client_cpu_s"] / r.window_s
    r.machine_busy_cores = w["machine_busy_cores"]
    r.other_load_cores = max(0.0, r.machine_busy_cores - (r.server_cpu_s + w["client_cpu_s"]) / r.window_s)
    r.pacer_max_late_ms = round(client.max_late * 1000, 1)
    r.client_blocked_sends = client.blocked_in_window
    r.streaming_at_start = w["streaming_at_start"]
    r.streaming_at_end = w["streaming_at_end"]
    r.server_log_errors = log_errors
    return r


# ---------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


BENCH_TOML = """\
# bench_sessions.py: a plan that admits the load (many streams per account, no usage windows)
[plans.bench]
max_session_s = 7200
concurrent_streams = {streams}
hourly_s = "unlimited"
daily_s = "unlimited"
monthly_s = "unlimited"
ws_messages_per_s = 100        # rate limits on, as in the paid plans (real time is 10 msgs/s)
audio_bytes_per_s = 65536      # ... and 32,000 B/s
"""


def engine_cmd() -> list[str]:
    exe = BIN / "engine"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "engine.cli"]


def create_accounts(db: Path, n: int) -> list[str]:
    """``engine accounts create`` n times (a few at a time); returns the API keys."""
    cmd = [
        *engine_cmd(),
        "--db",
        str(db),
        "accounts",
        "create",
        "--plan",
        "bench",
        "--credits",
        "10000000",
        "--json",
    ]
    # the first one alone creates the database file; then up to 4 in parallel
    keys: list[str] = []
    todo = n
    while todo:
        k = 1 if not keys else min(4, todo)
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)
        ]
        for p in procs:
            out, err = p.communicate(timeout=60)
            if p.returncode != 0:
                raise SystemExit(f"engine accounts create failed ({p.returncode}): {err.strip()}")
            keys.append(json.loads(out)["api_key"])
        todo -= k
    return keys


class ServerProcess:
    def __init__(
        self, name: str, cmd: list[str], log: Path, ready_marker: str, env: dict[str, str] | None = None
    ):
        self.name = name
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env, preexec_fn=raise_nofile
        )
        self.ready_marker = ready_marker

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-3000:]
                raise SystemExit(f"{self.name} server exited ({self.proc.returncode}):\n{tail}")
            if self.ready_marker in self.log_path.read_text():
                return
            time.sleep(0.05)
        self.stop()
        raise SystemExit(
            f"{self.name} server not ready after {timeout:g} s:\n{self.log_path.read_text()[-3000:]}"
        )

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_errors(self) -> int:
        text = self.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback"))


def start_profiler(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or (str(BIN / "py-spy") if (BIN / "py-spy").exists() else None)
    if spy is None:
        print("  (--profile: py-spy not found; pip install py-spy into the venv)", file=sys.stderr)
        return None
    cmd = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        "100",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_one(
    name: str,
    server: ServerProcess,
    keys: list[str],
    args: argparse.Namespace,
    frames: list[bytes],
    port: int,
) -> Result:
    server.wait_ready()
    client = Client(
        port,
        keys,
        args.sessions,
        ramp_s=args.ramp,
        settle_s=args.settle,
        seconds=args.seconds,
        frames=frames,
        server_pid=server.pid,
        close_timeout_s=args.close_timeout,
    )
    prof = None
    prefix = f"{args.profile}-{name}" if args.profile else ""
    if args.profile:

        async def run_with_profiler() -> None:
            nonlocal prof

            async def spy() -> None:
                nonlocal prof
                await trio.sleep(args.ramp + args.settle)
                prof = start_profiler(server.pid, Path(prefix + ".raw"), args.seconds)

            async with trio.open_nursery() as n:
                n.start_soon(spy)
                await client.run()

        trio.run(run_with_profiler)
    else:
        trio.run(client.run)
    if prof is not None:
        prof.wait(timeout=120)
        fold_profile(Path(prefix + ".raw"), Path(prefix + ".txt"))
    rc = server.stop()
    if rc not in (0, -signal.SIGTERM):
        print(f"  {name} server exited with {rc}", file=sys.stderr)
    return summarize(name, client, server.log_errors())


def fold_profile(raw: Path, out: Path, top: int = 40) -> None:
    """Self and inclusive sample counts per function from py-spy's folded stacks."""
    if not raw.exists():
        return
    self_n: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = stack.split(";")
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
    lines = [f"{total} samples", "", "self %  function"]
    for f, c in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * c / total:6.1f}  {f}")
    lines += ["", "incl %  function"]
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * c / total:6.1f}  {f}")
    out.write_text("\n".join(lines) + "\n")
    print(f"  profile: {out} (raw folded stacks: {raw})")


# ---------------------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    def fmt(v: Any, spec: str = "") -> str:
        if v is None:
            return "-"
        return format(v, spec) if spec else str(v)

    rows: list[tuple[str, list[str]]] = [
        ("sessions started", [f"{r.started}/{r.sessions}" for r in results]),
        (
            "start latency p50 / max (ms)",
            [f"{fmt(r.start_latency_ms_p50)} / {fmt(r.start_latency_ms_max)}" for r in results],
        ),
        ("streaming through the window", [f"{r.streaming_at_start}/{r.streaming_at_end}" for r in results]),
        ("sessions ended with errors", [str(r.errors) for r in results]),
        ("sessions keeping up (<= 1 % lag)", [f"{r.keep_up}/{r.sessions}" for r in results]),
        (
            "lag p50 / max, last session_status (ms)",
            [f"{fmt(r.p50_status_lag_ms)} / {fmt(r.worst_status_lag_ms)}" for r in results],
        ),
        ("speech share by the VAD (last status)", [fmt(r.speech_share) for r in results]),
        (
            "lag p50 / max, session_ended (ms)",
            [f"{fmt(r.p50_end_lag_ms)} / {fmt(r.worst_end_lag_ms)}" for r in results],
        ),
        ("messages/s (window)", [f"{r.messages_per_s:,.0f}" for r in results]),
        ("server CPU, % of a core", [f"{r.server_core_pct:.1f}" for r in results]),
        ("  main thread (Trio loop), % of a core", [f"{r.server_main_thread_pct:.1f}" for r in results]),
        ("  user / sys (s)", [f"{r.server_user_s:.2f} / {r.server_sys_s:.2f}" for r in results]),
        ("server CPU per stream, % of a core", [f"{r.cpu_per_stream_pct:.4f}" for r in results]),
        ("server CPU per message (us)", [f"{r.cpu_per_message_us:.1f}" for r in results]),
        ("server RSS (MB)", [f"{r.server_rss_mb:.0f}" for r in results]),
        ("server log errors", [str(r.server_log_errors) for r in results]),
        ("client CPU, % of a core", [f"{r.client_core_pct:.1f}" for r in results]),
        ("machine busy (cores)", [f"{r.machine_busy_cores:.2f}" for r in results]),
        ("  other processes (cores)", [f"{r.other_load_cores:.2f}" for r in results]),
        (
            "pacer max late (ms) / blocked sends",
            [f"{r.pacer_max_late_ms} / {r.client_blocked_sends}" for r in results],
        ),
    ]
    w0 = max(len(k) for k, _ in rows)
    w = max(14, *(len(v) for _, vs in rows for v in vs))
    out = [f"{'':<{w0}}  " + "  ".join(f"{r.server:>{w}}" for r in results)]
    out += [f"{k:<{w0}}  " + "  ".join(f"{v:>{w}}" for v in vs) for k, vs in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="N concurrent real-time v1 sessions: engine vs a bare trio-websocket server"
    )
    p.add_argument("--sessions", type=int, help="concurrent sessions (default 1000; --quick: 20)")
    p.add_argument("--seconds", type=float, help="steady-state window measured (default 30; --quick: 5)")
    p.add_argument(
        "--ramp", type=float, help="seconds over which sessions start (default sessions/100, at least 1)"
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds between the ramp and the window (default 2)"
    )
    p.add_argument(
        "--quick", action="store_true", help="CI smoke run: small; fails only if sessions error out"
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--servers", default="engine,bare", help="which servers, in order (default engine,bare)")
    p.add_argument("--per-account", type=int, default=100, help="sessions per account (default 100)")
    p.add_argument(
        "--close-timeout", type=float, default=60.0, help="seconds to wait for every session_ended"
    )
    p.add_argument(
        "--profile",
        metavar="PREFIX",
        help="py-spy each server over the window: PREFIX-engine.txt / PREFIX-bare.txt (+ .raw)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (database, logs)")
    p.add_argument(
        "--engine-helper",
        metavar="ARGS",
        help="diagnostics: serve with benchmarks/bench_sessions_server.py ARGS instead of `engine serve`",
    )
    args = p.parse_args(argv)
    if args.sessions is None:
        args.sessions = 20 if args.quick else TARGET_SESSIONS
    if args.seconds is None:
        args.seconds = 5.0 if args.quick else 30.0
    if args.ramp is None:
        args.ramp = max(1.0, args.sessions / 100)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not servers or any(s not in ("engine", "bare") for s in servers):
        p.error("--servers: a list of engine, bare")
    raise_nofile()

    tmp = Path(tempfile.mkdtemp(prefix="bench_sessions_"))
    frames = build_frames()
    results: list[Result] = []
    try:
        keys: list[str] = []
        if "engine" in servers:
            n_acct = math.ceil(args.sessions / args.per_account)
            (tmp / "bench.toml").write_text(BENCH_TOML.format(streams=2 * args.per_account))
            t = time.monotonic()
            keys = create_accounts(tmp / "engine.db", n_acct)
            print(f"created {n_acct} accounts of plan 'bench' in {time.monotonic() - t:.1f} s ({tmp})")
        print(
            f"{args.sessions} sessions of 16 kHz S16 mono in 100 ms frames at real-time pace; "
            f"ramp {args.ramp:g} s, settle {args.settle:g} s, window {args.seconds:g} s"
        )
        for name in servers:
            port = free_port()
            if name == "engine":
                if args.engine_helper is None:
                    cmd = [
                        *engine_cmd(),
                        "--db",
                        str(tmp / "engine.db"),
                        "serve",
                        "--port",
                        str(port),
                        "--config",
                        str(tmp / "bench.toml"),
                    ]
                else:  # diagnostics: the same Engine, instrumented (benchmarks/bench_sessions_server.py)
                    cmd = [
                        sys.executable,
                        str(REPO / "benchmarks" / "bench_sessions_server.py"),
                        "--db",
                        str(tmp / "engine.db"),
                        "--port",
                        str(port),
                        "--config",
                        str(tmp / "bench.toml"),
                        *args.engine_helper.split(),
                    ]
                server = ServerProcess(name, cmd, tmp / "engine.log", "engine serving")
                ks = keys
            else:
                cmd = [sys.executable, str(REPO / "benchmarks" / "bare_server.py"), "--port", str(port)]
                server = ServerProcess(name, cmd, tmp / "bare.log", "listening on")
                ks = ["bare"]
            print(f"-- {name}: pid {server.pid}, port {port} ...", flush=True)
            try:
                r = run_one(name, server, ks, args, frames, port)
            finally:
                if server.proc.poll() is None:
                    server.stop()
            results.append(r)
            print(
                f"   {r.ok}/{r.sessions} ok, {r.keep_up} keeping up; "
                f"server {r.server_core_pct:.1f} % of a core, "
                f"{r.cpu_per_message_us:.1f} us/message at {r.messages_per_s:,.0f} messages/s",
                flush=True,
            )
            for e in r.error_samples:
                print(f"   error: {e}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(table(results))
    by = {r.server: r for r in results}
    ratio = None
    if "engine" in by and "bare" in by and by["bare"].cpu_per_message_us > 0:
        ratio = by["engine"].cpu_per_message_us / by["bare"].cpu_per_message_us
        print(f"\nper-message server CPU, engine / bare: {ratio:.2f}x (target <= {TARGET_RATIO}x)")

    failures: list[str] = []
    smoke: list[str] = []
    for r in results:
        if r.errors or r.started < r.sessions:
            smoke.append(f"{r.server}: {r.errors} session(s) with errors, {r.started}/{r.sessions} started")
    if "engine" in by:
        eng = by["engine"]
        if eng.sessions < TARGET_SESSIONS:
            failures.append(f"only {eng.sessions} sessions run (target {TARGET_SESSIONS})")
        if eng.keep_up < eng.sessions:
            failures.append(
                f"engine: {eng.sessions - eng.keep_up} of {eng.sessions} sessions did not keep up"
            )
    if ratio is None:
        failures.append("no engine/bare ratio (run both servers)")
    elif ratio > TARGET_RATIO:
        failures.append(f"per-message CPU {ratio:.2f}x the bare server's (target <= {TARGET_RATIO}x)")
    failures = smoke + failures
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "config": {
                        k: getattr(args, k) for k in ("sessions", "seconds", "ramp", "settle", "quick")
                    },
                    "results": [asdict(r) for r in results],
                    "ratio": ratio,
                    "targets": {"sessions": TARGET_SESSIONS, "ratio": TARGET_RATIO},
                    "missed": failures,
                },
                indent=2,
            )
        )
    if args.quick:
        if smoke:
            print("\nFAILED (smoke): " + "; ".join(smoke))
            return 1
        if failures:
            print(
                "\n(quick mode: timing targets not checked) "
                + "; ".join(f for f in failures if f not in smoke)
            )
        print("\nquick run OK")
        return 0
    if failures:
        print("\nTARGET MISSED: " + "; ".join(failures))
        return 1
    print("\nall targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
