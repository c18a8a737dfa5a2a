"""A protocol v1 client: streams a WAV or raw file, used by ``engine stream`` and the tests.

:func:`stream_audio` connects, sends ``start``, streams the audio in chunks at
real-time pace (or as fast as the server allows), obeys ``throttle``, sends
``close`` and returns everything the server said plus the close code.
"""

from __future__ import annotations

import sys
import wave
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from engine.audio import AudioFormatError, bytes_per_sample, check_format
from engine.dialects import v1


class AudioFile(msgspec.Struct, frozen=True, kw_only=True):
    data: bytes
    encoding: str
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.data) / (bytes_per_sample(self.encoding) * self.channels * self.sample_rate)


def read_audio(
    path: str | Path, *, encoding: str | None = None, sample_rate: int | None = None, channels: int = 1
) -> AudioFile:
    """A 16-bit PCM WAV (format from its header) or a raw file (format given)."""
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        with wave.open(str(p), "rb") as w:
            if w.getsampwidth() != 2:
                raise AudioFormatError(
                    f"{p}: only 16-bit PCM WAV files are supported (got {8 * w.getsampwidth()}-bit)"
                )
            return AudioFile(
                data=w.readframes(w.getnframes()),
                encoding="pcm_s16le",
                sample_rate=w.getframerate(),
                channels=w.getnchannels(),
            )
    if encoding is None or sample_rate is None:
        raise AudioFormatError(f"{p}: not a WAV file; give --encoding and --sample-rate for raw audio")
    check_format(encoding, sample_rate, channels)
    return AudioFile(data=p.read_bytes(), encoding=encoding, sample_rate=sample_rate, channels=channels)


class StreamResult(msgspec.Struct, kw_only=True):
    messages: list[v1.ServerMessage]
    close_code: int | None
    close_reason: str | None
    started: v1.SessionStarted | None = None
    ended: v1.SessionEnded | None = None
    error: v1.Error | None = None
    bytes_sent: int = 0


async def stream_audio(
    url: str,
    key: str,
    audio: AudioFile,
    *,
    fast: bool = False,
    chunk_ms: int = 100,
    model: str | None = None,
    resume: str | None = None,
    close: bool = True,
    on_message: Callable[[v1.ServerMessage], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> StreamResult:
    """Stream ``audio`` to a v1 server; returns what happened (never raises on a server close)."""
    bpf = bytes_per_sample(audio.encoding) * audio.channels
    chunk = max(bpf, audio.sample_rate * chunk_ms // 1000 * bpf)
    result = StreamResult(messages=[], close_code=None, close_reason=None)
    started = trio.Event()
    paused_until = [0.0]
    headers = [(b"Authorization", f"Bearer {key}".encode())]
    conn: WebSocketConnection | None = None
    try:
        async with open_websocket_url(url, extra_headers=headers, max_message_size=1 << 22) as ws:
            conn = ws

            async def reader() -> None:
                try:
                    while True:
                        msg = v1.decode_server(await ws.get_message())
                        result.messages.append(msg)
                        if on_message is not None:
                            on_message(msg)
                        t = type(msg)
                        if t is v1.SessionStarted:
                            result.started = msg  # type: ignore[assignment]
                            started.set()
                        elif t is v1.Throttle:
                            paused_until[0] = trio.current_time() + msg.wait_ms / 1000  # type: ignore[union-attr]
                        elif t is v1.SessionEnded:
                            result.ended = msg  # type: ignore[assignment]
                        elif t is v1.Error:
                            result.error = msg  # type: ignore[assignment]
                            started.set()
                except ConnectionClosed:
                    started.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                start = v1.Start(
                    audio=v1._Audio(
                        encoding=audio.encoding, sample_rate=audio.sample_rate, channels=audio.channels
                    ),
                    model=model,
                    resume=resume,
                )
                try:
                    await ws.send_message(v1.encode(start))
                    await started.wait()
                    if result.started is not None and result.error is None:
                        t0 = trio.current_time()
                        sent_s = 0.0
                        for off in range(0, len(audio.data), chunk):
                            if result.error is not None or result.ended is not None:
                                break
                            now = trio.current_time()
                            if paused_until[0] > now:
                                await trio.sleep_until(paused_until[0])
                            if not fast:
                                await trio.sleep_until(t0 + sent_s)
                            piece = audio.data[off : off + chunk]
                            await ws.send_message(piece)
                            result.bytes_sent += len(piece)
                            sent_s += len(piece) / bpf / audio.sample_rate
                            if on_progress is not None:
                                on_progress(sent_s)
                        if close and result.error is None and result.ended is None:
                            await ws.send_message(v1.encode(v1.Close()))
                except ConnectionClosed:
                    pass  # the server ended the session; the reader has its last words
                # the reader ends when the server closes
    except ConnectionClosed:
        pass
    finally:
        if conn is not None and conn.closed is not None:
            result.close_code, result.close_reason = conn.closed.code, conn.closed.reason
    return result


def progress_printer(total_s: float, stream: TextIO | None = None) -> Callable[[float], None]:
    out = stream or sys.stderr
    width = 30

    def show(sent_s: float) -> None:
        frac = min(1.0, sent_s / total_s) if total_s else 1.0
        bar = "#" * int(frac * width)
        print(f"\r[{bar:<{width}}] {sent_s:7.1f}/{total_s:.1f} s", end="", file=out, flush=True)

    return show
