"""The transport-free session API and the recognizer sink (decoded frames + VAD, backpressure)."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from engine.audio import s16_to_f32
from engine.dialects import v1
from engine.direct import SessionEnded, SessionRefused, open_session
from engine.policy.money import parse_credits
from engine.policy.types import MICRO
from engine.server import ServerSettings

from .conftest import CHUNK, SR, chunks, make_engine, new_account, speech_like, toml


@pytest.mark.trio
async def test_direct_session_bills_like_a_websocket_one(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=100)
    async with open_session(engine, key, encoding="pcm_s16le", sample_rate=SR) as s:
        assert s.started.plan == "pro"
        for piece in chunks(speech_like(11.0)):
            await s.feed(piece)
            await trio.sleep(0.1)
        receipt = await s.close()
    assert receipt.audio_duration == 11.0
    assert parse_credits(receipt.credits_used) == 22 * MICRO
    assert any(isinstance(e, v1.SessionStatus) for e in s.events)
    assert (await store.authenticate(key)).balance_micro == 78 * MICRO


@pytest.mark.trio
async def test_direct_session_refused_and_ended(store, autojump_clock):
    engine = make_engine(store, toml("[rules]\nidle_timeout_s = 5\nwarn_before_s = []\n"))
    poor = await new_account(store, "pro", credits=10)
    with pytest.raises(SessionRefused) as info:
        async with open_session(engine, poor, encoding="mulaw", sample_rate=8000):
            pass
    assert info.value.code == "INSUFFICIENT_CREDITS"

    key = await new_account(store, "pro", credits=100)
    async with open_session(engine, key, encoding="mulaw", sample_rate=8000) as s:
        with pytest.raises(SessionEnded) as ended:
            while True:  # mu-law digital silence (0xFF): no speech, so idle after 5 s
                await s.feed(b"\xff" * 800)
                await trio.sleep(0.1)
    assert ended.value.error is not None and ended.value.error.code == "IDLE_TIMEOUT"
    assert ended.value.receipt is not None and ended.value.receipt.audio_duration == pytest.approx(
        5.0, abs=0.11
    )


@pytest.mark.trio
async def test_sink_gets_every_sample_with_vad_flags(store, autojump_clock):
    got: list = []

    async def sink(frame) -> None:
        got.append(frame)

    engine = make_engine(store, sink=sink)
    key = await new_account(store)
    data = speech_like(3.0)
    async with open_session(engine, key, encoding="pcm_s16le", sample_rate=SR) as s:
        for piece in chunks(data, 1001):  # odd sizes: samples split across messages
            await s.feed(piece)
        await s.close()
    decoded = np.concatenate([f.samples for f in got])
    np.testing.assert_array_equal(decoded, s16_to_f32(data))
    assert {f.session_id for f in got} == {s.session_id}
    assert sum(f.speech_frames for f in got) > 50  # 20 ms frames of speech among 150


@pytest.mark.trio
async def test_slow_sink_applies_backpressure_not_buffering(store, autojump_clock):
    received = 0

    async def slow_sink(frame) -> None:
        nonlocal received
        await trio.sleep(1.0)  # a recognizer 10x slower than real time for 100 ms frames
        received += frame.samples.size

    engine = make_engine(store, sink=slow_sink, settings=ServerSettings(sink_queue=4))
    key = await new_account(store, "enterprise", credits=1000)
    sent = 0
    async with open_session(engine, key, encoding="pcm_s16le", sample_rate=SR, buffer=4) as s:
        with trio.move_on_after(20):
            for piece in chunks(speech_like(600.0)):
                await s.feed(piece)  # blocks when the engine stops reading
                sent += len(piece) // 2
        # 20 s at 1 frame/s through the sink; only the bounded queues hold the rest
        in_flight = sent - received
        assert in_flight <= (4 + 4 + 2) * (CHUNK // 2)
        assert received >= 18 * (CHUNK // 2)
