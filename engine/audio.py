"""Audio: the thin, checked Python face of the native core (``engine._native``).

This is the only module that calls the C code. Every function checks types
and sizes first and raises a clear ``TypeError`` / ``ValueError``
(:class:`AudioFormatError`) instead of letting C read out of bounds.

Bulk helpers (``s16_to_f32``, ``s16_to_ulaw`` ...) take whole buffers.
:class:`StreamDecoder` is the session hot path: it accepts chunks of any byte
length, carries partial samples and partial VAD frames between calls, and in
one native pass decodes, measures per-frame energy and runs the voice
activity detector, so decoding a stream in arbitrary pieces gives exactly the
result of decoding it whole, and the count of samples received (the billing
basis) is always exact.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from engine._native import ffi, lib

__all__ = [
    "AudioFormatError",
    "Encoding",
    "StreamDecoder",
    "VadConfig",
    "bytes_per_sample",
    "f32_to_s16",
    "f32_to_ulaw",
    "frame_energy",
    "native_info",
    "rms_s16",
    "s16_to_f32",
    "s16_to_ulaw",
    "sanitize_f32",
    "ulaw_to_f32",
    "ulaw_to_s16",
]

F32Array = npt.NDArray[np.float32]


class AudioFormatError(ValueError):
    """Audio that does not match its declared format (sizes, rates, encodings)."""


class Encoding(enum.StrEnum):
    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"
    MULAW = "mulaw"


_NATIVE_CODE = {
    Encoding.PCM_S16LE: lib.ENG_PCM_S16LE,
    Encoding.PCM_F32LE: lib.ENG_PCM_F32LE,
    Encoding.MULAW: lib.ENG_MULAW,
}
_BYTES_PER_SAMPLE = {Encoding.PCM_S16LE: 2, Encoding.PCM_F32LE: 4, Encoding.MULAW: 1}

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_CHANNELS = int(lib.ENG_MAX_CHANNELS)
FRAME_MS_CHOICES = (10, 20, 30)


def native_info() -> str:
    """Which SIMD variant of the native kernels is in use (e.g. for benchmark reports)."""
    return str(ffi.string(lib.eng_simd_info()).decode())


def parse_encoding(value: str | Encoding) -> Encoding:
    try:
        return Encoding(value)
    except ValueError:
        choices = ", ".join(e.value for e in Encoding)
        raise AudioFormatError(f"unknown audio encoding {value!r}; expected one of: {choices}") from None


def bytes_per_sample(encoding: str | Encoding) -> int:
    return _BYTES_PER_SAMPLE[parse_encoding(encoding)]


def check_format(encoding: str | Encoding, sample_rate: int, channels: int, frame_ms: int = 20) -> Encoding:
    """Validate a stream format; returns the parsed encoding or raises AudioFormatError."""
    enc = parse_encoding(encoding)
    if type(sample_rate) is not int or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioFormatError(
            f"sample_rate must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz; "
            f"got {sample_rate!r}"
        )
    if type(channels) is not int or not 1 <= channels <= MAX_CHANNELS:
        raise AudioFormatError(f"channels must be an integer from 1 to {MAX_CHANNELS}; got {channels!r}")
    if frame_ms not in FRAME_MS_CHOICES:
        raise AudioFormatError(f"frame_ms must be one of {FRAME_MS_CHOICES}; got {frame_ms!r}")
    if (sample_rate * frame_ms) % 1000:
        raise AudioFormatError(f"a {frame_ms} ms frame at {sample_rate} Hz is not a whole number of samples")
    return enc


# numpy dtypes accepted as input, per encoding (raw bytes may always be given as uint8)
_RAW_DTYPES: tuple[np.dtype[Any], ...] = (np.dtype(np.uint8), np.dtype(np.int8))
_ARRAY_DTYPES: dict[Encoding, tuple[np.dtype[Any], ...]] = {
    Encoding.PCM_S16LE: (*_RAW_DTYPES, np.dtype("<i2")),
    Encoding.PCM_F32LE: (*_RAW_DTYPES, np.dtype("<f4")),
    Encoding.MULAW: _RAW_DTYPES,
}


def _as_bytes_like(data: Any, what: str, dtypes: tuple[np.dtype[Any], ...] = _RAW_DTYPES) -> tuple[Any, int]:
    """(something cffi takes as ``const char *``, its length in bytes).

    ``bytes`` are passed to C as they are (no copy). bytearray, memoryview and
    C-contiguous numpy arrays of an accepted dtype go through ``ffi.from_buffer``.
    Anything else (str, list, None, numbers, arrays of another dtype) is a TypeError.
    """
    if type(data) is bytes:
        return data, len(data)
    if isinstance(data, np.ndarray):
        if data.dtype not in dtypes:
            names = ", ".join(str(d) for d in dtypes)
            raise TypeError(
                f"{what}: a numpy array of dtype {data.dtype} is not accepted (use one of: {names})"
            )
    elif not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"{what} must be bytes-like (bytes, bytearray, memoryview or numpy array), "
            f"not {type(data).__name__}"
        )
    mv = memoryview(data)
    if not mv.c_contiguous:
        raise TypeError(f"{what} must be a C-contiguous buffer")
    return ffi.from_buffer(mv), mv.nbytes


def _whole_samples(nbytes: int, size: int, what: str) -> int:
    if nbytes % size:
        raise AudioFormatError(
            f"{what} must be a whole number of {size}-byte samples; got {nbytes} bytes "
            f"({nbytes % size} byte(s) left over)"
        )
    return nbytes // size


def _as_f32(samples: Any, what: str) -> tuple[Any, int]:
    """Float32 input: a float32 numpy array, or bytes-like F32LE data (copied only if misaligned)."""
    if isinstance(samples, np.ndarray):
        if samples.dtype != np.float32:
            raise TypeError(f"{what} must have dtype float32, not {samples.dtype}")
        arr = np.ascontiguousarray(samples)
    else:
        _, nbytes = _as_bytes_like(samples, what)
        _whole_samples(nbytes, 4, what)
        arr = np.frombuffer(samples, dtype="<f4")
        if not arr.flags.aligned:
            arr = arr.copy()
    return ffi.from_buffer("float[]", arr), arr.size


def _out_f32(n: int, out: F32Array | None) -> F32Array:
    if out is None:
        return np.empty(n, dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise TypeError("out must be a C-contiguous float32 numpy array")
    if not out.flags.writeable:
        raise TypeError("out must be writable")
    if out.size < n:
        raise ValueError(f"out holds {out.size} samples; {n} are needed")
    return out[:n]


def _probe_fill_bytes() -> bool:
    """Whether C can fill a freshly made ``bytes`` object in place (see :func:`_new_bytes`)."""
    try:
        probe = bytes(4)
        lib.eng_ulaw_to_s16(b"\x00\xff", 2, probe)
        return probe == b"\x84\x82\x00\x00"
    except Exception:  # pragma: no cover - other Python implementations
        return False


# Byte results are produced with ONE allocation: C writes straight into a new
# ``bytes`` object of the final size, as ``audioop`` does in C. Python has no
# way to make an uninitialised bytes object, so we make a zeroed one with
# ``bytes(n)`` and hand its storage to C (cffi passes a bytes object to a
# ``char *`` parameter as a pointer to its own buffer). This is sound because
# the object is brand new and not yet visible to anyone: for n >= 2 CPython
# always creates a new object (only b"" and the 1-byte objects are shared) and
# its hash is not computed yet. A probe at import checks that the bytes really
# are written in place; if not (another Python implementation), or for n < 2,
# the results go through a bytearray and one copy instead. (A bytearray plus
# a copy is not just slower: two large allocations per call can make glibc
# return the memory to the OS and fault it back in every call, ~6x slower.)
_FILL_BYTES_IN_PLACE = _probe_fill_bytes()


_c_ulaw_to_s16 = lib.eng_ulaw_to_s16
_c_s16_to_ulaw = lib.eng_s16_to_ulaw
_c_rms_s16 = lib.eng_rms_s16


def _new_bytes(n: int) -> tuple[Any, Any]:
    """(a buffer C may fill, which becomes the result via :func:`_done_bytes`)."""
    if n >= 2 and _FILL_BYTES_IN_PLACE:
        b = bytes(n)
        return b, b
    ba = bytearray(n)
    return ba, ffi.from_buffer(ba)


def _done_bytes(buf: Any) -> bytes:
    return buf if type(buf) is bytes else bytes(buf)


# ---- bulk conversions ------------------------------------------------------


def s16_to_f32(data: Any, out: F32Array | None = None) -> F32Array:
    """PCM S16LE bytes -> float32 samples (x / 32768, exact)."""
    buf, nbytes = _as_bytes_like(data, "pcm_s16le data", _ARRAY_DTYPES[Encoding.PCM_S16LE])
    n = _whole_samples(nbytes, 2, "pcm_s16le data")
    res = _out_f32(n, out)
    lib.eng_s16_to_f32(buf, n, ffi.from_buffer("float[]", res))
    return res


def f32_to_s16(samples: Any) -> bytes:
    """float32 samples -> PCM S16LE: x * 32768 rounded to nearest (ties to even), saturated; NaN -> 0."""
    buf, n = _as_f32(samples, "float32 samples")
    out, ptr = _new_bytes(2 * n)
    lib.eng_f32_to_s16(buf, n, ptr)
    return _done_bytes(out)


def ulaw_to_s16(data: Any) -> bytes:
    """G.711 mu-law -> PCM S16LE, bit-exact with ``audioop.ulaw2lin(data, 2)``."""
    if type(data) is bytes and data and _FILL_BYTES_IN_PLACE:  # fast path (20 ms chunks)
        res = bytes(2 * len(data))
        _c_ulaw_to_s16(data, len(data), res)
        return res
    buf, n = _as_bytes_like(data, "mulaw data")
    out, ptr = _new_bytes(2 * n)
    lib.eng_ulaw_to_s16(buf, n, ptr)
    return _done_bytes(out)


def s16_to_ulaw(data: Any) -> bytes:
    """PCM S16LE -> G.711 mu-law, bit-exact with ``audioop.lin2ulaw(data, 2)``."""
    if type(data) is bytes and len(data) >= 4 and not len(data) & 1 and _FILL_BYTES_IN_PLACE:  # fast path
        res = bytes(len(data) >> 1)
        _c_s16_to_ulaw(data, len(data) >> 1, res)
        return res
    buf, nbytes = _as_bytes_like(data, "pcm_s16le data", _ARRAY_DTYPES[Encoding.PCM_S16LE])
    n = _whole_samples(nbytes, 2, "pcm_s16le data")
    out, ptr = _new_bytes(n)
    lib.eng_s16_to_ulaw(buf, n, ptr)
    return _done_bytes(out)


def ulaw_to_f32(data: Any, out: F32Array | None = None) -> F32Array:
    """G.711 mu-law -> float32 samples (the S16 value / 32768, exact)."""
    buf, n = _as_bytes_like(data, "mulaw data")
    res = _out_f32(n, out)
    lib.eng_ulaw_to_f32(buf, n, ffi.from_buffer("float[]", res))
    return res


def f32_to_ulaw(samples: Any) -> bytes:
    """float32 samples -> G.711 mu-law (through the saturated S16 value, as ``f32_to_s16``)."""
    buf, n = _as_f32(samples, "float32 samples")
    out, ptr = _new_bytes(n)
    lib.eng_f32_to_ulaw(buf, n, ptr)
    return _done_bytes(out)


def sanitize_f32(data: Any, out: F32Array | None = None) -> tuple[F32Array, int]:
    """PCM F32LE bytes -> float32 samples with NaN -> 0 and +/-Inf -> +/-1.

    Returns the samples and how many were not finite.
    """
    buf, nbytes = _as_bytes_like(data, "pcm_f32le data", _ARRAY_DTYPES[Encoding.PCM_F32LE])
    n = _whole_samples(nbytes, 4, "pcm_f32le data")
    res = _out_f32(n, out)
    bad = lib.eng_f32_sanitize(buf, n, ffi.from_buffer("float[]", res))
    return res, int(bad)


def rms_s16(data: Any) -> float:
    """Root mean square of PCM S16LE samples in integer units (``audioop.rms`` without truncation)."""
    if type(data) is bytes and not len(data) & 1:  # fast path
        return _c_rms_s16(data, len(data) >> 1)  # type: ignore[no-any-return]
    buf, nbytes = _as_bytes_like(data, "pcm_s16le data", _ARRAY_DTYPES[Encoding.PCM_S16LE])
    return float(lib.eng_rms_s16(buf, _whole_samples(nbytes, 2, "pcm_s16le data")))


def frame_energy(
    data: Any, encoding: str | Encoding, sample_rate: int, channels: int = 1, frame_ms: int = 20
) -> F32Array:
    """One dBFS value per complete frame (a trailing partial frame is ignored).

    0 dBFS is a full-scale square wave (a full-scale sine is about -3 dBFS);
    digital silence is -120. Channels are averaged to mono first.
    """
    enc = check_format(encoding, sample_rate, channels, frame_ms)
    buf, nbytes = _as_bytes_like(data, f"{enc.value} data", _ARRAY_DTYPES[enc])
    frame_len = sample_rate * frame_ms // 1000
    frame_bytes = frame_len * channels * _BYTES_PER_SAMPLE[enc]
    cap = nbytes // frame_bytes
    res = np.empty(cap, dtype=np.float32)
    n = lib.eng_frame_energy(
        buf, nbytes, _NATIVE_CODE[enc], channels, frame_len, ffi.from_buffer("float[]", res), cap
    )
    return res[:n]


# ---- streaming decoder + VAD ---------------------------------------------


class VadConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Tuning of the energy VAD (see docs/audio.md). dB values are dBFS."""

    frame_ms: int = 20
    margin_db: float = 8.0  # speech is at least this far above the noise floor ...
    abs_min_db: float = -65.0  # ... and above this absolute level
    floor_init_db: float = -70.0  # the floor assumed before anything is heard
    onset_ms: int = 40  # this long above the threshold starts speech
    hangover_ms: int = 300  # speech continues this long after the level drops
    memory_ms: int = 2000  # the floor is the quietest frame of this much recent audio
    rise_tau_ms: float = 400.0  # time constant of the floor's (slow) rise
    spread_mult: float = 2.5  # ... and this many times the noise's own spread above the floor
    stationary_ms: int = 1000  # a stretch this long whose level stays within ...
    stationary_db: float = 8.0  # ... this many dB is noise: the floor jumps to it (0 ms: off)


class StreamDecoder:
    """Streaming decode + per-frame energy + VAD over one audio stream.

    ``feed(chunk)`` is the hot path: chunks of any byte length, returns the
    number of VAD frames of speech completed by this chunk. Totals (samples,
    bytes, frames, speech) are exact and available at any time.
    """

    __slots__ = ("_dtypes", "_push", "_st", "channels", "encoding", "frame_ms", "sample_rate", "vad")

    def __init__(
        self,
        encoding: str | Encoding,
        sample_rate: int,
        channels: int = 1,
        vad: VadConfig | None = None,
    ) -> None:
        vad = vad or VadConfig()
        enc = check_format(encoding, sample_rate, channels, vad.frame_ms)
        self.encoding = enc
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_ms = vad.frame_ms
        self.vad = vad
        st = ffi.new("eng_stream_t *")
        rc = lib.eng_stream_init(
            st,
            _NATIVE_CODE[enc],
            sample_rate,
            channels,
            vad.frame_ms,
            vad.margin_db,
            vad.abs_min_db,
            vad.floor_init_db,
            vad.onset_ms,
            vad.hangover_ms,
            vad.memory_ms,
            vad.rise_tau_ms,
            vad.spread_mult,
            vad.stationary_ms,
            vad.stationary_db,
        )
        if rc != 0:
            raise AudioFormatError(f"invalid VAD configuration: {vad!r}")
        self._st = st  # owns the C state (freed with this object)
        self._push = lib.eng_stream_push
        self._dtypes = _ARRAY_DTYPES[enc]

    # -- hot path --
    def feed(self, data: Any) -> int:
        """Consume a chunk; returns the speech frames it completed (x frame_ms = speech ms)."""
        if type(data) is bytes:  # the common case: passed to C as is, no copy
            return self._push(self._st, data, len(data))  # type: ignore[no-any-return]
        buf, nbytes = _as_bytes_like(data, "audio chunk", self._dtypes)
        return self._push(self._st, buf, nbytes)  # type: ignore[no-any-return]

    def feed_decode(self, data: Any) -> tuple[F32Array, int]:
        """Like :meth:`feed`, also returning the decoded float32 samples (interleaved)."""
        buf, nbytes = _as_bytes_like(data, "audio chunk", self._dtypes)
        st = self._st
        out = np.empty((st.rem_len + nbytes) // st.bytes_per_frame * self.channels, dtype=np.float32)
        speech = lib.eng_stream_feed(st, buf, nbytes, ffi.from_buffer("float[]", out), ffi.NULL, ffi.NULL, 0)
        return out, int(speech)

    def feed_frames(self, data: Any) -> tuple[npt.NDArray[np.uint8], F32Array]:
        """Like :meth:`feed`, returning each completed frame's VAD flag (0/1) and dBFS energy."""
        buf, nbytes = _as_bytes_like(data, "audio chunk", self._dtypes)
        st = self._st
        cap = (st.acc_n + (st.rem_len + nbytes) // st.bytes_per_frame) // st.frame_len
        flags = np.zeros(cap, dtype=np.uint8)
        energies = np.zeros(cap, dtype=np.float32)
        lib.eng_stream_feed(
            st,
            buf,
            nbytes,
            ffi.NULL,
            ffi.from_buffer("uint8_t[]", flags),
            ffi.from_buffer("float[]", energies),
            cap,
        )
        return flags, energies

    # -- exact totals --
    @property
    def samples(self) -> int:
        """Complete sample frames (per channel) received: the billing basis."""
        return int(self._st.samples)

    @property
    def bytes_received(self) -> int:
        return int(self._st.bytes)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete sample frame carried to the next chunk."""
        return int(self._st.rem_len)

    @property
    def frames(self) -> int:
        return int(self._st.frames)

    @property
    def speech_frames(self) -> int:
        return int(self._st.speech_frames)

    @property
    def speech_ms(self) -> int:
        return int(self._st.speech_frames) * self.frame_ms

    @property
    def audio_ms(self) -> int:
        """Milliseconds of audio received (floor)."""
        return int(self._st.samples) * 1000 // self.sample_rate

    @property
    def nonfinite(self) -> int:
        """NaN / Inf samples replaced so far (F32 input)."""
        return int(self._st.nonfinite)

    @property
    def in_speech(self) -> bool:
        return bool(self._st.in_speech)

    @property
    def noise_floor_db(self) -> float:
        return float(self._st.floor_db)

    @property
    def last_db(self) -> float:
        return float(self._st.last_db)
