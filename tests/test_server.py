"""The server over real loopback sockets: handshake auth, routing, the stream client, pings."""

from __future__ import annotations

import json
from functools import partial

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from engine.client import AudioFile, stream_audio
from engine.dialects import v1
from engine.policy.money import parse_credits
from engine.policy.types import MICRO
from engine.server import ServerSettings

from .conftest import SR, make_engine, new_account, speech_like


async def start_server(nursery: trio.Nursery, engine) -> str:
    server = await nursery.start(partial(engine.serve, "127.0.0.1", 0))
    return f"ws://127.0.0.1:{server.port}"


@pytest.mark.trio
async def test_stream_a_file_over_loopback_fast(threaded_store):
    engine = make_engine(threaded_store, utc_offset=None)
    key = await new_account(threaded_store, "pro", credits=1000)
    audio = AudioFile(data=speech_like(20.0), encoding="pcm_s16le", sample_rate=SR, channels=1)
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, engine)
        result = await stream_audio(f"{url}/v1/stream", key, audio, fast=True)
        await engine.shutdown()
    assert result.error is None
    assert result.close_code == 1000
    assert result.started is not None and result.ended is not None
    assert result.ended.audio_duration == 20.0
    assert parse_credits(result.ended.credits_used) == 40 * MICRO
    acct = await threaded_store.authenticate(key)
    assert acct.balance_micro == 960 * MICRO


@pytest.mark.trio
async def test_token_query_parameter_for_browsers(threaded_store):
    engine = make_engine(threaded_store, utc_offset=None)
    key = await new_account(threaded_store)
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, engine)
        async with open_websocket_url(f"{url}/v1/stream?token={key}") as ws:
            await ws.send_message(v1.encode(v1.Start(audio=v1._Audio(encoding="mulaw", sample_rate=8000))))
            started = v1.decode_server(await ws.get_message())
            assert isinstance(started, v1.SessionStarted)
            await ws.send_message(bytes(8000))  # 1 s of mu-law
            await ws.send_message(v1.encode(v1.Close()))
            ended = v1.decode_server(await ws.get_message())
            while not isinstance(ended, v1.SessionEnded):
                ended = v1.decode_server(await ws.get_message())
            assert ended.audio_duration == 1.0
        await engine.shutdown()


@pytest.mark.trio
@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/stream", [], 401),
        ("/v1/stream", [(b"Authorization", b"Bearer wrong")], 401),
        ("/v1/stream?token=wrong", [], 401),
        ("/nope", [], 404),
    ],
)
async def test_handshake_refusals(threaded_store, path, headers, status):
    engine = make_engine(threaded_store, utc_offset=None)
    await new_account(threaded_store)
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, engine)
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(f"{url}{path}", extra_headers=headers):
                pass
        await engine.shutdown()
    assert info.value.status_code == status
    body = json.loads(info.value.body)
    assert body["error"]["code"] in ("UNAUTHORIZED", "PROTOCOL_ERROR")
    assert body["error"]["message"]


@pytest.mark.trio
async def test_websocket_pings_count_as_keepalive(threaded_store):
    """Seed 003: no audio or ping/pongs for 3 min ends a session; WebSocket pings count."""
    config_text = "[rules]\nkeepalive_timeout_s = 2\nidle_timeout_s = 100\nwarn_before_s = []\n"
    from .conftest import toml

    engine = make_engine(
        threaded_store, toml(config_text), utc_offset=None, settings=ServerSettings(checkpoint_interval_s=0.2)
    )
    key = await new_account(threaded_store)
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, engine)
        headers = [(b"Authorization", f"Bearer {key}".encode())]
        # with WebSocket pings every 0.5 s the session outlives the 2 s keepalive timeout
        async with open_websocket_url(f"{url}/v1/stream", extra_headers=headers) as ws:
            await ws.send_message(v1.encode(v1.Start(audio=v1._Audio(encoding="pcm_s16le", sample_rate=SR))))
            assert isinstance(v1.decode_server(await ws.get_message()), v1.SessionStarted)
            for _ in range(8):
                await ws.ping()
                await trio.sleep(0.5)
            assert ws.closed is None
            await ws.send_message(v1.encode(v1.Close()))
            msg = v1.decode_server(await ws.get_message())
            while not isinstance(msg, v1.SessionEnded):
                msg = v1.decode_server(await ws.get_message())
            assert msg.reason == "client_close"
            assert msg.duration >= 4.0
        # without them it ends with KEEPALIVE_TIMEOUT
        async with open_websocket_url(f"{url}/v1/stream", extra_headers=headers) as ws:
            await ws.send_message(v1.encode(v1.Start(audio=v1._Audio(encoding="pcm_s16le", sample_rate=SR))))
            assert isinstance(v1.decode_server(await ws.get_message()), v1.SessionStarted)
            msg = v1.decode_server(await ws.get_message())
            assert isinstance(msg, v1.Error) and msg.code == "KEEPALIVE_TIMEOUT"
        await engine.shutdown()


@pytest.mark.trio
async def test_oversized_frame_closes_1009_and_keeps_the_billing(threaded_store):
    engine = make_engine(threaded_store, utc_offset=None, settings=ServerSettings(max_message_size=8192))
    key = await new_account(threaded_store, "pro", credits=100)
    async with trio.open_nursery() as nursery:
        url = await start_server(nursery, engine)
        headers = [(b"Authorization", f"Bearer {key}".encode())]
        async with open_websocket_url(f"{url}/v1/stream", extra_headers=headers) as ws:
            await ws.send_message(v1.encode(v1.Start(audio=v1._Audio(encoding="pcm_s16le", sample_rate=SR))))
            assert isinstance(v1.decode_server(await ws.get_message()), v1.SessionStarted)
            await ws.send_message(speech_like(0.25))  # 8,000 bytes: fits
            await ws.send_message(bytes(8194))  # over the limit
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.get_message()
        assert info.value.reason.code == 1009
        with trio.fail_after(5):
            while engine.sessions:
                await trio.sleep(0.05)
        await engine.shutdown()
    # the quarter second before the oversized frame is billed: 0.5 credits
    assert (await threaded_store.authenticate(key)).balance_micro == 100 * MICRO - MICRO // 2
