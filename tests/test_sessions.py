"""Sessions end to end over in-memory connections on Trio's autojump clock.

Real policy, real native decoder + VAD, real SQLite store; only time is virtual,
so the 60 s idle timeout, the 5 min and 48 h caps and the 30 s balance check
run in milliseconds.
"""

from __future__ import annotations

import pytest
import trio

from engine.dialects import v1
from engine.policy.money import parse_credits
from engine.policy.types import MICRO
from engine.server import ServerSettings

from .conftest import (
    CHUNK,
    chunks,
    make_engine,
    new_account,
    open_client,
    silence,
    speech_like,
    toml,
)


async def stream(client, data: bytes, *, pace: float = 0.1, size: int = CHUNK) -> None:
    for piece in chunks(data, size):
        await client.send(piece)
        if pace:
            await trio.sleep(pace)


async def balance(store, key: str) -> int:
    acct = await store.authenticate(key)
    return acct.balance_micro


@pytest.mark.trio
async def test_happy_path_bills_exactly_the_audio_received(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        started = await c.start()
        assert isinstance(started, v1.SessionStarted)
        assert started.plan == "pro" and started.model == "standard"
        assert parse_credits(started.credits_remaining) == 1000 * MICRO
        await stream(c, speech_like(12.0))
        await c.send(v1.Close())
        ended = await c.recv_until(v1.SessionEnded)
        code = await c.drain()
    assert code == 1000
    assert ended.session_id == started.session_id
    assert ended.audio_duration == 12.0
    # standard model: 2 credits per second of audio received
    assert parse_credits(ended.credits_used) == 24 * MICRO
    assert parse_credits(ended.credits_remaining) == 976 * MICRO
    assert await balance(store, key) == 976 * MICRO
    statuses = c.of(v1.SessionStatus)
    assert statuses, "a session_status every 10 s"
    assert statuses[0].duration == pytest.approx(10.0, abs=0.2)
    assert statuses[0].speech_duration > 3.0


@pytest.mark.trio
async def test_odd_chunking_bills_to_the_sample(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    data = speech_like(3.0)[: 2 * 47_999] + b"\x01"  # 47,999 samples and a stray byte
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()
        await stream(c, data, size=777, pace=0.02)
        await c.send(v1.Close())
        ended = await c.recv_until(v1.SessionEnded)
    # 47,999 / 16,000 s * 2 credits/s, floored to the micro-credit
    assert parse_credits(ended.credits_used) == 47_999 * 2 * MICRO // 16_000
    assert await balance(store, key) == 1000 * MICRO - 47_999 * 2 * MICRO // 16_000


@pytest.mark.trio
async def test_disconnect_without_close_is_settled(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()
        await stream(c, speech_like(5.0))
        await trio.sleep(0.5)
        c.conn.abort()
        await trio.sleep(1)
    assert await balance(store, key) == 990 * MICRO
    assert not engine.sessions


@pytest.mark.trio
async def test_idle_timeout_is_by_speech_not_audio(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()
        t0 = trio.current_time()
        await stream(c, speech_like(2.0))
        # then silence streamed in real time: audio keeps coming, speech does not

        async def feed_silence() -> None:
            await stream(c, silence(120.0))

        nursery.start_soon(feed_silence)
        err = await c.recv_until(v1.Error)
        ended = await c.recv_until(v1.SessionEnded)
        code = await c.drain()
        nursery.cancel_scope.cancel()
    del t0
    assert err.code == "IDLE_TIMEOUT"
    assert code == 1008
    # (times come from the server's receipt: under autojump_clock, virtual time may
    # jump while the store's thread works, so the client's clock at delivery is later)
    # last speech near 2 s (+ VAD hangover), idle 60 s after it
    assert ended.reason == "IDLE_TIMEOUT"
    assert 61.0 <= ended.duration <= 63.0
    assert ended.speech_duration == pytest.approx(2.1, abs=0.3)
    warnings = [w for w in c.of(v1.Warning) if w.code == "IDLE_TIMEOUT"]
    assert [w.seconds_left for w in warnings] == [30, 10]
    assert ended.audio_duration == pytest.approx(ended.duration, abs=0.2)


@pytest.mark.trio
async def test_session_limit_free_plan_five_minutes(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "free", credits=10_000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()
        t0 = trio.current_time()

        async def talk() -> None:
            await stream(c, speech_like(400.0))

        nursery.start_soon(talk)
        err = await c.recv_until(v1.Error)
        ended = await c.recv_until(v1.SessionEnded)
        nursery.cancel_scope.cancel()
    del t0
    assert err.code == "SESSION_LIMIT_REACHED"
    assert ended.duration == 300.0
    assert ended.audio_duration == pytest.approx(300.0, abs=0.11)
    assert [w.seconds_left for w in c.of(v1.Warning) if w.code == "SESSION_LIMIT_REACHED"] == [30, 10]


@pytest.mark.trio
async def test_48_hour_hard_cap(store, autojump_clock):
    config = toml(
        """
        [rules]
        idle_timeout_s = 1000000
        [plans.enterprise]
        max_session_s = 360000
        """
    )
    # 48 h of 1 s checkpoints would be 172,800 commits: checkpoint every 10 min here
    engine = make_engine(store, config, settings=ServerSettings(checkpoint_interval_s=600))
    key = await new_account(store, "enterprise", credits=10_000_000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()
        t0 = trio.current_time()

        async def keep_alive() -> None:
            tick = 0
            while True:
                if tick % 15 == 0:  # a little audio every 30 min keeps NO_AUDIO_TIMEOUT away
                    await c.send(speech_like(0.1))
                else:
                    await c.send(v1.Ping())
                tick += 1
                await trio.sleep(120)

        nursery.start_soon(keep_alive)
        err = await c.recv_until(v1.Error)
        ended = await c.recv_until(v1.SessionEnded)
        nursery.cancel_scope.cancel()
    del t0
    assert err.code == "SESSION_LIMIT_REACHED"
    assert ended.duration == 48 * 3600
    assert ended.audio_duration == pytest.approx(9.6, abs=0.01)  # 96 chunks of 0.1 s (one per 30 min)


@pytest.mark.trio
async def test_keepalive_and_no_audio_timeouts(store, autojump_clock):
    config = toml("[rules]\nidle_timeout_s = 1000000\n")
    engine = make_engine(store, config)
    key = await new_account(store, "enterprise", credits=10_000)
    async with trio.open_nursery() as nursery:
        # neither audio nor ping: KEEPALIVE_TIMEOUT after 3 min
        c = await open_client(nursery, engine, key)
        await c.start()
        err = await c.recv_until(v1.Error)
        assert err.code == "KEEPALIVE_TIMEOUT"
        assert (await c.recv_until(v1.SessionEnded)).duration == 180
        assert await c.drain() == 1008

        # pings but no audio: NO_AUDIO_TIMEOUT after 1 h
        c2 = await open_client(nursery, engine, key)
        await c2.start()

        async def pinger() -> None:
            while True:
                await trio.sleep(60)
                await c2.send(v1.Ping())

        nursery.start_soon(pinger)
        err = await c2.recv_until(v1.Error)
        assert err.code == "NO_AUDIO_TIMEOUT"
        assert (await c2.recv_until(v1.SessionEnded)).duration == 3600
        assert c2.of(v1.Pong)
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_balance_runs_out_mid_session_never_negative(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=61)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()

        async def talk() -> None:
            await stream(c, speech_like(60.0))

        nursery.start_soon(talk)
        err = await c.recv_until(v1.Error)
        ended = await c.recv_until(v1.SessionEnded)
        nursery.cancel_scope.cancel()
    assert err.code == "INSUFFICIENT_CREDITS"
    assert ended.audio_duration == pytest.approx(30.5, abs=0.11)
    assert 0 <= await balance(store, key) < 1 * MICRO


@pytest.mark.trio
async def test_balance_recheck_sees_spending_elsewhere(store, autojump_clock):
    """Another session of the same account spends the balance: the 30 s check ends this one."""
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=200)
    async with trio.open_nursery() as nursery:
        a = await open_client(nursery, engine, key)
        b = await open_client(nursery, engine, key)
        await a.start()
        await b.start()

        async def talk(c) -> None:
            await stream(c, speech_like(120.0))

        nursery.start_soon(talk, a)
        nursery.start_soon(talk, b)
        err = await a.recv_until(v1.Error)
        nursery.cancel_scope.cancel()
    assert err.code == "INSUFFICIENT_CREDITS"
    # two sessions at 2 credits/s each: 200 credits last ~50 s, found out at a 30 s check at the latest
    assert await balance(store, key) >= -2 * 30 * 2 * MICRO


@pytest.mark.trio
async def test_admission_refusals(store, autojump_clock):
    engine = make_engine(store)
    poor = await new_account(store, "pro", credits=59)
    free = await new_account(store, "free", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, poor)
        err = await c.start()
        assert isinstance(err, v1.Error) and err.code == "INSUFFICIENT_CREDITS"
        assert "60" in err.message
        assert await c.drain() == 1008

        first = await open_client(nursery, engine, free)
        assert isinstance(await first.start(), v1.SessionStarted)
        second = await open_client(nursery, engine, free)
        err = await second.start()
        assert isinstance(err, v1.Error) and err.code == "CONCURRENT_LIMIT", err
        assert await second.drain() == 1008
        await first.send(v1.Close())
        await first.drain()
        # the slot is free again
        third = await open_client(nursery, engine, free)
        assert isinstance(await third.start(), v1.SessionStarted)
        await third.send(v1.Close())
        await third.drain()
    assert await balance(store, poor) == 59 * MICRO


@pytest.mark.trio
@pytest.mark.parametrize(
    ("first", "code", "close", "needle"),
    [
        (b"\x00\x01", "PROTOCOL_ERROR", 1003, "before the start"),
        ('{"type": "start", "audio": ', "PROTOCOL_ERROR", 1003, "truncated"),
        ('{"type": "hello"}', "PROTOCOL_ERROR", 1003, "$.type"),
        (
            '{"type": "start", "audio": {"encoding": "flac", "sample_rate": 16000}}',
            "INVALID_AUDIO_FORMAT",
            1007,
            "flac",
        ),
        (
            '{"type": "start", "audio": {"encoding": "pcm_s16le", "sample_rate": 7000}}',
            "INVALID_AUDIO_FORMAT",
            1007,
            "7000",
        ),
        (
            '{"type": "start", "audio": {"encoding": "pcm_s16le", "sample_rate": "16k"}}',
            "PROTOCOL_ERROR",
            1003,
            "$.audio.sample_rate",
        ),
        (
            '{"type": "start", "audio": {"encoding": "pcm_s16le", "sample_rate": 16000}, "model": "nope"}',
            "PROTOCOL_ERROR",
            1003,
            "nope",
        ),
    ],
)
async def test_bad_input_gets_a_clear_error_and_close_code(store, autojump_clock, first, code, close, needle):
    engine = make_engine(store)
    key = await new_account(store)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.send(first)
        err = await c.recv()
        assert isinstance(err, v1.Error)
        assert err.code == code
        assert needle.lower() in err.message.lower()
        assert await c.drain() == close
    assert await balance(store, key) == 1000 * MICRO


@pytest.mark.trio
async def test_bad_messages_mid_session_end_it_and_bill_what_was_received(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()
        await stream(c, speech_like(2.0))
        await c.send('{"type": "audio", "data": "not base64!"}')
        err = await c.recv_until(v1.Error)
        ended = await c.recv_until(v1.SessionEnded)
        assert await c.drain() == 1003
    assert err.code == "PROTOCOL_ERROR"
    assert "$.data" in err.message
    assert parse_credits(ended.credits_used) == 4 * MICRO
    assert await balance(store, key) == 996 * MICRO


@pytest.mark.trio
async def test_base64_audio_and_nan_samples(store, autojump_clock):
    import base64

    import numpy as np

    engine = make_engine(store)
    key = await new_account(store)
    f32 = np.full(16000, np.nan, dtype="<f4")
    f32[::3] = np.inf
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start(encoding="pcm_f32le")
        await c.send(f'{{"type": "audio", "data": "{base64.b64encode(f32.tobytes()).decode()}"}}')
        await c.send(v1.Close())
        ended = await c.recv_until(v1.SessionEnded)
    assert ended.audio_duration == 1.0
    assert parse_credits(ended.credits_used) == 2 * MICRO


@pytest.mark.trio
async def test_throttle_when_message_rate_exceeded(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "free", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()
        tiny = bytes(32)

        async def flood() -> None:
            for _ in range(400):  # free plan: 100 messages/s
                await c.send(tiny)

        nursery.start_soon(flood)
        th = await c.recv_until(v1.Throttle)
        nursery.cancel_scope.cancel()
    assert th.wait_ms > 0
    assert "rate" in th.message.lower()


@pytest.mark.trio
async def test_unauthorized_key(store, autojump_clock):
    engine = make_engine(store)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, "sk-nope")
        err = await c.recv()
        assert isinstance(err, v1.Error) and err.code == "UNAUTHORIZED"
        assert await c.drain() == 1008


@pytest.mark.trio
async def test_shutdown_settles_then_closes_1001(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        await c.start()
        await stream(c, speech_like(3.0))
        await trio.sleep(0.5)
        await engine.shutdown()
        err = await c.recv_until(v1.Error)
        assert err.code == "SERVER_SHUTDOWN"
        assert await c.drain() == 1001
    assert await balance(store, key) == 994 * MICRO


@pytest.mark.trio
async def test_one_faulty_session_leaves_fifty_others_streaming(store, autojump_clock, monkeypatch):
    from engine.audio import StreamDecoder

    engine = make_engine(store)
    keys = [await new_account(store, "enterprise", credits=1000) for _ in range(51)]
    real_feed = StreamDecoder.feed
    poison = b"\x13\x37" * 100

    def feed(self, data):
        if data == poison:
            raise RuntimeError("decoder exploded")
        return real_feed(self, data)

    monkeypatch.setattr(StreamDecoder, "feed", feed)
    results: dict[int, tuple] = {}

    async def one(i: int, key: str) -> None:
        c = await open_client(nursery, engine, key)
        await c.start()
        await stream(c, speech_like(6.0, seed=i))
        if i == 0:
            await c.send(poison)
        else:
            await c.send(v1.Close())
        ended = await c.recv_until(v1.SessionEnded)
        results[i] = (ended, c.of(v1.Error), await c.drain())

    async with trio.open_nursery() as nursery:
        for i, key in enumerate(keys):
            nursery.start_soon(one, i, key)
    bad_ended, bad_err, bad_code = results[0]
    assert bad_code == 1011 and bad_err[0].code == "INTERNAL_ERROR"
    assert parse_credits(bad_ended.credits_used) == 12 * MICRO  # what it sent before the fault
    for i in range(1, 51):
        ended, errs, code = results[i]
        assert code == 1000 and not errs
        assert parse_credits(ended.credits_used) == 12 * MICRO
        assert await balance(store, keys[i]) == 988 * MICRO


@pytest.mark.trio
async def test_resume_within_five_minutes_continues_duration_and_billing(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    other = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        started = await c.start()
        await stream(c, speech_like(5.0))
        await trio.sleep(0.5)
        c.conn.abort()  # dropped without close
        await trio.sleep(120)

        # another account cannot take it over
        thief = await open_client(nursery, engine, other)
        err = await thief.start(resume=started.session_id)
        assert isinstance(err, v1.Error) and err.code == "SESSION_NOT_FOUND"

        c2 = await open_client(nursery, engine, key)
        again = await c2.start(resume=started.session_id)
        assert isinstance(again, v1.SessionStarted), again
        assert again.session_id == started.session_id and again.resumed
        await stream(c2, speech_like(5.0, seed=1))
        await c2.send(v1.Close())
        ended = await c2.recv_until(v1.SessionEnded)
    assert ended.audio_duration == 10.0
    assert parse_credits(ended.credits_used) == 20 * MICRO  # both parts, billed once each
    assert ended.duration >= 10.0
    assert await balance(store, key) == 980 * MICRO
    assert await balance(store, other) == 1000 * MICRO


@pytest.mark.trio
async def test_resume_after_five_minutes_is_refused(store, autojump_clock):
    engine = make_engine(store)
    key = await new_account(store, "pro", credits=1000)
    async with trio.open_nursery() as nursery:
        c = await open_client(nursery, engine, key)
        started = await c.start()
        await stream(c, speech_like(3.0))
        c.conn.abort()
        await trio.sleep(301)
        c2 = await open_client(nursery, engine, key)
        err = await c2.start(resume=started.session_id)
        assert isinstance(err, v1.Error) and err.code == "SESSION_NOT_FOUND"
        assert await c2.drain() == 1008
    assert await balance(store, key) == 994 * MICRO
