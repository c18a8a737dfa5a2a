"""Real `engine` processes: the newcomer's CLI flow, SIGTERM, SIGKILL recovery, two servers on one DB.

Real clock, real sockets, real SQLite file; each test bounded to a few seconds of streaming.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from engine.client import AudioFile, stream_audio
from engine.policy.money import parse_credits
from engine.policy.types import MICRO
from engine.store.sqlite import SqliteStore

from .conftest import SR, speech_like

ENGINE = [sys.executable, "-m", "engine.cli"]
FAST_LEASES = """
[server]
lease_s = 2.0
lease_renew_s = 0.5
recover_interval_s = 0.5
checkpoint_interval_s = 1.0
"""


def cli(db: Path, *args: str) -> str:
    out = subprocess.run([*ENGINE, "--db", str(db), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def create_account(db: Path, plan: str = "pro", credits: str = "1000") -> tuple[str, str]:
    data = json.loads(cli(db, "accounts", "create", "--plan", plan, "--credits", credits, "--json"))
    return data["account_id"], data["api_key"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(db: Path, config: str = "", port: int | None = None):
    port = port or free_port()
    cfg = db.parent / f"engine-{port}.toml"
    cfg.write_text(config)
    proc = subprocess.Popen(
        [*ENGINE, "--db", str(db), "serve", "--port", str(port), "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
        proc.url = f"ws://127.0.0.1:{port}/v1/stream"  # type: ignore[attr-defined]
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def balance(db: Path, account_id: str) -> int:
    data = json.loads(cli(db, "accounts", "show", account_id, "--json"))
    return parse_credits(str(data["balance"]))


def test_newcomer_flow_create_serve_stream_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    account_id, key = create_account(db, "pro", "100")
    wav = tmp_path / "hello.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(speech_like(5.0))
    with server(db) as proc:
        out = subprocess.run(
            [*ENGINE, "stream", str(wav), "--url", proc.url, "--key", key, "--fast", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        receipt = json.loads(out.stdout.strip().splitlines()[-1])
        assert receipt["type"] == "session_ended"
        assert receipt["audio_duration"] == 5.0 and receipt["credits_used"] == "10"
        assert balance(db, account_id) == 90 * MICRO

        # SIGTERM mid-stream: the session is settled, then closed with 1001; the server exits 0
        audio = AudioFile(data=speech_like(30.0), encoding="pcm_s16le", sample_rate=SR, channels=1)

        async def main() -> object:
            async with trio.open_nursery() as nursery:

                async def term() -> None:
                    await trio.sleep(1.5)
                    proc.send_signal(signal.SIGTERM)

                nursery.start_soon(term)
                return await stream_audio(proc.url, key, audio, fast=False)

        result = trio.run(main)
        assert proc.wait(timeout=20) == 0
    assert result.error is not None and result.error.code == "SERVER_SHUTDOWN"  # type: ignore[attr-defined]
    assert result.close_code == 1001  # type: ignore[attr-defined]
    assert result.ended is not None  # type: ignore[attr-defined]
    billed = parse_credits(result.ended.credits_used)  # type: ignore[attr-defined]
    assert billed == round(result.ended.audio_duration * 2 * MICRO)  # type: ignore[attr-defined]
    assert balance(db, account_id) == 90 * MICRO - billed


def test_sigkill_mid_stream_then_restart_settles_each_session_once(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    accounts = [create_account(db, "pro", "1000") for _ in range(3)]
    audio = AudioFile(data=speech_like(30.0), encoding="pcm_s16le", sample_rate=SR, channels=1)
    sent: dict[str, int] = {}
    with server(db, FAST_LEASES) as proc:

        async def main() -> None:
            async with trio.open_nursery() as nursery:

                async def one(key: str) -> None:
                    r = await stream_audio(proc.url, key, audio, fast=False)
                    sent[key] = r.bytes_sent

                for _, key in accounts:
                    nursery.start_soon(one, key)
                await trio.sleep(3.2)
                proc.send_signal(signal.SIGKILL)

        trio.run(main)
        proc.wait(timeout=10)
    # restart on the same file: the dead process's sessions are settled from their checkpoints
    with server(db, FAST_LEASES):
        time.sleep(3.5)  # leases (2 s) expire, recovery runs every 0.5 s

    async def inspect() -> list:
        store = await SqliteStore.open(str(db))
        try:
            rows = []
            for account_id, key in accounts:
                sessions = await store.list_sessions(account_id)
                acct = await store.get_account(account_id)
                rows.append((key, sessions, acct))
            assert not await store.check_integrity()
            return rows
        finally:
            await store.aclose()

    for key, sessions, acct in trio.run(inspect):
        assert len(sessions) == 1
        s = sessions[0]
        assert s.ended_utc is not None and s.end_reason == "expired"
        received_ms = sent[key] * 1000 // (2 * SR)
        # never more than the audio sent, at most one checkpoint interval (+ what was in flight) less
        assert s.audio_ms <= received_ms
        assert s.audio_ms >= received_ms - 1000 - 300
        assert s.billed_micro == s.audio_ms * 2 * MICRO // 1000
        assert acct.balance_micro == 1000 * MICRO - s.billed_micro


def test_two_servers_on_one_db_share_the_concurrent_and_hourly_limits(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    config = """
[plans.tiny]
max_session_s = 600
concurrent_streams = 3
hourly_s = 4
daily_s = 100
monthly_s = 1000
"""
    _, key = create_account(db, "tiny", "1000")
    cli(db, "accounts", "create", "--plan", "pro")  # the file exists before both servers start
    with server(db, config) as a, server(db, config) as b:
        short = AudioFile(data=speech_like(1.0), encoding="pcm_s16le", sample_rate=SR, channels=1)

        async def race() -> list:
            results: list = []
            async with trio.open_nursery() as nursery:

                async def one(url: str) -> None:
                    results.append(await stream_audio(url, key, short, fast=False))

                for i in range(8):  # 8 simultaneous starts, 4 on each server, 3 slots
                    nursery.start_soon(one, a.url if i % 2 else b.url)
            return results

        results = trio.run(race)
        admitted = [r for r in results if r.started is not None]
        refused = [r for r in results if r.error is not None and r.error.code == "CONCURRENT_LIMIT"]
        assert len(admitted) == 3 and len(refused) == 5
        # 3 s of the 4 s hourly allowance used; a session on the other server stops at the limit
        more = AudioFile(data=speech_like(5.0), encoding="pcm_s16le", sample_rate=SR, channels=1)
        r = trio.run(stream_audio, a.url, key, more)
        assert r.error is not None and r.error.code == "HOURLY_LIMIT"
        assert r.ended is not None and r.ended.audio_duration == pytest.approx(1.0, abs=0.01)
        r2 = trio.run(stream_audio, b.url, key, more)
        assert r2.started is None and r2.error is not None and r2.error.code == "HOURLY_LIMIT"


if os.name != "posix":  # pragma: no cover
    pytest.skip("signals", allow_module_level=True)
