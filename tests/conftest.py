"""Shared fixtures: a real SQLite store in a temporary folder, an engine, test audio, a v1 client."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed

from engine.dialects import v1
from engine.policy.config import EngineConfig, config_from_toml_str, load_config
from engine.policy.types import MICRO
from engine.server import Engine, ServerSettings
from engine.store.sqlite import SqliteStore
from engine.transport import MemoryConnection, memory_connection_pair

SR = 16000
CHUNK = 3200  # 100 ms of 16 kHz S16 mono


def _s16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes()


def speech_like(seconds: float, seed: int = 0) -> bytes:
    """Noise bursts at a syllable rate, about -20 dBFS: the VAD calls it speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    env = (np.sin(2 * np.pi * 3 * t) > 0.0).astype(np.float64)
    return _s16(0.1 * rng.standard_normal(n) * env)


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * SR) * 2)


def chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class Client:
    """The client end of an in-memory v1 connection, with typed messages."""

    def __init__(self, conn: MemoryConnection) -> None:
        self.conn = conn
        self.messages: list[Any] = []

    async def send(self, msg: Any) -> None:
        await self.conn.send_message(msg if isinstance(msg, str | bytes) else v1.encode(msg))

    async def start(
        self, encoding: str = "pcm_s16le", sample_rate: int = SR, channels: int = 1, **kw: Any
    ) -> Any:
        await self.send(
            v1.Start(audio=v1._Audio(encoding=encoding, sample_rate=sample_rate, channels=channels), **kw)
        )
        return await self.recv()

    async def recv(self) -> Any:
        msg = v1.decode_server(await self.conn.get_message())
        self.messages.append(msg)
        return msg

    async def recv_until(self, *types: type) -> Any:
        while True:
            msg = await self.recv()
            if isinstance(msg, types):
                return msg

    async def drain(self) -> int | None:
        """Read until the server closes; returns the close code."""
        try:
            while True:
                await self.recv()
        except ConnectionClosed as exc:
            return exc.reason.code if exc.reason else None

    def of(self, t: type) -> list[Any]:
        return [m for m in self.messages if isinstance(m, t)]


TEST_CONFIG = """
[rules]
status_interval_s = 10
"""


@pytest.fixture
def config() -> EngineConfig:
    return load_config(None)


@pytest.fixture
async def threaded_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The store as `engine serve` runs it (a worker thread): for real-clock tests."""
    s = await SqliteStore.open(str(tmp_path / "engine.db"))
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    # threaded=False: under autojump_clock, virtual time would jump while a worker thread
    # runs (e.g. past a 30 s lease); the store's own tests cover the threaded mode
    s = await SqliteStore.open(str(tmp_path / "engine.db"), threaded=False)
    try:
        yield s
    finally:
        await s.aclose()


def make_engine(store: SqliteStore, config: EngineConfig | None = None, **kw: Any) -> Engine:
    return Engine(
        config or load_config(None),
        store,
        settings=kw.pop("settings", ServerSettings()),
        utc_offset=kw.pop("utc_offset", 1_800_000_000.0),
        **kw,
    )


async def new_account(store: SqliteStore, plan: str = "pro", credits: int = 1000) -> str:
    _, key = await store.create_account(plan=plan, credits_micro=credits * MICRO, name="test")
    return key


async def open_client(nursery: trio.Nursery, engine: Engine, key: str) -> Client:
    client_end, server_end = memory_connection_pair()
    nursery.start_soon(partial(engine.run_connection, server_end, api_key=key))
    return Client(client_end)


def toml(text: str) -> EngineConfig:
    return config_from_toml_str(text)


warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*audioop.*")
