"""What every wire dialect translates to and from.

A dialect is a codec: it turns a client's WebSocket messages into the neutral
:data:`ClientEvent` values below and the session's neutral outcomes into
messages and close codes. It never decides limits or money; the same session
actor and policy serve every dialect.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from engine.policy.types import Code


class AudioFormat(msgspec.Struct, frozen=True, kw_only=True):
    encoding: str
    sample_rate: int
    channels: int = 1


class StartRequest(msgspec.Struct, frozen=True, kw_only=True):
    audio: AudioFormat
    model: str | None = None
    resume: str | None = None


class AudioChunk(msgspec.Struct, frozen=True):
    data: bytes


class ClientPing(msgspec.Struct, frozen=True):
    pass


class ClientClose(msgspec.Struct, frozen=True):
    pass


ClientEvent = StartRequest | AudioChunk | ClientPing | ClientClose


class ProtocolViolation(Exception):
    """A client message the dialect cannot accept; ends the session with ``code``."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a dialect may tell the client when a session starts."""

    session_id: str
    plan: str
    model: str
    limits: dict[str, int | None]
    credits_remaining: str
    active_sessions: int
    concurrent_limit: int | None
    resumed: bool = False


class Dialect(Protocol):
    """A wire protocol. One instance per connection (it may keep per-session state)."""

    name: str

    def decode(self, message: str | bytes) -> ClientEvent:
        """One WebSocket message -> one event; raises ProtocolViolation."""
        ...

    def started(self, info: SessionInfo) -> list[str | bytes]: ...

    def audio_received(self) -> str | bytes | None:
        """Called after each audio chunk is accepted (an acknowledgement, if the dialect has one)."""
        ...

    def pong(self) -> str | bytes | None: ...

    def status(self, status: object) -> str | bytes | None: ...

    def warning(self, warning: object) -> str | bytes | None: ...

    def throttle(self, wait_ms: int, message: str) -> str | bytes | None: ...

    def finish(
        self, *, session_id: str | None, receipt: object | None, code: Code | None, message: str
    ) -> tuple[list[str | bytes], int, str]:
        """How a session ends: messages to send, then the close code and close reason.

        ``code`` is None for a normal end (client close or disconnect); ``receipt``
        is None when no session was started (refused, bad start message).
        """
        ...
