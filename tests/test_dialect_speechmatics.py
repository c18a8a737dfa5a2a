"""The Speechmatics Real-Time v2 dialect: the codec alone, then sessions through it.

Codec tests are table-driven (every engine Code -> Error type -> close code,
every warning, every message's shape). Session tests run the real session
actor, policy, native decoder and SQLite store over in-memory connections on
Trio's autojump clock, and a few go over loopback sockets for the handshake.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from engine.dialects import speechmatics as sm
from engine.dialects.base import (
    AudioChunk,
    ClientClose,
    ClientPing,
    ProtocolViolation,
    SessionInfo,
    StartRequest,
)
from engine.dialects.speechmatics import V2Dialect
from engine.policy.types import MICRO, Code, Warning
from engine.store.sqlite import SqliteStore
from engine.transport import memory_connection_pair

from .conftest import SR, make_engine, new_account, silence, speech_like, toml

FRAME = 4096  # what both official clients send per AddAudio

# ---- codec: tables -------------------------------------------------------------

ERROR_TABLE = [
    (Code.UNAUTHORIZED, "not_authorised", 4001),
    (Code.INSUFFICIENT_CREDITS, "quota_exceeded", 4005),
    (Code.CONCURRENT_LIMIT, "quota_exceeded", 4005),
    (Code.HOURLY_LIMIT, "timelimit_exceeded", 4006),
    (Code.DAILY_LIMIT, "timelimit_exceeded", 4006),
    (Code.MONTHLY_LIMIT, "timelimit_exceeded", 4006),
    (Code.SESSION_LIMIT_REACHED, "session_timeout", 1008),
    (Code.IDLE_TIMEOUT, "idle_timeout", 1008),
    (Code.NO_AUDIO_TIMEOUT, "idle_timeout", 1008),
    (Code.KEEPALIVE_TIMEOUT, "idle_timeout", 1008),
    (Code.RATE_LIMITED, "buffer_error", 1008),
    (Code.PROTOCOL_ERROR, "protocol_error", 1003),
    (Code.INVALID_AUDIO_FORMAT, "invalid_audio_type", 1003),
    (Code.SESSION_NOT_FOUND, "protocol_error", 1003),
    (Code.INTERNAL_ERROR, "unknown_error", 1011),
    (Code.SERVER_SHUTDOWN, "job_error", 4013),
]

WARNING_TABLE = [
    (Code.IDLE_TIMEOUT, "idle_timeout"),
    (Code.NO_AUDIO_TIMEOUT, "idle_timeout"),
    (Code.KEEPALIVE_TIMEOUT, "idle_timeout"),
    (Code.SESSION_LIMIT_REACHED, "session_timeout"),
    (Code.INSUFFICIENT_CREDITS, "duration_limit_exceeded"),
    (Code.HOURLY_LIMIT, "duration_limit_exceeded"),
    (Code.DAILY_LIMIT, "duration_limit_exceeded"),
    (Code.MONTHLY_LIMIT, "duration_limit_exceeded"),
]

# the types and close codes the Speechmatics spec defines
SPEC_ERROR_TYPES = {
    "invalid_message",
    "invalid_model",
    "invalid_config",
    "invalid_audio_type",
    "invalid_output_format",
    "not_authorised",
    "insufficient_funds",
    "not_allowed",
    "job_error",
    "data_error",
    "buffer_error",
    "protocol_error",
    "quota_exceeded",
    "timelimit_exceeded",
    "idle_timeout",
    "session_timeout",
    "session_transfer",
    "unknown_error",
}
SPEC_WARNING_TYPES = {
    "duration_limit_exceeded",
    "unsupported_translation_pair",
    "idle_timeout",
    "session_timeout",
    "empty_translation_target_list",
    "add_audio_after_eos",
    "speaker_id",
}
SPEC_CLOSE_CODES = {1000, 1003, 1008, 1011, 4001, 4003, 4005, 4006, 4013}


def test_every_code_has_an_error_mapping():
    assert {c for c, _, _ in ERROR_TABLE} == set(Code)
    assert set(sm.ERRORS) == set(Code)


@pytest.mark.parametrize(("code", "etype", "close"), ERROR_TABLE)
def test_error_mapping(code, etype, close):
    assert sm.error_for(code) == (etype, close)
    assert etype in SPEC_ERROR_TYPES and close in SPEC_CLOSE_CODES
    msgs, close_code, close_reason = V2Dialect().finish(
        session_id=None, receipt=None, code=code, message="why"
    )
    assert [json.loads(m) for m in msgs] == [
        {"message": "Error", "type": etype, "reason": "why", "seq_no": 0}
    ]
    assert (close_code, close_reason) == (close, etype)


@pytest.mark.parametrize(("code", "wtype"), WARNING_TABLE)
def test_warning_mapping(code, wtype):
    d = V2Dialect()
    for _ in range(3):
        d.audio_received()
    msg = json.loads(d.warning(Warning(code=code, seconds_left=10, message="ends in 10 s")))
    assert msg == {"message": "Warning", "type": wtype, "reason": "ends in 10 s", "seq_no": 3}
    assert wtype in SPEC_WARNING_TYPES


def test_normal_end_is_end_of_transcript_then_1000():
    for receipt in (None, object()):
        msgs, code, _ = V2Dialect().finish(
            session_id="s", receipt=receipt, code=None, message="closed by client"
        )
        assert [json.loads(m) for m in msgs] == [{"message": "EndOfTranscript"}]
        assert code == 1000


# ---- codec: client messages -----------------------------------------------------


def start_msg(encoding: str = "pcm_s16le", sample_rate: int = SR, **extra: Any) -> str:
    msg: dict[str, Any] = {
        "message": "StartRecognition",
        "audio_format": {"type": "raw", "encoding": encoding, "sample_rate": sample_rate},
        "transcription_config": {"language": "en"},
    }
    msg.update(extra)
    return json.dumps(msg)


def raw_start(audio_format: Any, **extra: Any) -> str:
    return json.dumps({"message": "StartRecognition", "audio_format": audio_format, **extra})


RAW_S16 = {"type": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}
FILE_START = raw_start({"type": "file"}, transcription_config={"language": "en"})


@pytest.mark.parametrize(("encoding", "rate"), [("pcm_s16le", 16000), ("pcm_f32le", 44100), ("mulaw", 8000)])
def test_start_recognition_raw_formats(encoding, rate):
    ev = V2Dialect().decode(start_msg(encoding, rate))
    assert isinstance(ev, StartRequest)
    assert (ev.audio.encoding, ev.audio.sample_rate, ev.audio.channels) == (encoding, rate, 1)
    assert ev.model is None and ev.resume is None


def test_start_recognition_tolerates_unknown_keys_and_ignores_language_and_model():
    msg = start_msg(
        transcription_config={
            "language": "de",
            "operating_point": "enhanced",
            "model": "melia-1",
            "enable_partials": True,
            "max_delay": 1.0,
            "diarization": "speaker",
            "additional_vocab": ["gnocchi"],
            "something_new": {"x": 1},
        },
        translation_config={"target_languages": ["es"]},
        audio_events_config={"types": ["music"]},
        future_field=42,
    )
    ev = V2Dialect().decode(msg)
    assert isinstance(ev, StartRequest) and ev.model is None  # the engine's default model
    # unknown audio_format keys, and no transcription_config at all, are tolerated too
    ev = V2Dialect().decode(
        raw_start({"type": "raw", "encoding": "mulaw", "sample_rate": 8000, "extra": True})
    )
    assert isinstance(ev, StartRequest)


def test_a_configured_model_mapping():
    d = V2Dialect(models={"enhanced": "enhanced", "melia-1": "premium"})
    cfg = {"language": "en", "operating_point": "enhanced"}
    assert d.decode(start_msg(transcription_config=cfg)).model == "enhanced"
    cfg = {"language": "en", "model": "melia-1", "operating_point": "enhanced"}
    assert d.decode(start_msg(transcription_config=cfg)).model == "premium"  # model before operating_point
    cfg = {"language": "en", "operating_point": "standard"}
    assert d.decode(start_msg(transcription_config=cfg)).model is None  # not mapped: the default


def test_binary_frames_end_of_stream_and_no_ops():
    d = V2Dialect()
    assert d.decode(b"\x00\x01") == AudioChunk(b"\x00\x01")
    d.decode(start_msg())
    # last_seq_no is ignored, whatever it says
    for last in (0, 5, 10**9):
        assert isinstance(d.decode(json.dumps({"message": "EndOfStream", "last_seq_no": last})), ClientClose)
    assert isinstance(d.decode('{"message":"EndOfStream"}'), ClientClose)
    for kind in ("SetRecognitionConfig", "ForceEndOfUtterance", "GetSpeakers"):
        assert isinstance(d.decode(json.dumps({"message": kind, "transcription_config": {}})), ClientPing)


BAD_MESSAGES = [
    # (message, Error type, close code)
    (FILE_START, "invalid_audio_type", 1003),
    (raw_start(None, transcription_config={}), "invalid_audio_type", 1003),
    (raw_start({**RAW_S16, "encoding": "pcm_s24le"}), "invalid_audio_type", 1003),
    (raw_start({"type": "raw", "encoding": "pcm_s16le"}), "invalid_audio_type", 1003),
    (raw_start({**RAW_S16, "type": "stream"}), "invalid_audio_type", 1003),
    (raw_start(RAW_S16, transcription_config="en"), "invalid_message", 1003),
    ("not json", "invalid_message", 1003),
    ("[1, 2]", "invalid_message", 1003),
    ('{"type": "start"}', "invalid_message", 1003),
    ('{"message": "Hello"}', "invalid_message", 1003),
    ('{"message": "AddAudio", "data": "AAAA"}', "invalid_message", 1003),
    ('{"message": "SetRecognitionConfig"}', "protocol_error", 1003),  # before StartRecognition
    ('{"message": "AddChannelAudio", "channel": "a", "data": "AAAA"}', "not_allowed", 4003),
]


@pytest.mark.parametrize(("raw", "etype", "close"), BAD_MESSAGES)
def test_bad_client_messages(raw, etype, close):
    d = V2Dialect()
    with pytest.raises(ProtocolViolation) as info:
        d.decode(raw)
    exc = info.value
    assert exc.code is (Code.INVALID_AUDIO_FORMAT if etype == "invalid_audio_type" else Code.PROTOCOL_ERROR)
    msgs, code, _ = d.finish(session_id=None, receipt=None, code=exc.code, message=exc.message)
    (err,) = [json.loads(m) for m in msgs]
    assert err["message"] == "Error" and err["type"] == etype and err["reason"] == exc.message
    assert code == close


def test_a_protocol_error_decided_by_the_session_is_protocol_error():
    d = V2Dialect()
    with pytest.raises(ProtocolViolation):
        d.decode("not json")
    msgs, code, _ = d.finish(
        session_id=None, receipt=None, code=Code.PROTOCOL_ERROR, message="session already started"
    )
    assert json.loads(msgs[0])["type"] == "protocol_error" and code == 1003


# ---- codec: server messages -------------------------------------------------------


def info(**kw: Any) -> SessionInfo:
    base: dict[str, Any] = {
        "session_id": "abc123",
        "plan": "pro",
        "model": "standard",
        "limits": {},
        "credits_remaining": "10",
        "active_sessions": 2,
        "concurrent_limit": 5,
    }
    base.update(kw)
    return SessionInfo(**base)


def test_started_messages():
    started, usage = (json.loads(m) for m in V2Dialect().started(info()))
    assert started["message"] == "RecognitionStarted" and started["id"] == "abc123"
    assert started["language_pack_info"]["word_delimiter"] == " "
    assert started["language_pack_info"]["writing_direction"] == "left-to-right"
    assert usage["message"] == "Info" and usage["type"] == "concurrent_session_usage"
    assert usage["usage"] == 2 and usage["quota"] == 5 and usage["reason"]
    assert len(usage["last_updated"]) == 20 and usage["last_updated"].endswith("Z")
    _, usage = (json.loads(m) for m in V2Dialect().started(info(concurrent_limit=None)))
    assert usage["usage"] == 2 and "quota" not in usage and usage["reason"]


def test_audio_added_counts_frames_in_order():
    d = V2Dialect()
    assert [json.loads(d.audio_received()) for _ in range(3)] == [
        {"message": "AudioAdded", "seq_no": n} for n in (1, 2, 3)
    ]


def test_no_message_for_throttle_pong_or_status():
    d = V2Dialect()
    assert d.throttle(250, "slow down") is None
    assert d.pong() is None
    assert d.status(object()) is None


@pytest.mark.parametrize(
    ("path", "language"),
    [("/v2", None), ("/v2/", None), ("/v2/en", "en"), ("/v2/en/", "en"), ("/v2/cmn_en", "cmn_en")],
)
def test_routing(path, language):
    d = make_engine(None).dialect_for(path)  # routing needs no store
    assert isinstance(d, V2Dialect) and d.language == language


@pytest.mark.parametrize("path", ["/v2x", "/v2/en/extra", "/v3", "/v2en"])
def test_routing_misses(path):
    assert make_engine(None).dialect_for(path) is None


# ---- sessions over in-memory connections (virtual time) -------------------------------


class SmClient:
    """A raw v2 client: a reader task collects every server message and the close code."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.closed = trio.Event()
        self.got = trio.Event()

    async def reader(self) -> None:
        try:
            while True:
                raw = await self.conn.get_message()
                assert isinstance(raw, str)
                msg = json.loads(raw)
                assert "message" in msg  # the old client crashes without it
                if msg["message"] in ("Warning", "Error", "Info"):
                    assert msg["type"] and msg["reason"]  # ... or without these
                self.messages.append(msg)
                self.got.set()
                self.got = trio.Event()
        except ConnectionClosed as exc:
            self.close_code = exc.reason.code if exc.reason else None
        finally:
            self.closed.set()
            self.got.set()

    async def send(self, msg: dict[str, Any] | str | bytes) -> None:
        await self.conn.send_message(msg if isinstance(msg, str | bytes) else json.dumps(msg))

    async def wait_for(self, name: str) -> dict[str, Any]:
        while True:
            for m in self.messages:
                if m["message"] == name:
                    return m
            if self.closed.is_set():
                raise AssertionError(f"closed ({self.close_code}) without {name}: {self.messages}")
            await self.got.wait()

    async def stream(self, data: bytes, *, pace: float | None = None, size: int = FRAME) -> int:
        n = 0
        for i in range(0, len(data), size):
            try:
                await self.conn.send_message(data[i : i + size])
            except ConnectionClosed:
                break
            n += 1
            if pace:
                await trio.sleep(pace)
        return n

    def of(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["message"] == name]

    def names(self) -> list[str]:
        return [m["message"] for m in self.messages]


async def open_sm(nursery: trio.Nursery, engine: Any, key: str, path: str = "/v2/en") -> SmClient:
    client_end, server_end = memory_connection_pair()
    nursery.start_soon(partial(engine.run_connection, server_end, api_key=key, dialect=path))
    c = SmClient(client_end)
    nursery.start_soon(c.reader)
    return c


async def balance(store: Any, key: str) -> int:
    return (await store.authenticate(key)).balance_micro


@pytest.mark.trio
async def test_session_happy_path(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    audio = speech_like(10.0)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        started = await c.wait_for("RecognitionStarted")
        n = await c.stream(audio, pace=FRAME / 32000)
        await c.send({"message": "EndOfStream", "last_seq_no": 3})  # wrong on purpose: ignored
        await c.closed.wait()
    assert c.close_code == 1000
    assert c.names()[:2] == ["RecognitionStarted", "Info"]
    assert c.names()[-1] == "EndOfTranscript"
    assert [m["seq_no"] for m in c.of("AudioAdded")] == list(range(1, n + 1))
    assert len(started["id"]) == 32 and int(started["id"], 16) >= 0  # the engine's session id
    assert await balance(store, key) == 1000 * MICRO - 20 * MICRO


@pytest.mark.trio
async def test_throttled_session_only_slows_acknowledgements(store, autojump_clock):
    """Free plan: 32768 audio bytes/s. A client at full speed gets no unknown message: reading pauses."""
    engine = make_engine(store)
    key = await new_account(store, "free", credits=1000)
    audio = speech_like(10.0)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.wait_for("RecognitionStarted")
        t0 = trio.current_time()
        n = await c.stream(audio)  # no pacing at all
        await c.send({"message": "EndOfStream", "last_seq_no": n})
        await c.closed.wait()
        elapsed = trio.current_time() - t0
    assert set(c.names()) == {"RecognitionStarted", "Info", "AudioAdded", "EndOfTranscript"}
    assert [m["seq_no"] for m in c.of("AudioAdded")] == list(range(1, n + 1))
    assert elapsed >= (len(audio) - 32768) / 32768 - 0.1  # the plan's byte rate, through backpressure
    assert c.close_code == 1000
    assert await balance(store, key) == 1000 * MICRO - 20 * MICRO


@pytest.mark.trio
async def test_no_credits_is_quota_exceeded_before_start(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=0)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.closed.wait()
    assert c.names() == ["Error"]
    assert c.messages[0]["type"] == "quota_exceeded" and c.close_code == 4005


@pytest.mark.trio
async def test_concurrent_limit_is_quota_exceeded(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "free", credits=1000)  # one stream at a time
    async with trio.open_nursery() as nursery:
        a = await open_sm(nursery, engine, key)
        await a.send(start_msg())
        usage = await a.wait_for("Info")
        assert usage["usage"] == 1 and usage["quota"] == 1
        b = await open_sm(nursery, engine, key, path="/v2")
        await b.send(start_msg())
        await b.closed.wait()
        await a.send({"message": "EndOfStream", "last_seq_no": 0})
        await a.closed.wait()
    assert b.names() == ["Error"] and b.messages[0]["type"] == "quota_exceeded" and b.close_code == 4005
    assert a.close_code == 1000 and a.names()[-1] == "EndOfTranscript"


@pytest.mark.trio
async def test_credits_running_out_warns_then_quota_exceeded(store, autojump_clock):
    engine = make_engine(store, toml('[rules]\nmin_balance = "1"\nwarn_before_s = [2]\n'))
    key = await new_account(store, "pro", credits=10)  # 5 s of audio at 2 credits/s
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.wait_for("RecognitionStarted")
        await c.stream(speech_like(10.0), pace=FRAME / 32000)
        await c.closed.wait()
    (w,) = c.of("Warning")
    assert w["type"] == "duration_limit_exceeded" and "credits" in w["reason"]
    (err,) = c.of("Error")
    assert err["type"] == "quota_exceeded" and c.close_code == 4005
    assert c.names().index("Warning") < c.names().index("Error")
    assert await balance(store, key) == 0


@pytest.mark.trio
async def test_hourly_limit_is_timelimit_exceeded(store, autojump_clock):
    engine = make_engine(store, toml("[rules]\nwarn_before_s = [1]\n[plans.pro]\nhourly_s = 3\n"))
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.wait_for("RecognitionStarted")
        await c.stream(speech_like(6.0), pace=FRAME / 32000)
        await c.closed.wait()
    (w,) = c.of("Warning")
    assert w["type"] == "duration_limit_exceeded"
    (err,) = c.of("Error")
    assert err["type"] == "timelimit_exceeded" and "hourly" in err["reason"] and c.close_code == 4006
    # 3 s of audio, up to the end of the frame that crossed the limit
    spent = 1000 * MICRO - await balance(store, key)
    assert 6 * MICRO <= spent <= 6 * MICRO + (FRAME // 2) * 2 * MICRO // SR


@pytest.mark.trio
async def test_max_session_length_is_session_timeout(store, autojump_clock):
    engine = make_engine(store, toml("[rules]\nwarn_before_s = [2]\n[plans.pro]\nmax_session_s = 4\n"))
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.wait_for("RecognitionStarted")
        await c.stream(speech_like(10.0), pace=FRAME / 32000)
        await c.closed.wait()
    (w,) = c.of("Warning")
    assert w["type"] == "session_timeout"
    (err,) = c.of("Error")
    assert err["type"] == "session_timeout" and c.close_code == 1008


@pytest.mark.trio
async def test_idle_warns_then_idle_timeout(store, autojump_clock):
    engine = make_engine(store, toml("[rules]\nidle_timeout_s = 2\nwarn_before_s = [1]\n"))
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.wait_for("RecognitionStarted")
        await c.stream(silence(10.0), pace=FRAME / 32000)
        await c.closed.wait()
    (w,) = c.of("Warning")
    assert w["type"] == "idle_timeout" and w["seq_no"] > 0
    (err,) = c.of("Error")
    assert err["type"] == "idle_timeout" and c.close_code == 1008
    assert c.names()[-1] == "Error"


@pytest.mark.trio
async def test_keepalive_timeout_is_idle_timeout(store, autojump_clock):
    engine = make_engine(store, toml("[rules]\nkeepalive_timeout_s = 3\nwarn_before_s = []\n"))
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.closed.wait()
    assert c.names() == ["RecognitionStarted", "Info", "Error"]
    assert c.messages[-1]["type"] == "idle_timeout" and c.close_code == 1008


@pytest.mark.parametrize(
    ("first", "etype", "close"),
    [
        (FILE_START, "invalid_audio_type", 1003),
        (start_msg("pcm_s16le", 12345), "invalid_audio_type", 1003),  # refused by the engine's format check
        (b"\x00" * 100, "protocol_error", 1003),  # audio before StartRecognition
        ('{"message": "Nope"}', "invalid_message", 1003),
    ],
)
@pytest.mark.trio
async def test_refused_starts(store, autojump_clock, first, etype, close):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(first)
        await c.closed.wait()
    assert c.names() == ["Error"]
    assert c.messages[0]["type"] == etype and c.close_code == close
    assert await balance(store, key) == 1000 * MICRO


@pytest.mark.trio
async def test_end_of_stream_before_start(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send({"message": "EndOfStream", "last_seq_no": 0})
        await c.closed.wait()
    assert c.names() == ["EndOfTranscript"] and c.close_code == 1000


@pytest.mark.trio
async def test_errors_after_start_settle_the_audio_received(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.wait_for("RecognitionStarted")
        await c.stream(speech_like(2.0), size=3200)  # 20 frames of 100 ms
        # accepted and ignored
        await c.send({"message": "SetRecognitionConfig", "transcription_config": {"max_delay": 2}})
        await c.send(start_msg())  # a second StartRecognition
        await c.closed.wait()
    assert [m["seq_no"] for m in c.of("AudioAdded")] == list(range(1, 21))
    (err,) = c.of("Error")
    assert err["type"] == "protocol_error" and err["seq_no"] == 20 and c.close_code == 1003
    assert await balance(store, key) == 1000 * MICRO - 4 * MICRO


@pytest.mark.trio
async def test_wrong_key_without_a_handshake_is_not_authorised(store, autojump_clock):
    engine = make_engine(store)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, "wrong")
        await c.closed.wait()
    assert c.names() == ["Error"] and c.messages[0]["type"] == "not_authorised" and c.close_code == 4001


@pytest.mark.trio
async def test_shutdown_is_job_error(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_sm(nursery, engine, key)
        await c.send(start_msg())
        await c.wait_for("RecognitionStarted")
        await c.stream(speech_like(1.0), size=3200)
        await c.wait_for("AudioAdded")
        await trio.sleep(0.5)
        await engine.shutdown()
        await c.closed.wait()
    assert c.messages[-1]["type"] == "job_error" and c.close_code == 4013
    assert await balance(store, key) == 1000 * MICRO - 2 * MICRO


# ---- the handshake over loopback sockets -----------------------------------------------


@pytest.fixture
async def served_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The store as `engine serve` runs it (SQLite in a worker thread), for real-clock tests."""
    s = await SqliteStore.open(str(tmp_path / "engine.db"))
    try:
        yield s
    finally:
        await s.aclose()


async def start_server(nursery: trio.Nursery, engine: Any) -> str:
    server = await nursery.start(partial(engine.serve, "127.0.0.1", 0))
    return f"ws://127.0.0.1:{server.port}"


@pytest.mark.trio
@pytest.mark.parametrize(
    ("path", "bearer"),
    [
        ("/v2?jwt={key}", False),  # temporary keys in browsers
        ("/v2/en?jwt={key}&sm-sdk=js-1.0", False),
        ("/v2/en?sm-sdk=python-rt-sdk-v1.2.1&foo=bar", True),  # unknown parameters are ignored
        ("/v2/", True),
    ],
)
async def test_handshake_accepts(served_store, path, bearer):
    engine = make_engine(served_store, utc_offset=None)
    key = await new_account(served_store)
    headers = [(b"Authorization", f"Bearer {key}".encode())] if bearer else []
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, engine)
        async with open_websocket_url(url + path.format(key=key), extra_headers=headers) as ws:
            await ws.send_message(start_msg("mulaw", 8000))
            assert json.loads(await ws.get_message())["message"] == "RecognitionStarted"
            assert json.loads(await ws.get_message())["message"] == "Info"
            await ws.send_message(bytes(8000))
            assert json.loads(await ws.get_message()) == {"message": "AudioAdded", "seq_no": 1}
            await ws.send_message('{"message": "EndOfStream", "last_seq_no": 1}')
            assert json.loads(await ws.get_message()) == {"message": "EndOfTranscript"}
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1000
        await engine.shutdown()


@pytest.mark.trio
@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v2/en", [], 401),
        ("/v2/en", [(b"Authorization", b"Bearer wrong")], 401),
        ("/v2?jwt=wrong", [], 401),
        ("/v2/en/more", [], 404),
    ],
)
async def test_handshake_refusals(served_store, path, headers, status):
    engine = make_engine(served_store, utc_offset=None)
    await new_account(served_store)
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, engine)
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(url + path, extra_headers=headers):
                pass
        await engine.shutdown()
    assert info.value.status_code == status
