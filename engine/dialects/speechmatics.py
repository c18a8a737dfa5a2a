"""Speechmatics Real-Time v2 compatibility: the ``/v2`` dialect.

Lets clients written against the Speechmatics Real-Time API (the official
``speechmatics-rt`` and ``speechmatics-python`` clients among them) run
unchanged against ``engine serve``, with the same admission, limits, metering
and billing as the native protocol: this module is only a codec. It turns
``StartRecognition`` / binary ``AddAudio`` frames / ``EndOfStream`` into the
neutral session events and the session's outcomes into ``RecognitionStarted``,
``AudioAdded``, ``Info``, ``Warning``, ``Error`` and ``EndOfTranscript``
messages and Speechmatics close codes. See ``docs/dialects.md`` for the full
mapping.

No transcripts are produced here: the engine has no recognizer of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
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
from engine.policy.types import Code

# ---- close codes (Speechmatics' list, plus the standard ones it uses) ------

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_NOT_AUTHORISED = 4001
CLOSE_NOT_ALLOWED = 4003
CLOSE_QUOTA_EXCEEDED = 4005
CLOSE_TIMELIMIT_EXCEEDED = 4006
CLOSE_JOB_ERROR = 4013

# ---- engine Code -> Speechmatics Error type and close code -----------------

ERRORS: dict[Code, tuple[str, int]] = {
    Code.UNAUTHORIZED: ("not_authorised", CLOSE_NOT_AUTHORISED),
    # the account cannot start / continue: Speechmatics' "quota" errors
    Code.INSUFFICIENT_CREDITS: ("quota_exceeded", CLOSE_QUOTA_EXCEEDED),
    Code.CONCURRENT_LIMIT: ("quota_exceeded", CLOSE_QUOTA_EXCEEDED),
    # "usage quota for the contract has been reached" (spec wording)
    Code.HOURLY_LIMIT: ("timelimit_exceeded", CLOSE_TIMELIMIT_EXCEEDED),
    Code.DAILY_LIMIT: ("timelimit_exceeded", CLOSE_TIMELIMIT_EXCEEDED),
    Code.MONTHLY_LIMIT: ("timelimit_exceeded", CLOSE_TIMELIMIT_EXCEEDED),
    # "max session duration was reached", then close 1008 (spec wording)
    Code.SESSION_LIMIT_REACHED: ("session_timeout", CLOSE_POLICY_VIOLATION),
    # inactivity of any kind: "idle duration limit was reached", then close 1008
    Code.IDLE_TIMEOUT: ("idle_timeout", CLOSE_POLICY_VIOLATION),
    Code.NO_AUDIO_TIMEOUT: ("idle_timeout", CLOSE_POLICY_VIOLATION),
    Code.KEEPALIVE_TIMEOUT: ("idle_timeout", CLOSE_POLICY_VIOLATION),
    # kept sending faster than the plan's rate although reading was paused
    Code.RATE_LIMITED: ("buffer_error", CLOSE_POLICY_VIOLATION),
    Code.PROTOCOL_ERROR: ("protocol_error", CLOSE_PROTOCOL_ERROR),
    Code.INVALID_AUDIO_FORMAT: ("invalid_audio_type", CLOSE_PROTOCOL_ERROR),
    Code.SESSION_NOT_FOUND: ("protocol_error", CLOSE_PROTOCOL_ERROR),  # v2 never resumes
    Code.INTERNAL_ERROR: ("unknown_error", CLOSE_INTERNAL_ERROR),
    Code.SERVER_SHUTDOWN: ("job_error", CLOSE_JOB_ERROR),
}

# Error types the dialect itself decides (decode problems), with their close codes.
_OWN_ERRORS: dict[str, int] = {
    "invalid_message": CLOSE_PROTOCOL_ERROR,
    "protocol_error": CLOSE_PROTOCOL_ERROR,
    "invalid_audio_type": CLOSE_PROTOCOL_ERROR,
    "not_allowed": CLOSE_NOT_ALLOWED,
}

# ---- engine Warning code -> Speechmatics Warning type ------------------------

WARNINGS: dict[Code, str] = {
    Code.IDLE_TIMEOUT: "idle_timeout",
    Code.NO_AUDIO_TIMEOUT: "idle_timeout",
    Code.KEEPALIVE_TIMEOUT: "idle_timeout",
    Code.SESSION_LIMIT_REACHED: "session_timeout",
    # the audio duration the account may still stream is running out
    Code.INSUFFICIENT_CREDITS: "duration_limit_exceeded",
    Code.HOURLY_LIMIT: "duration_limit_exceeded",
    Code.DAILY_LIMIT: "duration_limit_exceeded",
    Code.MONTHLY_LIMIT: "duration_limit_exceeded",
}

ENCODINGS = frozenset({"pcm_f32le", "pcm_s16le", "mulaw"})

# Speechmatics messages we accept but have nothing to do for (after StartRecognition).
_NO_OPS = frozenset({"SetRecognitionConfig", "ForceEndOfUtterance", "GetSpeakers"})
# Speechmatics messages of features this server does not offer.
_NOT_ALLOWED = frozenset({"AddChannelAudio", "EndOfChannel"})

_encoder = msgspec.json.Encoder()


def encode(msg: dict[str, Any]) -> str:
    return _encoder.encode(msg).decode()


def error_for(code: Code) -> tuple[str, int]:
    """The Speechmatics Error ``type`` and close code for an engine Code."""
    return ERRORS.get(code, ("unknown_error", CLOSE_INTERNAL_ERROR))


def warning_type_for(code: Code) -> str:
    t = WARNINGS.get(code)
    return t if t is not None else error_for(code)[0]


def _utc_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class V2Dialect:
    """Speechmatics Real-Time v2. One instance per connection.

    ``language`` is the ``/v2/<language>`` path segment, if any (informational:
    the engine has no recognizer). ``models`` optionally maps a Speechmatics
    ``transcription_config.model`` or ``operating_point`` value (``"standard"``,
    ``"enhanced"``, ...) to an engine model name; without a mapping, or for a
    value it does not name, sessions use the engine's default model.
    """

    name = "v2"

    def __init__(self, *, language: str | None = None, models: Mapping[str, str] | None = None) -> None:
        self.language = language
        self._models = dict(models or {})
        self._frames = 0  # binary AddAudio frames accepted (= last AudioAdded seq_no)
        self._started = False
        self._violation: tuple[str, str] | None = None  # (message, Error type) last raised

    # ---- client -> server ----------------------------------------------

    def _fail(self, etype: str, message: str) -> ProtocolViolation:
        self._violation = (message, etype)
        code = Code.INVALID_AUDIO_FORMAT if etype == "invalid_audio_type" else Code.PROTOCOL_ERROR
        return ProtocolViolation(code, message)

    def decode(self, message: str | bytes) -> ClientEvent:
        if isinstance(message, bytes | bytearray | memoryview):
            return AudioChunk(bytes(message))  # AddAudio
        try:
            msg = msgspec.json.decode(message)
        except msgspec.DecodeError as exc:
            raise self._fail("invalid_message", f"invalid JSON: {exc}") from None
        if not isinstance(msg, dict):
            raise self._fail("invalid_message", "a message must be a JSON object")
        kind = msg.get("message")
        if not isinstance(kind, str):
            raise self._fail("invalid_message", "the message has no 'message' field naming its type")
        if kind == "StartRecognition":
            return self._start(msg)
        if kind == "EndOfStream":
            # last_seq_no is ignored: the session counts frames itself
            return ClientClose()
        if kind in _NO_OPS:
            if not self._started:
                raise self._fail("protocol_error", f"{kind} before StartRecognition")
            return ClientPing()  # accepted, nothing to change; counts as client activity
        if kind in _NOT_ALLOWED:
            raise self._fail("not_allowed", f"{kind} is not supported: multichannel input is not available")
        if kind == "AddAudio":
            raise self._fail("invalid_message", "AddAudio must be a binary WebSocket message")
        raise self._fail("invalid_message", f"unknown message type {kind!r}")

    def _start(self, msg: dict[str, Any]) -> StartRequest:
        fmt = msg.get("audio_format")
        if not isinstance(fmt, dict):
            raise self._fail("invalid_audio_type", "StartRecognition needs an 'audio_format' object")
        ftype = fmt.get("type")
        if ftype == "file":
            raise self._fail(
                "invalid_audio_type",
                "audio_format type 'file' is not supported; send raw audio "
                "(type 'raw' with encoding pcm_f32le, pcm_s16le or mulaw, and sample_rate)",
            )
        if ftype != "raw":
            raise self._fail("invalid_audio_type", f"unknown audio_format type {ftype!r}; expected 'raw'")
        encoding = fmt.get("encoding")
        if encoding not in ENCODINGS:
            raise self._fail(
                "invalid_audio_type",
                f"unsupported encoding {encoding!r}; expected one of {', '.join(sorted(ENCODINGS))}",
            )
        rate = fmt.get("sample_rate")
        if type(rate) is not int:
            raise self._fail("invalid_audio_type", f"sample_rate must be an integer; got {rate!r}")
        config = msg.get("transcription_config", {})
        if not isinstance(config, dict):
            raise self._fail("invalid_message", "transcription_config must be a JSON object")
        model = None
        for key in ("model", "operating_point"):
            value = config.get(key)
            if isinstance(value, str) and value in self._models:
                model = self._models[value]
                break
        self._started = True
        return StartRequest(audio=AudioFormat(encoding=encoding, sample_rate=rate, channels=1), model=model)

    # ---- server -> client ----------------------------------------------

    def started(self, info: SessionInfo) -> list[str | bytes]:
        started = {
            "message": "RecognitionStarted",
            "orchestrator_version": "engine",
            "id": info.session_id,
            "language_pack_info": {
                "adapted": False,
                "itn": False,
                "word_delimiter": " ",
                "writing_direction": "left-to-right",
            },
        }
        if info.concurrent_limit is None:
            reason = f"{info.active_sessions} concurrent session(s) in use; no limit"
        else:
            reason = f"{info.active_sessions} of {info.concurrent_limit} concurrent sessions in use"
        usage: dict[str, Any] = {
            "message": "Info",
            "type": "concurrent_session_usage",
            "reason": reason,
            "usage": info.active_sessions,
        }
        if info.concurrent_limit is not None:
            usage["quota"] = info.concurrent_limit
        usage["last_updated"] = _utc_stamp()
        return [encode(started), encode(usage)]

    def audio_received(self) -> str:
        self._frames += 1
        return f'{{"message":"AudioAdded","seq_no":{self._frames}}}'

    def pong(self) -> None:
        return None  # v2 has no JSON ping; WebSocket pings are answered by the transport

    def status(self, status: object) -> None:
        return None  # v2 has no periodic status message

    def warning(self, warning: Any) -> str:
        return encode(
            {
                "message": "Warning",
                "type": warning_type_for(warning.code),
                "reason": warning.message,
                "seq_no": self._frames,
            }
        )

    def throttle(self, wait_ms: int, message: str) -> None:
        # no such message in v2: the session stops reading for the wait, so TCP slows the
        # client down and the AudioAdded acknowledgements come later
        return None

    def finish(
        self, *, session_id: str | None, receipt: Any | None, code: Code | None, message: str
    ) -> tuple[list[str | bytes], int, str]:
        if code is None:
            return [encode({"message": "EndOfTranscript"})], CLOSE_NORMAL, "EndOfTranscript"
        v = self._violation
        if v is not None and v[0] == message and code in (Code.PROTOCOL_ERROR, Code.INVALID_AUDIO_FORMAT):
            etype, close = v[1], _OWN_ERRORS[v[1]]
        else:
            etype, close = error_for(code)
        err = {"message": "Error", "type": etype, "reason": message, "seq_no": self._frames}
        return [encode(err)], close, etype
