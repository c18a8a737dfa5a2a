"""Known-answer tests of the native audio kernels (engine.audio bulk functions).

G.711 and RMS against the reference implementation, ``audioop`` (the stdlib on
Python <= 3.12, the ``audioop-lts`` package on 3.13+), over every input value;
the float conversions and the energies against numpy.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import audio

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_S16 = np.arange(-32768, 32768, dtype="<i2")
ALL_S16_BYTES = ALL_S16.tobytes()
ALL_CODES = bytes(range(256))
SPECIAL_F32 = np.array(
    [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        1.5,
        -1.5,
        1e30,
        -1e30,
        3.4e38,
        -3.4e38,
        np.nan,
        -np.nan,
        np.inf,
        -np.inf,
        1e-45,
        -1e-45,
        1e-38,
        0.5 / 32768,
        1.5 / 32768,
        2.5 / 32768,
        -0.5 / 32768,
        -1.5 / 32768,
        -2.5 / 32768,
        32767.5 / 32768,
        -32768.5 / 32768,
        32766.5 / 32768,
        0.99999,
        -0.99999,
    ],
    dtype=np.float32,
)


def ref_f32_to_s16(x: np.ndarray) -> np.ndarray:
    """The specified semantics: clip(rint(x * 32768)) with NaN -> 0 (in float64, exact)."""
    v = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf) * 32768.0
    return np.clip(np.rint(v), -32768, 32767).astype("<i2")


def ref_energy_db(mono: np.ndarray, frame_len: int) -> np.ndarray:
    n = len(mono) // frame_len
    ms = np.mean(mono[: n * frame_len].reshape(n, frame_len).astype(np.float64) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        db = 10 * np.log10(ms)
    return np.where(ms > 1e-12, db, -120.0)


# ---- G.711 mu-law: bit-exact with audioop over every value ------------------


def test_lin2ulaw_all_65536_values_bit_exact() -> None:
    assert audio.s16_to_ulaw(ALL_S16_BYTES) == audioop.lin2ulaw(ALL_S16_BYTES, 2)


def test_ulaw2lin_all_256_codes_bit_exact() -> None:
    assert audio.ulaw_to_s16(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


@pytest.mark.parametrize("offset", range(0, 40, 3))
def test_mulaw_bit_exact_at_any_alignment_and_length(offset: int) -> None:
    # the vector loops have head/tail code paths: every alignment and length
    buf = bytearray(ALL_S16_BYTES[:4000])
    data = memoryview(buf)[offset : offset + 2 * (999 - offset)]
    assert audio.s16_to_ulaw(data) == audioop.lin2ulaw(bytes(data), 2)
    codes = memoryview(bytearray(ALL_CODES * 3))[offset : offset + 700 - offset]
    assert audio.ulaw_to_s16(codes) == audioop.ulaw2lin(bytes(codes), 2)


def test_mulaw_to_f32_is_the_s16_value_over_32768() -> None:
    f = audio.ulaw_to_f32(ALL_CODES)
    s16 = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), "<i2")
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, s16.astype(np.float32) / np.float32(32768))
    np.testing.assert_array_equal(f, audio.s16_to_f32(audio.ulaw_to_s16(ALL_CODES)))


def test_f32_to_mulaw_goes_through_the_saturated_s16_value() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [SPECIAL_F32, rng.normal(0, 0.3, 20000).astype(np.float32), ALL_S16 / np.float32(32768)]
    )
    x = x.astype(np.float32)
    assert audio.f32_to_ulaw(x) == audioop.lin2ulaw(ref_f32_to_s16(x).tobytes(), 2)


def test_mulaw_round_trip_identity_except_the_two_zero_codes() -> None:
    # code 0xFF is +0 and 0x7F is -0: both decode to 0, which encodes as 0xFF;
    # every other code survives decode -> encode (S16 and float paths alike)
    back = audio.s16_to_ulaw(audio.ulaw_to_s16(ALL_CODES))
    changed = [c for c in range(256) if back[c] != c]
    assert changed == [0x7F]
    assert back[0x7F] == 0xFF
    assert audio.f32_to_ulaw(audio.ulaw_to_f32(ALL_CODES)) == back


def test_lin2ulaw_saturates_like_audioop_at_the_extremes() -> None:
    extremes = np.array(
        [32767, 32635, 32636, 32124, -32768, -32636, -32635, -32124, 0, -1, 1, 3, -4, -5], "<i2"
    )
    assert audio.s16_to_ulaw(extremes.tobytes()) == audioop.lin2ulaw(extremes.tobytes(), 2)


# ---- RMS ----------------------------------------------------------------


def test_rms_all_values_matches_audioop() -> None:
    assert int(audio.rms_s16(ALL_S16_BYTES)) == audioop.rms(ALL_S16_BYTES, 2)


@pytest.mark.parametrize("value", [-32768, 32767, 0, 1, -1, 12345])
def test_rms_constant_buffers(value: int) -> None:
    data = np.full(1001, value, "<i2").tobytes()
    assert int(audio.rms_s16(data)) == audioop.rms(data, 2) == abs(value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4000).map(lambda b: b[: len(b) // 2 * 2]))
def test_rms_random_buffers_match_audioop(data: bytes) -> None:
    assert int(audio.rms_s16(data)) == audioop.rms(data, 2)
    ref = np.sqrt(np.mean(np.frombuffer(data, "<i2").astype(np.float64) ** 2)) if data else 0.0
    assert audio.rms_s16(data) == pytest.approx(ref, rel=1e-12, abs=0)


def test_rms_accepts_int16_arrays() -> None:
    assert int(audio.rms_s16(ALL_S16)) == audioop.rms(ALL_S16_BYTES, 2)


# ---- float conversions against numpy --------------------------------------


def test_s16_to_f32_is_exactly_x_over_32768_for_every_value() -> None:
    f = audio.s16_to_f32(ALL_S16_BYTES)
    assert f.dtype == np.float32 and f.shape == (65536,)
    np.testing.assert_array_equal(f, ALL_S16.astype(np.float32) / np.float32(32768))
    assert f[0] == -1.0 and f[-1] == 32767 / 32768


def test_s16_to_f32_round_trip_is_the_identity_for_every_value() -> None:
    assert audio.f32_to_s16(audio.s16_to_f32(ALL_S16_BYTES)) == ALL_S16_BYTES


def test_f32_to_s16_special_values() -> None:
    got = np.frombuffer(audio.f32_to_s16(SPECIAL_F32), "<i2")
    np.testing.assert_array_equal(got, ref_f32_to_s16(SPECIAL_F32))
    by_value = dict(zip(SPECIAL_F32.tolist(), got.tolist(), strict=True))
    assert by_value[1.0] == 32767 and by_value[-1.0] == -32768  # saturation
    assert by_value[float("inf")] == 32767 and by_value[float("-inf")] == -32768
    assert got[12] == 0 and got[13] == 0  # NaN, -NaN
    # round half to even, like numpy.rint
    assert [by_value[v / 32768] for v in (0.5, 1.5, 2.5, -0.5, -1.5, -2.5)] == [0, 2, 2, 0, -2, -2]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.floats(width=32, allow_nan=True, allow_infinity=True)
        | st.floats(min_value=-1.25, max_value=1.25, width=32),
        max_size=300,
    )
)
def test_f32_to_s16_matches_numpy_reference(values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    got = np.frombuffer(audio.f32_to_s16(x), "<i2")
    np.testing.assert_array_equal(got, ref_f32_to_s16(x))
    # the same F32LE data given as bytes
    assert audio.f32_to_s16(x.astype("<f4").tobytes()) == got.tobytes()


def test_f32_to_s16_large_random_buffer() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 0.6, 100_003).astype(np.float32)
    x[::997] = np.nan
    x[::1999] = np.inf
    np.testing.assert_array_equal(np.frombuffer(audio.f32_to_s16(x), "<i2"), ref_f32_to_s16(x))


def test_f32_to_s16_then_back_is_within_half_a_step() -> None:
    x = np.random.default_rng(3).uniform(-1, 32767 / 32768, 50_000).astype(np.float32)
    back = audio.s16_to_f32(audio.f32_to_s16(x))
    assert np.max(np.abs(back - x)) <= 0.5 / 32768


def test_sanitize_f32_nan_inf_and_count() -> None:
    x = SPECIAL_F32.astype("<f4")
    out, bad = audio.sanitize_f32(x.tobytes())
    assert bad == 4
    expected = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    np.testing.assert_array_equal(out, expected)
    assert np.all(np.isfinite(out))
    # finite values pass through bit for bit (including -0.0 and denormals)
    finite = np.isfinite(x)
    assert out[finite].tobytes() == x[finite].tobytes()


def test_sanitize_f32_large_count() -> None:
    x = np.zeros(100_000, np.float32)
    x[::3] = np.nan
    x[1::7] = -np.inf
    out, bad = audio.sanitize_f32(x)
    assert bad == int(np.count_nonzero(~np.isfinite(x)))
    assert np.all(np.isfinite(out))


def test_out_parameter_is_filled_in_place() -> None:
    buf = np.full(10, 7.0, np.float32)
    res = audio.s16_to_f32(np.array([0, 16384, -32768], "<i2"), out=buf)
    np.testing.assert_array_equal(res, [0.0, 0.5, -1.0])
    assert res.base is buf or res is buf
    np.testing.assert_array_equal(buf[:4], [0.0, 0.5, -1.0, 7.0])
    with pytest.raises(ValueError, match="needed"):
        audio.ulaw_to_f32(b"\x00" * 11, out=buf)
    with pytest.raises(TypeError, match="float32"):
        audio.s16_to_f32(b"\x00\x00", out=np.zeros(4, np.float64))


def test_byte_results_are_fresh_immutable_bytes() -> None:
    a = audio.ulaw_to_s16(b"\x00\x01")
    b = audio.ulaw_to_s16(b"\x00\x01")
    assert type(a) is bytes and a == b and a is not b
    assert type(audio.s16_to_ulaw(b"\x00\x00")) is bytes and audio.s16_to_ulaw(b"\x00\x00") == b"\xff"
    assert audio.f32_to_ulaw(np.zeros(1, np.float32)) == b"\xff"
    # results do not alias each other or the constants of the module
    assert bytes(2) == b"\x00\x00" and bytes(1) == b"\x00"


# ---- per-frame energy (dBFS) -----------------------------------------------


@pytest.mark.parametrize(("rate", "frame_ms"), [(8000, 10), (16000, 20), (48000, 30), (22050, 20)])
def test_frame_energy_matches_numpy(rate: int, frame_ms: int) -> None:
    rng = np.random.default_rng(rate + frame_ms)
    x = (rng.normal(0, 1, rate) * np.geomspace(1e-5, 1.0, rate) * 20000).clip(-32768, 32767).astype("<i2")
    x[: rate // 10] = 0  # digital silence -> -120
    frame_len = rate * frame_ms // 1000
    got = audio.frame_energy(x.tobytes(), "pcm_s16le", rate, 1, frame_ms)
    ref = ref_energy_db(x / 32768.0, frame_len)
    assert got.dtype == np.float32 and len(got) == len(ref) == rate // frame_len
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert got[0] == -120.0


def test_frame_energy_reference_levels() -> None:
    rate, n = 16000, 16000
    t = np.arange(n) / rate
    square = np.where(np.sin(2 * np.pi * 100 * t) >= 0, 1.0, -1.0).astype(np.float32)
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    assert np.allclose(audio.frame_energy(square, "pcm_f32le", rate), 0.0, atol=1e-4)
    # a sine of amplitude A: 20 log10(A) - 3.01 dB
    assert np.allclose(audio.frame_energy(sine, "pcm_f32le", rate), 20 * np.log10(0.5) - 3.0103, atol=1e-3)
    assert np.all(audio.frame_energy(np.zeros(n, np.float32), "pcm_f32le", rate) == -120.0)


def test_frame_energy_of_stereo_is_the_energy_of_the_mono_average() -> None:
    rng = np.random.default_rng(5)
    rate, frame_ms = 16000, 20
    left = rng.integers(-32768, 32768, 8000).astype("<i2")
    right = (rng.normal(0, 3000, 8000)).clip(-32768, 32767).astype("<i2")
    stereo = np.empty(16000, "<i2")
    stereo[0::2], stereo[1::2] = left, right
    got = audio.frame_energy(stereo.tobytes(), "pcm_s16le", rate, 2, frame_ms)
    mono_avg = (left.astype(np.float64) + right) / 2 / 32768  # exact in float32 too
    np.testing.assert_allclose(got, ref_energy_db(mono_avg, 320), atol=1e-4)
    # bit for bit the energy of the averaged signal given as mono float32
    np.testing.assert_array_equal(got, audio.frame_energy(mono_avg.astype(np.float32), "pcm_f32le", rate, 1))
    # a signal duplicated on both channels has exactly the mono energy
    dup = np.repeat(left, 2)
    np.testing.assert_array_equal(
        audio.frame_energy(dup, "pcm_s16le", rate, 2), audio.frame_energy(left, "pcm_s16le", rate, 1)
    )
    # opposite channels cancel
    anti = np.empty(16000, "<i2")
    anti[0::2], anti[1::2] = left.clip(-32767, 32767), -left.clip(-32767, 32767)
    assert np.all(audio.frame_energy(anti, "pcm_s16le", rate, 2) == -120.0)


@pytest.mark.parametrize("channels", [3, 5, 8])
def test_frame_energy_many_channels(channels: int) -> None:
    rng = np.random.default_rng(channels)
    x = rng.uniform(-1, 1, (1600, channels)).astype(np.float32)
    got = audio.frame_energy(x, "pcm_f32le", 8000, channels, 10)
    np.testing.assert_allclose(got, ref_energy_db(x.astype(np.float64).mean(axis=1), 80), atol=1e-4)


def test_frame_energy_same_for_all_encodings_of_the_same_values() -> None:
    codes = bytes(np.random.default_rng(2).integers(0, 256, 4800, dtype=np.uint8))
    s16 = audio.ulaw_to_s16(codes)
    f32 = audio.ulaw_to_f32(codes)
    e_mu = audio.frame_energy(codes, "mulaw", 8000, 1, 30)
    np.testing.assert_array_equal(e_mu, audio.frame_energy(s16, "pcm_s16le", 8000, 1, 30))
    np.testing.assert_array_equal(e_mu, audio.frame_energy(f32, "pcm_f32le", 8000, 1, 30))


def test_frame_energy_ignores_a_trailing_partial_frame() -> None:
    data = np.full(160 * 3 + 159, 1000, "<i2").tobytes() + b"\x01"
    assert len(audio.frame_energy(data, "pcm_s16le", 16000, 1, 10)) == 3
