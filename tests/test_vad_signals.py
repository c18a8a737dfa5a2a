"""The energy VAD on signals made here: silence, stationary noises at several
levels, tones, level steps and speech-like modulated signals.

Levels are dBFS as the engine measures them: 10 log10(mean(x^2)) with samples
in [-1, 1) (0 dBFS is a full-scale square wave). Every signal is made from a
fixed seed, so the tests are deterministic.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from engine import audio
from engine.audio import StreamDecoder, VadConfig

Array = npt.NDArray[np.float64]
RATES_FRAMES = [(r, f) for r in (8000, 16000, 48000) for f in (10, 20, 30)]


# ---- signal makers ----------------------------------------------------------


def at_level(x: Array, db: float) -> Array:
    return x / np.sqrt(np.mean(x**2)) * 10 ** (db / 20)


def white(n: int, rng: np.random.Generator) -> Array:
    return rng.standard_normal(n)


def pink(n: int, rate: int, rng: np.random.Generator, f_lo: float = 20.0) -> Array:
    """1/f noise, band-limited to the audio band (nothing below f_lo)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    gain = np.zeros_like(f)
    gain[f >= f_lo] = 1 / np.sqrt(f[f >= f_lo])
    return np.fft.irfft(spec * gain, n)


def hum(n: int, rate: int, f0: float) -> Array:
    """Mains hum: the fundamental and its odd harmonics."""
    t = np.arange(n) / rate
    return (
        np.sin(2 * np.pi * f0 * t)
        + 0.3 * np.sin(2 * np.pi * 3 * f0 * t + 1)
        + 0.1 * np.sin(2 * np.pi * 5 * f0 * t + 2)
    )


def tone(n: int, rate: int, f: float) -> Array:
    return np.sin(2 * np.pi * f * np.arange(n) / rate + 0.3)


def noise(kind: str, n: int, rate: int, rng: np.random.Generator) -> Array:
    if kind == "white":
        return white(n, rng)
    if kind == "pink":
        return pink(n, rate, rng)
    if kind.startswith("hum"):
        return hum(n, rate, float(kind[3:]))
    if kind == "tone1k":
        return tone(n, rate, 1000.0)
    raise ValueError(kind)


def speech_like(n: int, rate: int, rng: np.random.Generator, kind: str) -> tuple[Array, Array]:
    """Bursts with a syllable-rate envelope: 120-300 ms syllables (a half-sine
    envelope), 50-250 ms gaps and now and then a 300-600 ms pause. The carrier
    is either harmonic (a voiced sound: f0 100-160 Hz, gliding, 1/k harmonics
    up to 4 kHz) or white noise (unvoiced). Returns (signal, envelope)."""
    env = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(rate * rng.uniform(0.12, 0.3))
        gap = int(rate * rng.uniform(0.05, 0.25))
        if rng.random() < 0.15:
            gap += int(rate * rng.uniform(0.3, 0.6))
        seg = np.sin(np.pi * np.arange(min(length, n - pos)) / length) ** 0.5
        env[pos : pos + len(seg)] = seg
        pos += length + gap
    if kind == "harmonic":
        t = np.arange(n) / rate
        f0 = 130 + 30 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        top = int(min(4000, rate / 2 - 200) // 160)
        carrier = sum(np.sin(k * phase) / k for k in range(1, top + 1))
    else:
        carrier = rng.standard_normal(n)
    return carrier * env, env


def s16(x: Array) -> bytes:
    return np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2").tobytes()


def run(
    x: Array, rate: int, frame_ms: int, chunk_ms: int = 20, **vad: float
) -> tuple[np.ndarray, np.ndarray]:
    """Feed x as S16 in chunk_ms chunks; return (per-frame flags, energies)."""
    d = StreamDecoder("pcm_s16le", rate, 1, VadConfig(frame_ms=frame_ms, **vad))  # type: ignore[arg-type]
    data = s16(x)
    step = rate * chunk_ms // 1000 * 2
    flags, energies = [], []
    for i in range(0, len(data), step):
        f, e = d.feed_frames(data[i : i + step])
        flags.append(f)
        energies.append(e)
    fl = np.concatenate(flags).astype(bool)
    assert d.speech_frames == fl.sum() and d.frames == len(fl)
    return fl, np.concatenate(energies)


def last_speech_s(flags: np.ndarray, frame_ms: int) -> float:
    idx = np.nonzero(flags)[0]
    return 0.0 if len(idx) == 0 else (idx[-1] + 1) * frame_ms / 1000


# ---- silence ----------------------------------------------------------------


@pytest.mark.parametrize("enc", ["pcm_s16le", "pcm_f32le", "mulaw"])
@pytest.mark.parametrize(("rate", "frame_ms"), RATES_FRAMES)
def test_digital_silence_is_never_speech(enc: str, rate: int, frame_ms: int) -> None:
    silence = {"pcm_s16le": b"\x00\x00", "pcm_f32le": bytes(4), "mulaw": b"\xff"}[enc] * (rate * 5)
    d = StreamDecoder(enc, rate, 1, VadConfig(frame_ms=frame_ms))
    flags, energies = d.feed_frames(silence)
    assert len(flags) == 5000 // frame_ms
    assert d.speech_frames == 0 and not flags.any()
    assert np.all(energies == -120.0)


def test_near_silence_dither_is_not_speech() -> None:
    # +/-1 LSB dither (about -96 dBFS) after digital silence
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(16000), rng.integers(-1, 2, 16000 * 5) / 32768])
    flags, _ = run(x, 16000, 20)
    assert not flags.any()


# ---- stationary noise ---------------------------------------------------------


@pytest.mark.parametrize("level", [-70, -40, -10])
@pytest.mark.parametrize("kind", ["white", "pink", "hum50", "hum60", "tone1k"])
@pytest.mark.parametrize(("rate", "frame_ms"), RATES_FRAMES)
def test_stationary_noise_is_not_speech_after_a_few_seconds(
    kind: str, level: int, rate: int, frame_ms: int
) -> None:
    rng = np.random.default_rng(abs(level) * 7 + rate + frame_ms)
    x = at_level(noise(kind, rate * 6, rate, rng), level)
    flags, energies = run(x, rate, frame_ms)
    per_s = 1000 // frame_ms
    assert np.median(energies) == pytest.approx(level, abs=1.5)
    # the brief's criterion: nothing after 4 s ...
    assert not flags[4 * per_s :].any()
    # ... and in fact the stationarity detector ends any start-up false alarm
    # within stationary_ms (1 s) + hangover (0.3 s) + a block (0.2 s) at most
    # (with the detector off, -40 and -10 dBFS noise is "speech" for ~3.3 s)
    assert last_speech_s(flags, frame_ms) <= 2.5
    if level == -70:  # at or below the initial floor: never speech at all
        assert not flags.any()


def test_the_stationarity_detector_is_what_ends_the_false_alarm_early() -> None:
    rng = np.random.default_rng(1)
    x = at_level(white(16000 * 8, rng), -30)
    on, _ = run(x, 16000, 20)
    off, _ = run(x, 16000, 20, stationary_ms=0)
    assert last_speech_s(on, 20) <= 1.5
    assert 2.5 <= last_speech_s(off, 20) <= 4.0  # minimum statistics alone: memory_ms + the floor's rise


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_level_step_up_is_learned(kind: str, frame_ms: int) -> None:
    # -60 dBFS noise, then a sudden 30 dB louder noise (a fan switched on)
    rate = 16000
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [at_level(noise(kind, rate * 4, rate, rng), -60), at_level(noise(kind, rate * 6, rate, rng), -30)]
    )
    flags, _ = run(x, rate, frame_ms)
    per_s = 1000 // frame_ms
    # after the start-up (-60 dBFS is above the initial floor):
    assert not flags[int(1.5 * per_s) : 4 * per_s].any()
    assert flags[4 * per_s + 4 : int(4.5 * per_s)].all()  # the step itself sounds like an onset ...
    assert not flags[int(5.6 * per_s) :].any()  # ... but 1.6 s later it is known to be noise


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_level_step_down_is_followed_at_once(kind: str) -> None:
    # the floor falls at once, so speech 10 dB above the new, quieter noise is heard
    rate = 16000
    rng = np.random.default_rng(3)
    loud = at_level(noise(kind, rate * 4, rate, rng), -30)
    quiet = at_level(noise(kind, rate * 6, rate, rng), -60)
    sp, env = speech_like(rate * 3, rate, rng, "harmonic")
    sp = sp / np.sqrt(np.mean(sp[env > 0.05] ** 2)) * 10 ** (-50 / 20)
    quiet[rate * 2 : rate * 5] += sp
    flags, _ = run(np.concatenate([loud, quiet]), rate, 20)
    act = frames_active(env, rate, 20)
    seg = flags[(4 + 2) * 50 : (4 + 5) * 50]
    assert seg[act[: len(seg)]].mean() >= 0.8


# ---- tones --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tone1k", "hum50", "hum60"])
@pytest.mark.parametrize("level", [-40, -10])
@pytest.mark.parametrize(("rate", "frame_ms"), [(8000, 10), (16000, 20), (48000, 30)])
def test_constant_loud_tone_after_silence_stops_being_speech(
    kind: str, level: int, rate: int, frame_ms: int
) -> None:
    x = np.concatenate(
        [np.zeros(rate * 2), at_level(noise(kind, rate * 8, rate, np.random.default_rng(0)), level)]
    )
    flags, _ = run(x, rate, frame_ms)
    per_s = 1000 // frame_ms
    assert not flags[: 2 * per_s].any()
    onset = -(-40 // frame_ms)  # onset_ms = 40: the frames above the threshold before speech starts
    assert not flags[2 * per_s : 2 * per_s + onset - 1].any()
    assert flags[2 * per_s + onset - 1 : int(2.5 * per_s)].all()  # the onset is (rightly) speech ...
    # ... but not for long: within stationary_ms + hangover (+ one block)
    assert last_speech_s(flags, frame_ms) - 2.0 <= 1.6
    assert flags.sum() * frame_ms <= 1600


def test_tone_interrupting_speech_like_audio_is_not_speech_for_long() -> None:
    rate = 16000
    rng = np.random.default_rng(4)
    sp, _ = speech_like(rate * 4, rate, rng, "harmonic")
    x = np.concatenate([at_level(sp, -25), at_level(tone(rate * 6, rate, 440.0), -15)])
    x += at_level(white(len(x), rng), -60)
    flags, _ = run(x, rate, 20)
    assert last_speech_s(flags, 20) <= 4.0 + 1.6


# ---- speech-like signals ------------------------------------------------------


def extend(flags: np.ndarray, n: int) -> np.ndarray:
    """flags, each True extended by n frames after it (what a hangover of n frames does)."""
    out = flags.copy()
    for i in np.nonzero(flags)[0]:
        out[i : i + n + 1] = True
    return out


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist(), strict=True))


def frames_active(env: Array, rate: int, frame_ms: int) -> np.ndarray:
    """A frame is active if the burst envelope is on for most of it."""
    flen = rate * frame_ms // 1000
    n = len(env) // flen
    return (env[: n * flen].reshape(n, flen) > 0.05).mean(axis=1) > 0.5


@pytest.mark.parametrize("snr_db", [10, 20])
@pytest.mark.parametrize("carrier", ["harmonic", "noise"])
@pytest.mark.parametrize("noise_kind", ["white", "pink"])
@pytest.mark.parametrize("noise_db", [-70, -50, -30])
@pytest.mark.parametrize(
    ("rate", "frame_ms"), [(8000, 10), (16000, 20), (48000, 30), (16000, 10), (8000, 30)]
)
def test_speech_like_bursts_above_noise_are_speech(
    snr_db: int, carrier: str, noise_kind: str, noise_db: int, rate: int, frame_ms: int
) -> None:
    rng = np.random.default_rng(snr_db * 1000 + abs(noise_db) + rate + frame_ms + len(carrier + noise_kind))
    lead = 3 * rate  # noise alone first, so the floor has been learned
    nz = at_level(noise(noise_kind, lead + 8 * rate, rate, rng), noise_db)
    sp, env = speech_like(8 * rate, rate, rng, carrier)
    # the bursts' level while active (an active speech level) is snr_db above the noise
    sp = sp / np.sqrt(np.mean(sp[env > 0.05] ** 2)) * 10 ** ((noise_db + snr_db) / 20)
    x = nz.copy()
    x[lead:] += sp
    flags, _ = run(x, rate, frame_ms)
    per_s = 1000 // frame_ms
    act = frames_active(env, rate, frame_ms)
    speech = flags[3 * per_s :][: len(act)]
    act = act[: len(speech)]
    # most active frames are speech; what is missed is mostly the onset frames
    # of a burst after a pause longer than the hangover (onset_ms = 40 ms is
    # 1-4 frames of a 120-300 ms burst)
    recall = speech[act].mean()
    assert recall >= (0.82 if snr_db == 10 else 0.88), f"recall {recall:.2f}"
    # and every burst (syllable) is detected (a burst cut short by the end of
    # the signal to less than the onset time cannot be, by design)
    onset = -(-40 // frame_ms)
    for start, stop in runs(act):
        if stop - start > onset:
            assert speech[start:stop].any(), f"burst at {start * frame_ms} ms missed"
    # the speech time covers the bursts and, by design, the hangover after
    # each (which bridges the short gaps between syllables): it lies between
    # 85% of the active time and the active frames extended by the hangover
    active_ms = act.sum() * frame_ms
    extended_ms = extend(act, VadConfig().hangover_ms // frame_ms).sum() * frame_ms
    assert 0.85 * active_ms <= speech.sum() * frame_ms <= extended_ms + 2 * frame_ms
    # the noise-only lead: nothing after the start-up (stationary_ms + hangover)
    assert not flags[int(1.5 * per_s) : 3 * per_s].any()


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_speech_like_bursts_in_digital_silence(frame_ms: int) -> None:
    rate = 16000
    rng = np.random.default_rng(frame_ms)
    sp, env = speech_like(6 * rate, rate, rng, "harmonic")
    x = np.concatenate([np.zeros(rate), at_level(sp, -30), np.zeros(3 * rate)])
    flags, _ = run(x, rate, frame_ms)
    per_s = 1000 // frame_ms
    act = frames_active(env, rate, frame_ms)
    assert flags[per_s : per_s + len(act)][act].mean() >= 0.95
    assert not flags[:per_s].any()
    # after the last burst, speech lasts the hangover (300 ms) and then stops
    last_burst = (np.nonzero(act)[0][-1] + 1) * frame_ms / 1000 + 1.0
    assert last_speech_s(flags, frame_ms) <= last_burst + 0.3 + frame_ms / 1000


def test_hangover_bridges_short_gaps_but_not_long_pauses() -> None:
    rate, frame_ms = 16000, 20
    rng = np.random.default_rng(9)
    burst = at_level(white(rate // 5, rng), -20)  # 200 ms bursts
    short_gap, long_gap = np.zeros(rate // 5), np.zeros(rate)  # 200 ms, 1 s
    x = np.concatenate([np.zeros(rate), burst, short_gap, burst, long_gap, burst, np.zeros(rate)])
    x += at_level(white(len(x), rng), -70)
    flags, _ = run(x, rate, frame_ms)
    t = lambda s: int(s * 1000 / frame_ms)  # noqa: E731
    assert flags[t(1.04) : t(1.6)].all()  # burst, short gap (bridged), burst
    assert not flags[t(1.6) + 15 + 1 : t(2.6)].any()  # the long pause after the 300 ms hangover
    assert flags[t(2.64) : t(2.8)].all()


def test_onset_needs_more_than_a_click() -> None:
    # a single loud 10 ms click in quiet noise is not speech (onset_ms = 40)
    rate = 16000
    rng = np.random.default_rng(6)
    x = at_level(white(rate * 4, rng), -70)
    x[rate * 3 : rate * 3 + 160] += 0.5 * np.sign(rng.standard_normal(160))
    flags, energies = run(x, rate, 10)
    assert energies[300] > -10
    assert not flags.any()
    x[rate * 3 : rate * 3 + 640] += 0.5 * np.sign(rng.standard_normal(640))  # 40 ms: speech
    assert run(x, rate, 10)[0].any()


# ---- the decisions do not depend on the encoding, channels or chunking ---------


def test_vad_decisions_are_the_same_in_every_encoding_and_channel_count() -> None:
    rate = 8000
    rng = np.random.default_rng(8)
    sp, _ = speech_like(rate * 6, rate, rng, "harmonic")
    x = at_level(sp, -30) + at_level(white(rate * 6, rng), -50)
    pcm = s16(x)
    ref = StreamDecoder("pcm_s16le", rate).feed_frames(pcm)
    f32 = audio.s16_to_f32(pcm)  # the same values, exactly
    assert np.array_equal(StreamDecoder("pcm_f32le", rate).feed_frames(f32)[0], ref[0])
    stereo = np.repeat(np.frombuffer(pcm, "<i2"), 2)
    assert np.array_equal(StreamDecoder("pcm_s16le", rate, 2).feed_frames(stereo)[0], ref[0])
    # mu-law is a different (quantised) signal: nearly the same decisions
    mu = StreamDecoder("mulaw", rate).feed_frames(audio.s16_to_ulaw(pcm))[0]
    assert (mu == ref[0]).mean() >= 0.97
    # and chunking does not matter
    d = StreamDecoder("pcm_s16le", rate)
    parts = [d.feed_frames(pcm[i : i + 333])[0] for i in range(0, len(pcm), 333)]
    assert np.array_equal(np.concatenate(parts), ref[0])


def test_speech_ms_and_noise_floor_are_reported() -> None:
    rate = 16000
    rng = np.random.default_rng(10)
    x = np.concatenate([at_level(white(rate * 3, rng), -70), at_level(white(rate * 6 // 10, rng), -10)])
    d = StreamDecoder("pcm_s16le", rate)
    d.feed(s16(x))
    assert d.noise_floor_db == pytest.approx(-71, abs=1.5)
    assert d.in_speech and d.last_db == pytest.approx(-10, abs=0.5)
    assert d.speech_ms == d.speech_frames * 20 == 600 - 20  # all but the first frame (onset 40 ms)
    assert d.audio_ms == 3600
