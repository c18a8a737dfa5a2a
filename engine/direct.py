"""Sessions without a transport, for hosts that bring their own (SIP, gRPC, a file queue ...).

::

    async with open_session(engine, api_key, encoding="pcm_s16le", sample_rate=16000) as s:
        print(s.started.session_id)
        await s.feed(chunk)              # any length; TCP-like backpressure
        event = s.poll()                 # session_status / warning / throttle, or None
        receipt = await s.close()        # v1.SessionEnded

The same session actor, policy, store and billing run as for a WebSocket
client; events are protocol v1's typed messages. A refused start raises
:class:`SessionRefused`; a session the engine ended raises
:class:`SessionEnded` from :meth:`DirectSession.feed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed

from engine.dialects import v1
from engine.transport import MemoryConnection, memory_connection_pair

if TYPE_CHECKING:
    from engine.server import Engine


class SessionRefused(Exception):
    def __init__(self, error: v1.Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code
        self.message = error.message


class SessionEnded(Exception):
    """The engine ended the session (limit, timeout, shutdown ...)."""

    def __init__(self, error: v1.Error | None, receipt: v1.SessionEnded | None) -> None:
        super().__init__(f"{error.code}: {error.message}" if error else "session ended")
        self.error = error
        self.receipt = receipt


class DirectSession:
    def __init__(self, conn: MemoryConnection, started: v1.SessionStarted) -> None:
        self._conn = conn
        self.started = started
        self.events: list[v1.ServerMessage] = []  # everything the engine said, in order
        self.error: v1.Error | None = None
        self.receipt: v1.SessionEnded | None = None
        self._unread = 0
        self._done = trio.Event()

    @property
    def session_id(self) -> str:
        return self.started.session_id

    async def _read(self) -> None:
        try:
            while True:
                msg = v1.decode_server(await self._conn.get_message())
                self.events.append(msg)
                self._unread += 1
                if isinstance(msg, v1.Error):
                    self.error = msg
                elif isinstance(msg, v1.SessionEnded):
                    self.receipt = msg
        except ConnectionClosed:
            pass
        finally:
            self._done.set()

    def poll(self) -> v1.ServerMessage | None:
        """The oldest event not yet polled, or None."""
        if not self._unread:
            return None
        msg = self.events[len(self.events) - self._unread]
        self._unread -= 1
        return msg

    async def feed(self, data: bytes) -> None:
        if self._done.is_set():
            raise SessionEnded(self.error, self.receipt)
        try:
            await self._conn.send_message(bytes(data))
        except ConnectionClosed:
            await self._done.wait()
            raise SessionEnded(self.error, self.receipt) from None

    async def ping(self) -> None:
        await self._conn.ping()

    async def close(self) -> v1.SessionEnded:
        """End the session normally; returns the receipt (settled, durable)."""
        if not self._done.is_set():
            try:
                await self._conn.send_message(v1.encode(v1.Close()))
            except ConnectionClosed:
                pass
            await self._done.wait()
        if self.receipt is None:
            raise SessionEnded(self.error, None)
        return self.receipt


@asynccontextmanager
async def open_session(
    engine: Engine,
    api_key: str,
    *,
    encoding: str,
    sample_rate: int,
    channels: int = 1,
    model: str | None = None,
    resume: str | None = None,
    buffer: int = 16,
) -> AsyncIterator[DirectSession]:
    client, server_end = memory_connection_pair(buffer)
    try:
        async with _session(
            engine, api_key, client, server_end, encoding, sample_rate, channels, model, resume
        ) as s:
            yield s
    except BaseExceptionGroup as group:
        # the internal nursery wraps what the body raised: give callers the plain exception
        # (as trio-websocket's open_websocket does)
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def _session(
    engine: Engine,
    api_key: str,
    client: MemoryConnection,
    server_end: MemoryConnection,
    encoding: str,
    sample_rate: int,
    channels: int,
    model: str | None,
    resume: str | None,
) -> AsyncIterator[DirectSession]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(engine.run_connection, server_end, api_key=api_key))
        await client.send_message(
            v1.encode(
                v1.Start(
                    audio=v1._Audio(encoding=encoding, sample_rate=sample_rate, channels=channels),
                    model=model,
                    resume=resume,
                )
            )
        )
        try:
            first = v1.decode_server(await client.get_message())
        except ConnectionClosed:
            raise SessionRefused(v1.Error(code="INTERNAL_ERROR", message="closed before start")) from None
        if not isinstance(first, v1.SessionStarted):
            assert isinstance(first, v1.Error)
            raise SessionRefused(first)
        session = DirectSession(client, first)
        nursery.start_soon(session._read)
        try:
            yield session
        finally:
            with trio.CancelScope(shield=True):
                if not session._done.is_set():
                    try:
                        await session.close()
                    except SessionEnded:
                        pass
