"""The energy VAD on real (synthetic-voice) speech: tests/data/speech_16k.wav,
made with espeak-ng (see tests/data/README.md), mixed with white and pink
noise at 20 and 10 dB SNR and padded with digital silence.

Labels: a frame is speech if its energy in the clean file is above -45 dBFS
(README.md explains why that separates speech from the pauses). The VAD is
expected to follow the labels extended by its hangover (300 ms after each
speech frame: by design it keeps speech on through short pauses), except for
the onset (40 ms above the threshold before speech starts).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from engine import audio
from engine.audio import StreamDecoder, VadConfig

WAV = Path(__file__).parent / "data" / "speech_16k.wav"
RATE = 16000
LABEL_DB = -45.0
LEAD_S, TAIL_S = 2, 2  # padding before and after the speech
WARMUP_S = 1.5  # a noisy stream's start-up: stationary_ms (1 s) + hangover (0.3 s) + a block (0.2 s)
HANG = VadConfig().hangover_ms


def read_wav() -> bytes:
    with wave.open(str(WAV), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getcomptype()) == (1, 2, RATE, "NONE")
        return w.readframes(w.getnframes())


CLEAN = read_wav()


def extend(flags: np.ndarray, n: int) -> np.ndarray:
    out = flags.copy()
    for i in np.nonzero(flags)[0]:
        out[i : i + n + 1] = True
    return out


def labels(pcm: bytes, frame_ms: int) -> np.ndarray:
    return audio.frame_energy(pcm, "pcm_s16le", RATE, 1, frame_ms) > LABEL_DB


def make_noise(kind: str, n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    if kind == "white":
        return rng.standard_normal(n)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    gain = np.zeros_like(f)
    gain[f >= 20] = 1 / np.sqrt(f[f >= 20])  # pink, band-limited to >= 20 Hz
    return np.fft.irfft(spec * gain, n)


def padded(noise_kind: str | None, snr_db: float, frame_ms: int) -> tuple[bytes, np.ndarray]:
    """The speech with LEAD_S / TAIL_S of padding (digital silence, or the noise
    throughout at snr_db below the speech's active level); and the labels."""
    x = np.frombuffer(CLEAN, "<i2").astype(np.float64) / 32768
    flen = RATE * frame_ms // 1000
    x = np.concatenate([np.zeros(LEAD_S * RATE), x, np.zeros(TAIL_S * RATE)])
    x = x[: len(x) // flen * flen]
    pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2").tobytes()
    lab = labels(pcm, frame_ms)
    if noise_kind is None:
        return pcm, lab
    active_power = np.mean(x[np.repeat(lab, flen)] ** 2)  # the active speech level
    nz = make_noise(noise_kind, len(x), np.random.default_rng(int(snr_db) * 31 + frame_ms + len(noise_kind)))
    nz *= np.sqrt(active_power / 10 ** (snr_db / 10) / np.mean(nz**2))
    mixed = np.clip(np.rint((x + nz) * 32768), -32768, 32767).astype("<i2").tobytes()
    return mixed, lab


def vad(pcm: bytes, frame_ms: int, chunk_ms: int = 20) -> tuple[np.ndarray, StreamDecoder]:
    d = StreamDecoder("pcm_s16le", RATE, 1, VadConfig(frame_ms=frame_ms))
    step = RATE * chunk_ms // 1000 * 2
    flags = np.concatenate([d.feed_frames(pcm[i : i + step])[0] for i in range(0, len(pcm), step)])
    return flags.astype(bool), d


# ---- the data file and its labels ---------------------------------------------


def test_wav_is_small_16k_mono_speech() -> None:
    assert WAV.stat().st_size < 200_000
    assert len(CLEAN) // 2 == pytest.approx(5.0 * RATE, rel=0.01)
    lab = labels(CLEAN, 10)
    # about 3.4 s of speech in 5 s, and the ~1 s pause between the two phrases
    assert 3.0 <= lab.sum() / 100 <= 4.0
    gaps = [b - a for a, b in zip(np.nonzero(lab)[0], np.nonzero(lab)[0][1:], strict=False)]
    assert max(gaps) * 10 >= 800


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_labels_are_insensitive_to_the_threshold(frame_ms: int) -> None:
    # the label threshold sits in a gap of the energy distribution
    base = labels(CLEAN, frame_ms)
    for db in (-50, -40):
        other = audio.frame_energy(CLEAN, "pcm_s16le", RATE, 1, frame_ms) > db
        assert (other != base).sum() <= max(3, 0.03 * base.sum())


# ---- clean speech in digital silence ---------------------------------------------


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_clean_speech_with_silence_padding(frame_ms: int) -> None:
    pcm, lab = padded(None, 0, frame_ms)
    flags, d = vad(pcm, frame_ms)
    per_s = 1000 // frame_ms
    hang = HANG // frame_ms
    assert flags[lab].mean() >= 0.95  # recall of labelled frames
    assert not flags[: LEAD_S * per_s].any()  # the silence before
    # In digital silence the threshold is abs_min_db (-65 dBFS), so the
    # decaying tails of words (-65..-45 dBFS, a frame or two each) are speech
    # too: compare with the frames above -65 dBFS, extended by the hangover.
    audible = audio.frame_energy(pcm, "pcm_s16le", RATE, 1, frame_ms) > VadConfig().abs_min_db
    assert (audible & ~lab).sum() <= 12
    expected = extend(audible, hang)
    # the silence after: nothing once the hangover is over
    last = np.nonzero(audible)[0][-1]
    assert flags[last : last + hang + 1].all() and not flags[last + hang + 1 :].any()
    # nothing outside that
    assert not flags[~expected].any()
    # speech milliseconds: that, less the onset of each utterance that starts
    # after a pause longer than the hangover (40 ms each, about 6 of them):
    # within -8% / +0
    exp_ms = expected.sum() * frame_ms
    assert 0.92 * exp_ms <= d.speech_ms <= exp_ms
    assert d.speech_ms == flags.sum() * frame_ms


# ---- speech in noise --------------------------------------------------------------


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("snr_db", [20, 10])
@pytest.mark.parametrize("noise_kind", ["white", "pink"])
def test_speech_in_noise_against_labels(noise_kind: str, snr_db: int, frame_ms: int) -> None:
    pcm, lab = padded(noise_kind, snr_db, frame_ms)
    flags, _ = vad(pcm, frame_ms)
    per_s = 1000 // frame_ms
    w0 = int(WARMUP_S * per_s)  # ignore the start-up of the noisy stream
    expected = extend(lab, HANG // frame_ms)

    # recall of the labelled speech frames; at 10 dB SNR the quietest labelled
    # frames (-45..-35 dBFS, 25-30 dB below the vowels) are under the noise and
    # only the hangover of a louder neighbour covers them
    recall = flags[lab].mean()
    assert recall >= (0.95 if snr_db == 20 else 0.88), f"recall {recall:.3f}"

    # false alarms: no-speech frames outside the labels + hangover, after the start-up
    fa = flags[w0:][~expected[w0:]].mean()
    assert fa <= 0.02, f"false alarm rate {fa:.3f}"

    # the frame decisions agree with labels + hangover
    agree = (flags[w0:] == expected[w0:]).mean()
    assert agree >= (0.95 if snr_db == 20 else 0.92), f"agreement {agree:.3f}"

    # speech milliseconds (after the start-up) against labels + hangover:
    # never more (+2 frames), and at most 8% (20 dB) / 15% (10 dB) less: the
    # onsets (about 6 utterances x 40 ms = 5%), and at 10 dB the quiet
    # sounds under the noise
    got_ms = flags[w0:].sum() * frame_ms
    exp_ms = expected[w0:].sum() * frame_ms
    assert (0.92 if snr_db == 20 else 0.85) * exp_ms <= got_ms <= exp_ms + 2 * frame_ms

    # the noise-only padding after the speech: nothing once the hangover is over
    last_label = np.nonzero(lab)[0][-1]
    assert not flags[last_label + HANG // frame_ms + 1 :].any()
    # and the pause between the two phrases is heard as a pause
    pause = np.nonzero(~extend(lab, HANG // frame_ms)[w0:])[0] + w0
    pause = pause[pause < last_label]
    assert len(pause) > 0 and not flags[pause].any()


def test_speech_in_noise_decisions_do_not_depend_on_chunking() -> None:
    pcm, _ = padded("pink", 10, 20)
    ref, _ = vad(pcm, 20, chunk_ms=20)
    for chunk_ms in (10, 30, 100, 1000):
        assert np.array_equal(vad(pcm, 20, chunk_ms=chunk_ms)[0], ref)


def test_speech_survives_mulaw() -> None:
    # a telephone path: the same file through G.711 at 16 kHz gives nearly the same decisions
    pcm, lab = padded("white", 20, 20)
    ref, _ = vad(pcm, 20)
    d = StreamDecoder("mulaw", RATE, 1, VadConfig(frame_ms=20))
    mu = d.feed_frames(audio.s16_to_ulaw(pcm))[0].astype(bool)
    assert (mu == ref).mean() >= 0.97
    assert mu[lab].mean() >= 0.93
