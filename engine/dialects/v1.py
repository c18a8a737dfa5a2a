"""Protocol v1: engine's native JSON-over-WebSocket dialect (``/v1/stream``).

Messages are msgspec tagged-union Structs (tag field ``type``); one decoder
and one encoder are built once at import. See ``docs/protocol.md``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.dialects.base import (
    AudioChunk,
    AudioFormat,
    ClientClose,
    ClientEvent,
    ClientPing,
    ProtocolViolation,
    SessionInfo,
    StartRequest,
)
from engine.policy.money import format_credits
from engine.policy.types import Code

# ---- client -> server ------------------------------------------------------


class _Audio(msgspec.Struct, forbid_unknown_fields=True):
    encoding: str
    sample_rate: int
    channels: int = 1


class Start(msgspec.Struct, tag="start", tag_field="type", forbid_unknown_fields=True):
    audio: _Audio
    model: str | None = None
    resume: str | None = None


class Audio(msgspec.Struct, tag="audio", tag_field="type", forbid_unknown_fields=True):
    data: bytes  # base64 in JSON


class Ping(msgspec.Struct, tag="ping", tag_field="type", forbid_unknown_fields=True):
    pass


class Close(msgspec.Struct, tag="close", tag_field="type", forbid_unknown_fields=True):
    pass


ClientMessage = Start | Audio | Ping | Close

# ---- server -> client ------------------------------------------------------


class SessionStarted(msgspec.Struct, tag="session_started", tag_field="type", kw_only=True):
    session_id: str
    plan: str
    model: str
    limits: dict[str, int | None]
    credits_remaining: str
    resumed: bool = False


class SessionStatus(msgspec.Struct, tag="session_status", tag_field="type", kw_only=True):
    duration: float  # seconds of session wall time
    audio_duration: float  # seconds of audio received
    speech_duration: float  # seconds of speech detected
    credits_used: str
    credits_remaining: str


class Warning(msgspec.Struct, tag="warning", tag_field="type", kw_only=True):
    code: str
    seconds_left: int
    message: str


class Throttle(msgspec.Struct, tag="throttle", tag_field="type", kw_only=True):
    message: str
    wait_ms: int


class Pong(msgspec.Struct, tag="pong", tag_field="type"):
    pass


class SessionEnded(msgspec.Struct, tag="session_ended", tag_field="type", kw_only=True):
    session_id: str
    reason: str
    duration: float
    audio_duration: float
    speech_duration: float
    credits_used: str
    credits_remaining: str


class Error(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    code: str
    message: str


ServerMessage = SessionStarted | SessionStatus | Warning | Throttle | Pong | SessionEnded | Error

_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)  # for clients and tests
_encoder = msgspec.json.Encoder()

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011

_CLOSE_FOR = {
    Code.PROTOCOL_ERROR: CLOSE_UNSUPPORTED,
    Code.INVALID_AUDIO_FORMAT: CLOSE_INVALID_DATA,
    Code.INTERNAL_ERROR: CLOSE_INTERNAL,
    Code.SERVER_SHUTDOWN: CLOSE_GOING_AWAY,
}


def encode(msg: Any) -> str:
    return _encoder.encode(msg).decode()


def decode_server(data: str | bytes) -> ServerMessage:
    msg: ServerMessage = _server_decoder.decode(data)
    return msg


def _secs(ms: int) -> float:
    return round(ms / 1000, 3)


class V1Dialect:
    name = "v1"

    def decode(self, message: str | bytes) -> ClientEvent:
        if isinstance(message, bytes):
            return AudioChunk(message)
        try:
            msg = _decoder.decode(message)
        except msgspec.DecodeError as exc:
            raise ProtocolViolation(Code.PROTOCOL_ERROR, f"invalid message: {exc}") from None
        if type(msg) is Audio:
            return AudioChunk(msg.data)
        if type(msg) is Start:
            a = msg.audio
            return StartRequest(
                audio=AudioFormat(encoding=a.encoding, sample_rate=a.sample_rate, channels=a.channels),
                model=msg.model,
                resume=msg.resume,
            )
        if type(msg) is Ping:
            return ClientPing()
        return ClientClose()

    def started(self, info: SessionInfo) -> list[str | bytes]:
        return [
            encode(
                SessionStarted(
                    session_id=info.session_id,
                    plan=info.plan,
                    model=info.model,
                    limits=info.limits,
                    credits_remaining=info.credits_remaining,
                    resumed=info.resumed,
                )
            )
        ]

    def audio_received(self) -> None:
        return None

    def pong(self) -> str:
        return encode(Pong())

    def status(self, status: Any) -> str:
        return encode(
            SessionStatus(
                duration=_secs(status.duration_ms),
                audio_duration=_secs(status.audio_ms),
                speech_duration=_secs(status.speech_ms),
                credits_used=format_credits(status.billed_micro),
                credits_remaining=format_credits(status.remaining_micro),
            )
        )

    def warning(self, warning: Any) -> str:
        return encode(
            Warning(code=str(warning.code), seconds_left=warning.seconds_left, message=warning.message)
        )

    def throttle(self, wait_ms: int, message: str) -> str:
        return encode(Throttle(message=message, wait_ms=wait_ms))

    def finish(
        self, *, session_id: str | None, receipt: Any | None, code: Code | None, message: str
    ) -> tuple[list[str | bytes], int, str]:
        out: list[str | bytes] = []
        if code is not None:
            out.append(encode(Error(code=str(code), message=message)))
        if receipt is not None and session_id is not None:
            out.append(
                encode(
                    SessionEnded(
                        session_id=session_id,
                        reason=str(code) if code is not None else str(receipt.reason),
                        duration=_secs(receipt.duration_ms),
                        audio_duration=_secs(receipt.audio_ms),
                        speech_duration=_secs(receipt.speech_ms),
                        credits_used=format_credits(receipt.billed_micro),
                        credits_remaining=format_credits(receipt.remaining_micro),
                    )
                )
            )
        if code is None:
            return out, CLOSE_NORMAL, "session ended"
        return out, _CLOSE_FOR.get(code, CLOSE_POLICY), str(code)
