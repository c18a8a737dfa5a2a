"""StreamDecoder: any chunking of a stream gives exactly the one-shot result;
remainders, NaN/Inf, empty input, wrong types and invalid formats."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import audio
from engine.audio import AudioFormatError, StreamDecoder, VadConfig

ENCODINGS = ("pcm_s16le", "pcm_f32le", "mulaw")
BPS = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1}


def totals(d: StreamDecoder) -> dict[str, Any]:
    return {
        "samples": d.samples,
        "bytes": d.bytes_received,
        "frames": d.frames,
        "speech_frames": d.speech_frames,
        "speech_ms": d.speech_ms,
        "audio_ms": d.audio_ms,
        "pending_bytes": d.pending_bytes,
        "nonfinite": d.nonfinite,
        "in_speech": d.in_speech,
        "noise_floor_db": d.noise_floor_db,
        "last_db": d.last_db,
    }


def decode_whole(data: bytes, enc: str) -> np.ndarray:
    """The bulk-function reference decoding of the whole samples in data."""
    n = len(data) // BPS[enc] * BPS[enc]
    if enc == "pcm_s16le":
        return audio.s16_to_f32(data[:n])
    if enc == "pcm_f32le":
        return audio.sanitize_f32(data[:n])[0]
    return audio.ulaw_to_f32(data)


@st.composite
def streams(draw: st.DrawFn) -> tuple[str, int, int, int, bytes, list[int]]:
    """(encoding, sample_rate, channels, frame_ms, data, cut points)."""
    enc = draw(st.sampled_from(ENCODINGS))
    rate = draw(st.sampled_from([8000, 16000]))
    channels = draw(st.integers(1, 2))
    frame_ms = draw(st.sampled_from([10, 20, 30]))
    frame_bytes = rate * frame_ms // 1000 * channels * BPS[enc]
    kind = draw(st.sampled_from(["random", "signal"]))
    if kind == "random":
        # arbitrary bytes: loud noise; for F32 also NaN, Inf and huge values
        data = draw(st.binary(max_size=frame_bytes * 6 + 7))
    else:
        # a signal whose level changes, so that the VAD decisions change too
        seed = draw(st.integers(0, 2**32 - 1))
        nframes = draw(st.integers(1, 60))
        rng = np.random.default_rng(seed)
        n = nframes * frame_bytes // BPS[enc] // channels
        env = np.repeat(rng.choice([0.0, 1e-3, 0.3], size=nframes), n // nframes + 1)[:n]
        x = (rng.normal(0, 1, (n, channels)) * env[:, None]).clip(-1, 1).astype(np.float32)
        if enc == "pcm_f32le":
            data = x.astype("<f4").tobytes()
        else:
            s16 = audio.f32_to_s16(x.ravel())
            data = s16 if enc == "pcm_s16le" else audio.s16_to_ulaw(s16)
        data += draw(st.binary(max_size=7))  # a ragged tail
    style = draw(st.sampled_from(["cuts", "fixed"]))
    if style == "cuts":
        cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=25))))
    else:
        size = draw(st.integers(1, 9))  # 1-byte pieces, 3 bytes of S16, half an F32 sample ...
        cuts = list(range(size, len(data), size))
    return enc, rate, channels, frame_ms, data, cuts


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_any_chunking_equals_one_shot(case: tuple[str, int, int, int, bytes, list[int]]) -> None:
    enc, rate, channels, frame_ms, data, cuts = case
    vad = VadConfig(frame_ms=frame_ms)
    parts = pieces(data, cuts)

    whole = StreamDecoder(enc, rate, channels, vad)
    ref_samples, ref_speech = whole.feed_decode(data)
    flags_ref = StreamDecoder(enc, rate, channels, vad)
    ref_flags, ref_energies = flags_ref.feed_frames(data)

    # decoded samples, chunk by chunk
    d = StreamDecoder(enc, rate, channels, vad)
    outs, speech = [], 0
    for p in parts:
        o, s = d.feed_decode(p)
        outs.append(o)
        speech += s
    got = np.concatenate(outs) if outs else np.empty(0, np.float32)
    assert got.tobytes() == ref_samples.tobytes()  # bit for bit (NaN-free by design)
    assert speech == ref_speech == whole.speech_frames
    assert totals(d) == totals(whole)

    # per-frame decisions and energies, chunk by chunk
    f = StreamDecoder(enc, rate, channels, vad)
    fl, en = [], []
    for p in parts:
        a, b = f.feed_frames(p)
        fl.append(a)
        en.append(b)
    assert np.concatenate(fl).tolist() == ref_flags.tolist()
    assert np.concatenate(en).tobytes() == ref_energies.tobytes()
    assert totals(f) == totals(flags_ref) == totals(whole)

    # plain feed() agrees too
    g = StreamDecoder(enc, rate, channels, vad)
    assert sum(g.feed(p) for p in parts) == ref_speech
    assert totals(g) == totals(whole)

    # and everything agrees with the bulk functions
    bpf = BPS[enc] * channels
    assert whole.samples == len(data) // bpf
    assert whole.bytes_received == len(data)
    assert whole.pending_bytes == len(data) % bpf
    assert whole.frames == len(ref_flags) == whole.samples // (rate * frame_ms // 1000)
    assert int(ref_flags.sum()) == whole.speech_frames
    assert whole.audio_ms == whole.samples * 1000 // rate
    assert ref_samples.tobytes() == decode_whole(data[: whole.samples * bpf], enc).tobytes()
    np.testing.assert_array_equal(ref_energies, audio.frame_energy(data, enc, rate, channels, frame_ms))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 7), st.sampled_from(ENCODINGS))
def test_mixing_feed_methods_keeps_totals(data: bytes, size: int, enc: str) -> None:
    ref = StreamDecoder(enc, 8000)
    ref.feed(data)
    d = StreamDecoder(enc, 8000)
    for i, start in enumerate(range(0, len(data), size)):
        chunk = data[start : start + size]
        [d.feed, d.feed_decode, d.feed_frames][i % 3](chunk)
    assert totals(d) == totals(ref)


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("channels", [1, 2])
def test_remainder_is_carried_byte_by_byte(enc: str, channels: int) -> None:
    bpf = BPS[enc] * channels
    data = bytes(np.random.default_rng(0).integers(0, 256, bpf * 500 + bpf - 1, dtype=np.uint8))
    d = StreamDecoder(enc, 16000, channels)
    n_out = 0
    for i in range(len(data)):
        out, _ = d.feed_decode(data[i : i + 1])
        n_out += len(out)
        assert d.pending_bytes == (i + 1) % bpf
        assert d.samples == (i + 1) // bpf
        assert d.bytes_received == i + 1
    assert n_out == d.samples * channels == 500 * channels
    assert d.pending_bytes == bpf - 1


def test_three_bytes_of_s16_and_half_an_f32_sample() -> None:
    d = StreamDecoder("pcm_s16le", 8000)
    out, _ = d.feed_decode(b"\x00\x40\x00")
    assert out.tolist() == [0.5] and d.pending_bytes == 1 and d.samples == 1
    out, _ = d.feed_decode(b"\xc0")
    assert out.tolist() == [-0.5] and d.pending_bytes == 0 and d.samples == 2

    f = StreamDecoder("pcm_f32le", 8000)
    x = np.array([0.25, -0.75], "<f4").tobytes()
    assert len(f.feed_decode(x[:2])[0]) == 0 and f.pending_bytes == 2
    out, _ = f.feed_decode(x[2:6])
    assert out.tolist() == [0.25] and f.pending_bytes == 2
    out, _ = f.feed_decode(x[6:])
    assert out.tolist() == [-0.75] and f.samples == 2


def test_partial_frames_are_carried_between_chunks() -> None:
    d = StreamDecoder("pcm_s16le", 8000, vad=VadConfig(frame_ms=10))  # 80-sample frames
    tone = audio.f32_to_s16(np.full(200, 0.5, np.float32))
    flags, energies = d.feed_frames(tone[:150])  # 75 samples: no frame yet
    assert len(flags) == 0 and d.frames == 0
    flags, energies = d.feed_frames(tone[150:])  # 125 more: 2 frames complete, 40 samples left
    assert len(flags) == 2 and d.frames == 2 and d.samples == 200
    np.testing.assert_allclose(energies, 20 * np.log10(0.5), atol=1e-4)


# ---- NaN / Inf ----------------------------------------------------------


def test_f32_stream_replaces_and_counts_nonfinite() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 0.5, -2.0, 1e30, -np.nan, 0.0], "<f4")
    d = StreamDecoder("pcm_f32le", 8000)
    out, _ = d.feed_decode(x.tobytes())
    expected = np.array([0.0, 1.0, -1.0, 0.5, -2.0, 1e30, 0.0, 0.0], np.float32)  # finite values pass through
    assert out.tobytes() == expected.tobytes()
    assert d.nonfinite == 4
    # split inside the NaN sample: still counted once
    e = StreamDecoder("pcm_f32le", 8000)
    raw = x.tobytes()
    e.feed(raw[:3])
    e.feed(raw[3:])
    assert e.nonfinite == 4 and e.samples == 8


def test_s16_and_mulaw_streams_never_count_nonfinite() -> None:
    for enc in ("pcm_s16le", "mulaw"):
        d = StreamDecoder(enc, 8000)
        d.feed(b"\xff" * 4000)
        assert d.nonfinite == 0


def test_nonfinite_f32_energy_is_finite() -> None:
    x = np.full(160, np.nan, np.float32)
    x[::2] = np.inf
    e = audio.frame_energy(x, "pcm_f32le", 8000, 1, 20)
    assert np.all(np.isfinite(e))
    assert e[0] == pytest.approx(10 * np.log10(0.5), abs=1e-4)  # Inf -> 1.0, NaN -> 0


# ---- empty input ----------------------------------------------------------


def test_empty_input_everywhere() -> None:
    assert audio.s16_to_f32(b"").shape == (0,)
    assert audio.f32_to_s16(b"") == b""
    assert audio.f32_to_s16(np.empty(0, np.float32)) == b""
    assert audio.ulaw_to_s16(b"") == b""
    assert audio.s16_to_ulaw(b"") == b""
    assert audio.ulaw_to_f32(b"").shape == (0,)
    assert audio.f32_to_ulaw(np.empty(0, np.float32)) == b""
    out, bad = audio.sanitize_f32(b"")
    assert out.shape == (0,) and bad == 0
    assert audio.rms_s16(b"") == 0.0
    for enc in ENCODINGS:
        assert audio.frame_energy(b"", enc, 16000).shape == (0,)
        d = StreamDecoder(enc, 16000, 2)
        assert d.feed(b"") == 0
        out, s = d.feed_decode(bytearray())
        assert out.shape == (0,) and s == 0
        flags, energies = d.feed_frames(memoryview(b""))
        assert flags.shape == energies.shape == (0,)
        assert totals(d) == totals(StreamDecoder(enc, 16000, 2))


def test_one_byte_inputs() -> None:
    assert audio.ulaw_to_s16(b"\xff") == b"\x00\x00"
    assert audio.s16_to_ulaw(b"\x00\x00") == b"\xff"
    assert audio.ulaw_to_f32(b"\x80").tolist() == [32124 / 32768]


# ---- accepted input types ---------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [bytes, bytearray, memoryview, lambda b: np.frombuffer(b, np.uint8), lambda b: np.frombuffer(b, "<i2")],
)
def test_s16_functions_accept_bytes_like(wrap: Any) -> None:
    raw = np.arange(-500, 500, 3, dtype="<i2").tobytes()
    data = wrap(raw)
    assert audio.s16_to_ulaw(data) == audio.s16_to_ulaw(raw)
    np.testing.assert_array_equal(audio.s16_to_f32(data), audio.s16_to_f32(raw))
    assert audio.rms_s16(data) == audio.rms_s16(raw)
    d = StreamDecoder("pcm_s16le", 8000)
    d.feed(data)
    assert d.samples == len(raw) // 2


def test_f32_functions_accept_arrays_and_unaligned_bytes() -> None:
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    raw = b"\x00" + x.astype("<f4").tobytes()
    unaligned = memoryview(raw)[1:]
    assert audio.f32_to_s16(unaligned) == audio.f32_to_s16(x)
    assert audio.f32_to_s16(x[::2]) == audio.f32_to_s16(x[::2].copy())  # strided arrays are copied
    np.testing.assert_array_equal(audio.sanitize_f32(unaligned)[0], x)


# ---- wrong types ----------------------------------------------------------

WRONG = [
    ("str", "abcd"),
    ("list", [0, 1, 2, 3]),
    ("NoneType", None),
    ("int", 1234),
    ("float", 1.5),
]
BYTES_FUNCS = [audio.s16_to_f32, audio.ulaw_to_s16, audio.s16_to_ulaw, audio.ulaw_to_f32, audio.rms_s16]
FLOAT_FUNCS = [audio.f32_to_s16, audio.f32_to_ulaw]


@pytest.mark.parametrize(("tname", "value"), WRONG)
@pytest.mark.parametrize("func", [*BYTES_FUNCS, *FLOAT_FUNCS, audio.sanitize_f32])
def test_wrong_types_raise_clear_type_errors(func: Any, tname: str, value: Any) -> None:
    with pytest.raises(TypeError, match=f"bytes-like.*not {tname}"):
        func(value)


@pytest.mark.parametrize(("tname", "value"), WRONG)
def test_stream_and_energy_reject_wrong_types(tname: str, value: Any) -> None:
    d = StreamDecoder("pcm_s16le", 16000)
    for method in (d.feed, d.feed_decode, d.feed_frames):
        with pytest.raises(TypeError, match=f"bytes-like.*not {tname}"):
            method(value)
    with pytest.raises(TypeError, match=f"not {tname}"):
        audio.frame_energy(value, "pcm_s16le", 16000)
    assert totals(d) == totals(StreamDecoder("pcm_s16le", 16000))  # nothing was consumed


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, np.complex64])
def test_arrays_of_other_dtypes_are_rejected(dtype: Any) -> None:
    arr = np.zeros(64, dtype)
    for func in [*BYTES_FUNCS, *FLOAT_FUNCS, audio.sanitize_f32]:
        with pytest.raises(TypeError, match="dtype"):
            func(arr)
    for enc in ENCODINGS:
        with pytest.raises(TypeError, match="dtype"):
            StreamDecoder(enc, 8000).feed(arr)
        with pytest.raises(TypeError, match="dtype"):
            audio.frame_energy(arr, enc, 8000)


def test_float32_arrays_are_not_s16_or_mulaw_data() -> None:
    x = np.zeros(16, np.float32)
    with pytest.raises(TypeError, match="float32"):
        audio.s16_to_ulaw(x)
    with pytest.raises(TypeError, match="float32"):
        StreamDecoder("mulaw", 8000).feed(x)
    assert StreamDecoder("pcm_f32le", 8000).feed(x) == 0


def test_non_contiguous_buffers_are_rejected() -> None:
    view = memoryview(np.zeros((8, 8), np.uint8)[:, ::2])
    with pytest.raises(TypeError, match="contiguous"):
        audio.ulaw_to_s16(view)


# ---- lengths that are not whole samples -------------------------------------


@pytest.mark.parametrize(
    ("func", "nbytes", "size"),
    [
        (audio.s16_to_f32, 3, 2),
        (audio.s16_to_ulaw, 1, 2),
        (audio.rms_s16, 5, 2),
        (audio.sanitize_f32, 6, 4),
        (audio.f32_to_s16, 7, 4),
        (audio.f32_to_ulaw, 2, 4),
    ],
)
def test_bulk_functions_reject_partial_samples(func: Any, nbytes: int, size: int) -> None:
    with pytest.raises(AudioFormatError, match=f"whole number of {size}-byte samples; got {nbytes} bytes"):
        func(bytes(nbytes))


def test_audio_format_error_is_a_value_error() -> None:
    assert issubclass(AudioFormatError, ValueError)


# ---- invalid formats ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoding": "pcm_s24le"}, "unknown audio encoding 'pcm_s24le'"),
        ({"encoding": "alaw"}, "expected one of: pcm_s16le, pcm_f32le, mulaw"),
        ({"sample_rate": 7999}, "sample_rate must be an integer from 8000 to 48000 Hz; got 7999"),
        ({"sample_rate": 48001}, "got 48001"),
        ({"sample_rate": 16000.0}, "sample_rate must be an integer"),
        ({"sample_rate": True}, "sample_rate must be an integer"),
        ({"channels": 0}, "channels must be an integer from 1 to 8; got 0"),
        ({"channels": 9}, "got 9"),
        ({"frame_ms": 15}, r"frame_ms must be one of \(10, 20, 30\); got 15"),
        ({"sample_rate": 11025}, "not a whole number of samples"),
    ],
)
def test_invalid_formats_raise_audio_format_error(kwargs: dict[str, Any], match: str) -> None:
    fmt: dict[str, Any] = {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1, "frame_ms": 20}
    fmt.update(kwargs)
    with pytest.raises(AudioFormatError, match=match):
        StreamDecoder(
            fmt["encoding"], fmt["sample_rate"], fmt["channels"], VadConfig(frame_ms=fmt["frame_ms"])
        )
    with pytest.raises(AudioFormatError, match=match):
        audio.frame_energy(b"", fmt["encoding"], fmt["sample_rate"], fmt["channels"], fmt["frame_ms"])


@pytest.mark.parametrize(
    "bad",
    [
        {"margin_db": -1.0},
        {"margin_db": float("nan")},
        {"hangover_ms": -10},
        {"onset_ms": -1},
        {"memory_ms": 5},
        {"rise_tau_ms": 0.0},
        {"spread_mult": -1.0},
        {"abs_min_db": float("nan")},
        {"floor_init_db": float("inf")},
        {"stationary_ms": 20},
        {"stationary_db": -1.0},
    ],
)
def test_invalid_vad_config_raises(bad: dict[str, Any]) -> None:
    with pytest.raises(AudioFormatError, match="invalid VAD configuration"):
        StreamDecoder("pcm_s16le", 16000, vad=VadConfig(**bad))


@pytest.mark.parametrize("enc", [*ENCODINGS, audio.Encoding.MULAW])
def test_format_helpers(enc: str) -> None:
    assert audio.bytes_per_sample(enc) == BPS[str(audio.Encoding(enc).value)]
    assert audio.check_format(enc, 8000, 1, 10) == audio.Encoding(enc)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_f32_energies_are_bit_identical_under_rechunking(channels: int) -> None:
    # float32 input: the sums of squares are not exact, so the order of
    # summation must not depend on where the chunks were cut
    rng = np.random.default_rng(channels)
    n = 16000 * 4 * channels
    x = (rng.standard_normal(n) * 10 ** rng.uniform(-4, 0, n)).astype("<f4")
    data = x.tobytes()
    ref_flags, ref_energies = StreamDecoder("pcm_f32le", 16000, channels).feed_frames(data)
    d = StreamDecoder("pcm_f32le", 16000, channels)
    sizes = rng.integers(1, 3000, 2000)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    bounds = [*bounds[bounds < len(data)].tolist(), len(data)]
    parts = [d.feed_frames(data[a:b]) for a, b in itertools.pairwise(bounds)]
    assert np.concatenate([p[1] for p in parts]).tobytes() == ref_energies.tobytes()
    assert np.concatenate([p[0] for p in parts]).tolist() == ref_flags.tolist()
