"""The official Speechmatics real-time clients, unchanged, against a real ``Engine.serve``.

``speechmatics-rt`` (``AsyncClient``) and the older ``speechmatics-python``
(``WebsocketClient``) are asyncio programs: each runs in a worker thread with
its own event loop (``trio.to_thread.run_sync(asyncio.run, ...)``) while the
Trio server serves it on loopback with a real SQLite store and the real clock.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import warnings
import wave
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.policy.types import MICRO
from engine.server import Engine
from engine.store.sqlite import SqliteStore

from .conftest import SR, make_engine, new_account, speech_like, toml

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # speechmatics-python announces its successor
    import speechmatics.client as sm_legacy
    import speechmatics.exceptions as sm_legacy_exc
    import speechmatics.models as sm_legacy_models
import websockets.exceptions
from speechmatics import rt

DATA = Path(__file__).parent / "data"
RATE_MICRO = 2 * MICRO  # the default ("standard") model: 2 credits per second of audio
IDLE_CONFIG = "[rules]\nidle_timeout_s = 2\nwarn_before_s = [1]\n"


@pytest.fixture
async def served_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The store as `engine serve` runs it (SQLite in a worker thread), for real-clock tests."""
    s = await SqliteStore.open(str(tmp_path / "engine.db"))
    try:
        yield s
    finally:
        await s.aclose()


# ---- helpers -----------------------------------------------------------------


def write_wav(path: Path, pcm: bytes, sample_rate: int = SR) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return path


def wav_pcm(path: Path) -> tuple[bytes, int]:
    """The PCM payload of a 16-bit mono WAV file and its sample rate."""
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.readframes(w.getnframes()), w.getframerate()


def exact_bill(pcm: bytes, sample_rate: int) -> int:
    return (len(pcm) // 2) * RATE_MICRO // sample_rate


class SlowSilence(io.RawIOBase):
    """A blocking stream of digital silence, in real time (the clients read it in a thread)."""

    def __init__(self, seconds: float, sample_rate: int = SR) -> None:
        self.left = int(seconds * sample_rate) * 2
        self.bps = sample_rate * 2

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        import time

        n = self.left if n is None or n < 0 else min(n, self.left)
        if n <= 0:
            return b""
        time.sleep(n / self.bps)
        self.left -= n
        return bytes(n)


@asynccontextmanager
async def serving(engine: Engine) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(engine.serve, "127.0.0.1", 0))
        try:
            yield f"ws://127.0.0.1:{server.port}"
        finally:
            await engine.shutdown()


async def in_asyncio(make: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 60.0) -> Any:
    """Run an asyncio client in a worker thread; the Trio loop keeps serving meanwhile."""

    def run() -> Any:
        async def main() -> Any:
            return await asyncio.wait_for(make(), timeout)

        return asyncio.run(main())

    with trio.fail_after(timeout + 10):
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


def session_rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(str(db)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM sessions ORDER BY started_utc")]


def by_type(messages: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["message"] == name]


# ---- speechmatics-rt -----------------------------------------------------------

RT_EVENTS = (
    rt.ServerMessageType.RECOGNITION_STARTED,
    rt.ServerMessageType.AUDIO_ADDED,
    rt.ServerMessageType.INFO,
    rt.ServerMessageType.WARNING,
    rt.ServerMessageType.ERROR,
    rt.ServerMessageType.END_OF_TRANSCRIPT,
)


async def rt_transcribe(
    url: str, key: str, source: Any, messages: list[dict[str, Any]], sample_rate: int = SR
) -> rt.AsyncClient:
    client = rt.AsyncClient(api_key=key, url=f"{url}/v2")
    for ev in RT_EVENTS:
        client.on(ev, messages.append)
    try:
        await client.transcribe(
            source,
            transcription_config=rt.TranscriptionConfig(language="en", enable_partials=True, max_delay=1.0),
            audio_format=rt.AudioFormat(encoding=rt.AudioEncoding.PCM_S16LE, sample_rate=sample_rate),
        )
    finally:
        await client.close()
    return client


@pytest.mark.trio
async def test_rt_client_streams_a_whole_wav_at_full_speed_and_is_billed_exactly(served_store, tmp_path):
    engine = make_engine(served_store, utc_offset=None)
    key = await new_account(served_store, "pro", credits=1000)
    pcm, sr = wav_pcm(write_wav(tmp_path / "speech.wav", speech_like(12.0)))
    frames = -(-len(pcm) // 4096)  # the client's default chunk size
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        client = await in_asyncio(lambda: rt_transcribe(url, key, io.BytesIO(pcm), messages))
    names = [m["message"] for m in messages]
    assert names[0] == "RecognitionStarted" and names[-1] == "EndOfTranscript"
    assert "Error" not in names and "Warning" not in names
    # every binary frame acknowledged, in order
    assert [m["seq_no"] for m in by_type(messages, "AudioAdded")] == list(range(1, frames + 1))
    (info,) = by_type(messages, "Info")
    assert info["type"] == "concurrent_session_usage" and info["usage"] == 1 and info["quota"] == 5
    assert info["reason"]
    # RecognitionStarted's id is the engine's session, billed exactly for the audio
    (row,) = session_rows(tmp_path / "engine.db")
    assert client.session_id == row["session_id"]
    assert row["end_reason"] == "client_close" and row["end_code"] is None
    assert row["audio_ms"] == 12_000
    assert row["billed_micro"] == exact_bill(pcm, sr) == 24 * MICRO
    acct = await served_store.authenticate(key)
    assert acct.balance_micro == 1000 * MICRO - 24 * MICRO


@pytest.mark.trio
async def test_rt_client_with_real_speech_file(served_store, tmp_path):
    """tests/data/speech_16k.wav (5.0 s of eSpeak speech), billed to the sample."""
    engine = make_engine(served_store, utc_offset=None)
    key = await new_account(served_store, "basic", credits=1000)
    pcm, sr = wav_pcm(DATA / "speech_16k.wav")
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        await in_asyncio(lambda: rt_transcribe(url, key, io.BytesIO(pcm), messages, sample_rate=sr))
    assert by_type(messages, "EndOfTranscript") and not by_type(messages, "Error")
    (row,) = session_rows(tmp_path / "engine.db")
    assert row["samples"] == len(pcm) // 2
    assert row["billed_micro"] == exact_bill(pcm, sr)
    acct = await served_store.authenticate(key)
    assert acct.balance_micro == 1000 * MICRO - exact_bill(pcm, sr)


@pytest.mark.trio
async def test_rt_client_without_credits_gets_quota_exceeded(served_store, tmp_path):
    engine = make_engine(served_store, utc_offset=None)
    key = await new_account(served_store, "pro", credits=0)
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        with pytest.raises(rt.TranscriptionError) as info:
            await in_asyncio(lambda: rt_transcribe(url, key, io.BytesIO(speech_like(2.0)), messages))
    (err,) = by_type(messages, "Error")
    assert err["type"] == "quota_exceeded"
    assert str(info.value) == err["reason"] and "credit" in err["reason"]
    assert not by_type(messages, "RecognitionStarted")
    assert session_rows(tmp_path / "engine.db") == []  # refused at admission: nothing started or billed
    acct = await served_store.authenticate(key)
    assert acct.balance_micro == 0


@pytest.mark.trio
async def test_rt_client_with_a_wrong_key_is_refused(served_store):
    engine = make_engine(served_store, utc_offset=None)
    await new_account(served_store)
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        with pytest.raises(rt.ConnectionError) as info:
            await in_asyncio(lambda: rt_transcribe(url, "wrong-key", io.BytesIO(speech_like(1.0)), messages))
    assert "401" in str(info.value)
    assert messages == []


@pytest.mark.trio
async def test_rt_client_idle_stream_ends_with_idle_timeout(served_store, tmp_path):
    engine = make_engine(served_store, toml(IDLE_CONFIG), utc_offset=None)
    key = await new_account(served_store, "pro", credits=1000)
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        # the client returns once the server's Error ends the session
        await in_asyncio(lambda: rt_transcribe(url, key, SlowSilence(10.0), messages))
    (warning,) = by_type(messages, "Warning")
    assert warning["type"] == "idle_timeout" and "1 s" in warning["reason"]
    (err,) = by_type(messages, "Error")
    assert err["type"] == "idle_timeout" and err["reason"]
    assert not by_type(messages, "EndOfTranscript")
    (row,) = session_rows(tmp_path / "engine.db")
    assert row["end_code"] == "IDLE_TIMEOUT"
    assert 1900 <= row["duration_ms"] <= 4000
    # the silence received was billed, to the sample (a frame in flight at the end may not be acked)
    acked = max(m["seq_no"] for m in by_type(messages, "AudioAdded"))
    assert row["samples"] in (acked * 2048, (acked + 1) * 2048)
    assert row["billed_micro"] == row["samples"] * RATE_MICRO // SR


# ---- speechmatics-python (the older client) --------------------------------------


def legacy_client(url: str, key: str, messages: list[dict[str, Any]]) -> sm_legacy.WebsocketClient:
    settings = sm_legacy_models.ConnectionSettings(
        url=f"{url}/v2",  # the client appends /<language>
        auth_token=key,
        ssl_context=None,  # plain ws:// (websockets refuses an SSL context for it)
    )
    client = sm_legacy.WebsocketClient(settings)
    for ev in (
        sm_legacy_models.ServerMessageType.RecognitionStarted,
        sm_legacy_models.ServerMessageType.AudioAdded,
        sm_legacy_models.ServerMessageType.Info,
        sm_legacy_models.ServerMessageType.Warning,
        sm_legacy_models.ServerMessageType.Error,
        sm_legacy_models.ServerMessageType.EndOfTranscript,
    ):
        client.add_event_handler(ev, messages.append)
    return client


async def legacy_run(url: str, key: str, stream: Any, messages: list[dict[str, Any]], sr: int = SR) -> Any:
    client = legacy_client(url, key, messages)
    await client.run(
        stream,
        sm_legacy_models.TranscriptionConfig(language="en", operating_point="enhanced", enable_partials=True),
        sm_legacy_models.AudioSettings(encoding="pcm_s16le", sample_rate=sr),
    )
    return client


@pytest.mark.trio
async def test_legacy_client_streams_a_whole_wav_and_is_billed_exactly(served_store, tmp_path):
    """More than 512 frames: the client stalls unless every frame is acknowledged."""
    engine = make_engine(served_store, utc_offset=None)
    key = await new_account(served_store, "enterprise", credits=1000)
    pcm, sr = wav_pcm(write_wav(tmp_path / "speech.wav", speech_like(70.0, seed=3)))
    frames = -(-len(pcm) // 4096)
    assert frames > 512
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        client = await in_asyncio(lambda: legacy_run(url, key, io.BytesIO(pcm), messages, sr))
    names = [m["message"] for m in messages]
    assert names[0] == "RecognitionStarted" and names[-1] == "EndOfTranscript"
    assert [m["seq_no"] for m in by_type(messages, "AudioAdded")] == list(range(1, frames + 1))
    assert client.get_language_pack_info()["word_delimiter"] == " "
    (info,) = by_type(messages, "Info")
    assert info["type"] == "concurrent_session_usage" and info["usage"] == 1 and info["quota"] == 20
    (row,) = session_rows(tmp_path / "engine.db")
    assert by_type(messages, "RecognitionStarted")[0]["id"] == row["session_id"]
    assert row["model"] == "standard"  # operating_point is not ours to decide: the engine's default
    assert row["end_reason"] == "client_close"
    assert row["billed_micro"] == exact_bill(pcm, sr) == 140 * MICRO
    acct = await served_store.authenticate(key)
    assert acct.balance_micro == 1000 * MICRO - 140 * MICRO


@pytest.mark.trio
async def test_legacy_client_with_real_speech_file_is_throttled_not_broken(served_store, tmp_path):
    """The free plan allows 32768 audio bytes/s: reading slows, acknowledgements follow, all completes."""
    engine = make_engine(served_store, utc_offset=None)
    key = await new_account(served_store, "free", credits=1000)
    pcm, sr = wav_pcm(DATA / "speech_16k.wav")
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        t0 = trio.current_time()
        await in_asyncio(lambda: legacy_run(url, key, io.BytesIO(pcm), messages, sr))
        elapsed = trio.current_time() - t0
    assert elapsed >= (len(pcm) - 32768) / 32768 - 0.5  # about real time: the plan's rate
    assert {m["message"] for m in messages} <= {"RecognitionStarted", "Info", "AudioAdded", "EndOfTranscript"}
    (row,) = session_rows(tmp_path / "engine.db")
    assert row["billed_micro"] == exact_bill(pcm, sr)


@pytest.mark.trio
async def test_legacy_client_without_credits_gets_quota_exceeded(served_store, tmp_path):
    engine = make_engine(served_store, utc_offset=None)
    key = await new_account(served_store, "pro", credits=0)
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        with pytest.raises(sm_legacy_exc.TranscriptionError) as info:
            await in_asyncio(lambda: legacy_run(url, key, io.BytesIO(speech_like(2.0)), messages))
    (err,) = by_type(messages, "Error")
    assert err["type"] == "quota_exceeded"
    assert str(info.value) == err["reason"]
    assert session_rows(tmp_path / "engine.db") == []


@pytest.mark.trio
async def test_legacy_client_with_a_wrong_key_is_refused(served_store):
    engine = make_engine(served_store, utc_offset=None)
    await new_account(served_store)
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            await in_asyncio(lambda: legacy_run(url, "wrong-key", io.BytesIO(speech_like(1.0)), messages))
    assert info.value.response.status_code == 401
    assert messages == []


@pytest.mark.trio
async def test_legacy_client_idle_stream_ends_with_idle_timeout(served_store, tmp_path):
    engine = make_engine(served_store, toml(IDLE_CONFIG), utc_offset=None)
    key = await new_account(served_store, "pro", credits=1000)
    messages: list[dict[str, Any]] = []
    async with serving(engine) as url:
        with pytest.raises(sm_legacy_exc.TranscriptionError) as info:
            await in_asyncio(lambda: legacy_run(url, key, SlowSilence(10.0), messages))
    (warning,) = by_type(messages, "Warning")
    assert warning["type"] == "idle_timeout"
    (err,) = by_type(messages, "Error")
    assert err["type"] == "idle_timeout" and str(info.value) == err["reason"]
    (row,) = session_rows(tmp_path / "engine.db")
    assert row["end_code"] == "IDLE_TIMEOUT"
    assert row["billed_micro"] == row["samples"] * RATE_MICRO // SR
