"""Transports a session can run over: a WebSocket, or an in-memory pair.

A session actor needs only :class:`Connection`: get a message, send a
message, close with a code. trio-websocket's ``WebSocketConnection`` is one;
:func:`memory_connection_pair` gives hosts with their own transport (or
tests on ``MockClock``) the same thing without sockets.

WebSocket-level pings count as keepalive (seed 003: "no audio or ping/pongs
for 3 minutes"), but trio-websocket answers them inside its reader task with
no hook. :func:`install_ping_hook` wraps that handler once so a connection
can carry an ``on_ping`` callback; ``tests/test_server.py`` checks it still
works with the installed trio-websocket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection


class Connection(Protocol):
    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


_PING_ATTR = "_engine_on_ping"
_installed = False


def install_ping_hook() -> None:
    """Make WebSocket pings call ``conn._engine_on_ping()`` when a connection has one."""
    global _installed
    if _installed:
        return
    original = WebSocketConnection._handle_ping_event

    async def _handle_ping_event(self: WebSocketConnection, event: Any) -> None:
        callback = getattr(self, _PING_ATTR, None)
        if callback is not None:
            callback()
        await original(self, event)

    WebSocketConnection._handle_ping_event = _handle_ping_event  # type: ignore[method-assign]
    _installed = True


class MemoryConnection:
    """One end of an in-memory message connection (see :func:`memory_connection_pair`).

    Behaves like a WebSocket connection: messages are str or bytes, closing
    sends a close code and reason that the other end sees as ConnectionClosed.
    """

    def __init__(
        self,
        send: trio.MemorySendChannel[str | bytes | CloseReason],
        receive: trio.MemoryReceiveChannel[str | bytes | CloseReason],
    ) -> None:
        self._send = send
        self._receive = receive
        self.closed: CloseReason | None = None
        self.on_ping: Callable[[], None] | None = None
        self._peer: MemoryConnection | None = None  # the other end (set by memory_connection_pair)

    async def get_message(self) -> str | bytes:
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        try:
            msg = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self.closed = CloseReason(1006, "connection lost")
            raise ConnectionClosed(self.closed) from None
        if isinstance(msg, CloseReason):
            self.closed = msg
            try:  # echo the close, like a WebSocket closing handshake
                self._send.send_nowait(msg)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass
            raise ConnectionClosed(msg)
        return msg

    async def send_message(self, message: str | bytes) -> None:
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = CloseReason(1006, "connection lost")
            raise ConnectionClosed(self.closed) from None

    async def ping(self) -> None:
        """A transport-level keepalive (what a WebSocket ping is)."""
        # delivered out of band: the peer's on_ping is called directly
        if self._peer is not None and self._peer.on_ping is not None:
            self._peer.on_ping()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self.closed is not None:
            return
        self.closed = CloseReason(code, reason)
        try:
            self._send.send_nowait(self.closed)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        await self._send.aclose()

    def abort(self) -> None:
        """Drop the connection without a close handshake (like a lost TCP connection)."""
        self.closed = CloseReason(1006, "connection lost")
        self._send.close()
        self._receive.close()


def memory_connection_pair(buffer: int = 64) -> tuple[MemoryConnection, MemoryConnection]:
    """Two connected ends; bounded buffers give the same backpressure as a socket."""
    a_send, b_recv = trio.open_memory_channel[str | bytes | CloseReason](buffer)
    b_send, a_recv = trio.open_memory_channel[str | bytes | CloseReason](buffer)
    a = MemoryConnection(a_send, a_recv)
    b = MemoryConnection(b_send, b_recv)
    a._peer, b._peer = b, a
    return a, b


def connection_on_ping(conn: object, callback: Callable[[], None] | None) -> None:
    """Route transport-level pings on ``conn`` to ``callback`` (None: stop)."""
    if isinstance(conn, MemoryConnection):
        conn.on_ping = callback
    elif isinstance(conn, WebSocketConnection):
        setattr(conn, _PING_ATTR, callback)
